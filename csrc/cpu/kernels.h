// CPU kernels, compiled once per instruction set (kernels_default.cpp,
// kernels_avx2.cpp) and picked at run time by ops_cpu.cpp. They take raw
// pointers and layouts, no tensors: checks and allocation stay in ops_host.h.
#pragma once

#include "../args.h"

namespace bckd {
namespace cpu {

#define BCKD_CPU_KERNELS                      \
  void bcdl_forward(const BcdlArgs& a);       \
  void bcdl_backward(const BcdlArgs& a);      \
  void giou_forward(const GiouArgs& a);       \
  void giou_backward(const GiouArgs& a);      \
  void dfl_forward(const DflArgs& a);         \
  void dfl_backward(const DflArgs& a);

namespace DEFAULT {
BCKD_CPU_KERNELS
}
namespace AVX2 {
BCKD_CPU_KERNELS
}

#undef BCKD_CPU_KERNELS

}  // namespace cpu
}  // namespace bckd
