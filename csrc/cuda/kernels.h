// CUDA kernel launchers (bcdl_kernels.cu, giou_kernels.cu), called by
// ops_cuda.cpp on the current stream of the inputs' device.
#pragma once

#include <cuda_runtime_api.h>

#include "../args.h"

namespace bckd {
namespace cuda {

void bcdl_forward(const BcdlArgs& a, cudaStream_t stream);
void bcdl_backward(const BcdlArgs& a, cudaStream_t stream);
void giou_forward(const GiouArgs& a, cudaStream_t stream);
void giou_backward(const GiouArgs& a, cudaStream_t stream);
void dfl_forward(const DflArgs& a, cudaStream_t stream);
void dfl_backward(const DflArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace bckd
