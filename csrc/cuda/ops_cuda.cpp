// CUDA kernels of every bckd operator, launched on the current stream of the
// inputs' device.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../ops_host.h"
#include "kernels.h"

namespace bckd {
namespace cuda {
namespace {

struct CudaBackend {
  template <class Args, class Launch>
  static void run(const at::Tensor& x, const Args& a, Launch launch) {
    const c10::cuda::CUDAGuard guard(x.device());
    launch(a, c10::cuda::getCurrentCUDAStream(x.device().index()).stream());
  }
#define BCKD_CUDA_FORWARD(name, Args) \
  static void name(const at::Tensor& x, const Args& a) { run(x, a, cuda::name); }
  BCKD_KERNEL_ENTRIES(BCKD_CUDA_FORWARD)
#undef BCKD_CUDA_FORWARD
};

}  // namespace
}  // namespace cuda
}  // namespace bckd

TORCH_LIBRARY_IMPL(bckd, CUDA, m) { BCKD_REGISTER_KERNELS(m, bckd::cuda::CudaBackend); }
