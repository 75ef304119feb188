// CUDA kernel launchers (bcdl_kernels.cu, giou_kernels.cu, dfl_kernels.cu),
// called by ops_cuda.cpp on the current stream of the inputs' device.
#pragma once

#include <cuda_runtime_api.h>

#include "../args.h"

namespace bckd {
namespace cuda {

void bcdl_forward(const BcdlFwdArgs& a, cudaStream_t stream);
void bcdl_backward(const BcdlBwdArgs& a, cudaStream_t stream);
void giou_forward(const GiouFwdArgs& a, cudaStream_t stream);
void giou_backward(const GiouBwdArgs& a, cudaStream_t stream);
void dfl_forward(const DflFwdArgs& a, cudaStream_t stream);
void dfl_backward(const DflBwdArgs& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace bckd
