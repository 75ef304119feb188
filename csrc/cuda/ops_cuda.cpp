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
  static void bcdl_forward(const at::Tensor& x, const BcdlFwdArgs& a) { run(x, a, cuda::bcdl_forward); }
  static void bcdl_backward(const at::Tensor& x, const BcdlBwdArgs& a) { run(x, a, cuda::bcdl_backward); }
  static void giou_forward(const at::Tensor& x, const GiouFwdArgs& a) { run(x, a, cuda::giou_forward); }
  static void giou_backward(const at::Tensor& x, const GiouBwdArgs& a) { run(x, a, cuda::giou_backward); }
  static void dfl_forward(const at::Tensor& x, const DflFwdArgs& a) { run(x, a, cuda::dfl_forward); }
  static void dfl_backward(const at::Tensor& x, const DflBwdArgs& a) { run(x, a, cuda::dfl_backward); }
};

}  // namespace
}  // namespace cuda
}  // namespace bckd

TORCH_LIBRARY_IMPL(bckd, CUDA, m) { BCKD_REGISTER_KERNELS(m, bckd::cuda::CudaBackend); }
