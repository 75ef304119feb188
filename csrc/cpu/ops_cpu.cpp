// CPU kernels of every bckd operator: the AVX-512 or AVX2 build of the kernels
// where the processor has it (and ATEN_CPU_CAPABILITY does not say otherwise),
// the baseline build elsewhere.
#include <ATen/Version.h>
#include <torch/library.h>

#include "../ops_host.h"
#include "kernels.h"

namespace bckd {
namespace cpu {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
// 2: AVX-512, 1: AVX2, 0: the baseline, as ATen reports the processor (and
// ATEN_CPU_CAPABILITY caps it).
int isa_level() {
  static const int level = [] {
    const std::string cap = at::get_cpu_capability();
    return cap == "AVX512" ? 2 : cap == "AVX2" ? 1 : 0;
  }();
  return level;
}
#define BCKD_PICK(fn, a) \
  (isa_level() == 2 ? AVX512::fn(a) : isa_level() == 1 ? AVX2::fn(a) : DEFAULT::fn(a))
// The DFL kernels read contiguous bins in 4-channel tiles, which at 16 lanes
// take 4 block inserts per register: measured slower than the AVX2 build on
// channels_last maps and no faster on nchw ones (docs/results.md, section 1),
// so they stay at AVX2 on AVX-512 processors.
#define BCKD_PICK_AVX2(fn, a) (isa_level() >= 1 ? AVX2::fn(a) : DEFAULT::fn(a))
#else
#define BCKD_PICK(fn, a) DEFAULT::fn(a)
#define BCKD_PICK_AVX2(fn, a) DEFAULT::fn(a)
#endif

struct CpuBackend {
  static void bcdl_forward(const at::Tensor&, const BcdlFwdArgs& a) { BCKD_PICK(bcdl_forward, a); }
  static void bcdl_backward(const at::Tensor&, const BcdlBwdArgs& a) { BCKD_PICK(bcdl_backward, a); }
  static void giou_forward(const at::Tensor&, const GiouFwdArgs& a) { BCKD_PICK(giou_forward, a); }
  static void giou_backward(const at::Tensor&, const GiouBwdArgs& a) { BCKD_PICK(giou_backward, a); }
  static void dfl_forward(const at::Tensor&, const DflFwdArgs& a) { BCKD_PICK_AVX2(dfl_forward, a); }
  static void dfl_backward(const at::Tensor&, const DflBwdArgs& a) { BCKD_PICK_AVX2(dfl_backward, a); }
};

#undef BCKD_PICK
#undef BCKD_PICK_AVX2

}  // namespace
}  // namespace cpu
}  // namespace bckd

TORCH_LIBRARY_IMPL(bckd, CPU, m) { BCKD_REGISTER_KERNELS(m, bckd::cpu::CpuBackend); }
