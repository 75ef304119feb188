// CPU kernels, compiled once per instruction set (kernels_default.cpp,
// kernels_avx2.cpp, kernels_avx512.cpp) and picked at run time by ops_cpu.cpp. They take raw
// pointers and layouts, no tensors: checks and allocation stay in ops_host.h.
#pragma once

#include "../args.h"

namespace bckd {
namespace cpu {

#define BCKD_CPU_KERNELS                      \
  void bcdl_forward(const BcdlFwdArgs& a);    \
  void bcdl_backward(const BcdlBwdArgs& a);   \
  void giou_forward(const GiouFwdArgs& a);    \
  void giou_backward(const GiouBwdArgs& a);   \
  void dfl_forward(const DflFwdArgs& a);      \
  void dfl_backward(const DflBwdArgs& a);

namespace DEFAULT {
BCKD_CPU_KERNELS
}
namespace AVX2 {
BCKD_CPU_KERNELS
}
namespace AVX512 {
BCKD_CPU_KERNELS
}

#undef BCKD_CPU_KERNELS

}  // namespace cpu
}  // namespace bckd
