// CPU kernels of every bckd operator: the AVX2 build of the kernels where the
// processor has it (and ATEN_CPU_CAPABILITY does not say otherwise), the
// baseline build elsewhere.
#include <ATen/Version.h>
#include <torch/library.h>

#include "../ops_host.h"
#include "kernels.h"

namespace bckd {
namespace cpu {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
bool use_avx2() {
  static const bool avx2 = [] {
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX2" || cap == "AVX512";
  }();
  return avx2;
}
#define BCKD_PICK(fn, a) (use_avx2() ? AVX2::fn(a) : DEFAULT::fn(a))
#else
#define BCKD_PICK(fn, a) DEFAULT::fn(a)
#endif

struct CpuBackend {
  static void bcdl_forward(const at::Tensor&, const BcdlFwdArgs& a) { BCKD_PICK(bcdl_forward, a); }
  static void bcdl_backward(const at::Tensor&, const BcdlBwdArgs& a) { BCKD_PICK(bcdl_backward, a); }
  static void giou_forward(const at::Tensor&, const GiouFwdArgs& a) { BCKD_PICK(giou_forward, a); }
  static void giou_backward(const at::Tensor&, const GiouBwdArgs& a) { BCKD_PICK(giou_backward, a); }
  static void dfl_forward(const at::Tensor&, const DflFwdArgs& a) { BCKD_PICK(dfl_forward, a); }
  static void dfl_backward(const at::Tensor&, const DflBwdArgs& a) { BCKD_PICK(dfl_backward, a); }
};

#undef BCKD_PICK

}  // namespace
}  // namespace cpu
}  // namespace bckd

TORCH_LIBRARY_IMPL(bckd, CPU, m) { BCKD_REGISTER_KERNELS(m, bckd::cpu::CpuBackend); }
