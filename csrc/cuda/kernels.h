// CUDA kernel launchers (bcdl_kernels.cu, giou_kernels.cu, dfl_kernels.cu),
// called by ops_cuda.cpp on the current stream of the inputs' device.
#pragma once

#include <cuda_runtime_api.h>

#include "../args.h"

namespace bckd {
namespace cuda {

#define BCKD_CUDA_DECLARE(name, Args) void name(const Args& a, cudaStream_t stream);
BCKD_KERNEL_ENTRIES(BCKD_CUDA_DECLARE)
#undef BCKD_CUDA_DECLARE

}  // namespace cuda
}  // namespace bckd
