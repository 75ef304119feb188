// CPU kernels, compiled once per instruction set (kernels_default.cpp,
// kernels_avx2.cpp, kernels_avx512.cpp) and picked at run time by ops_cpu.cpp. They take raw
// pointers and layouts, no tensors: checks and allocation stay in ops_host.h.
#pragma once

#include "../args.h"

namespace bckd {
namespace cpu {

#define BCKD_CPU_DECLARE(name, Args) void name(const Args& a);

namespace DEFAULT {
BCKD_KERNEL_ENTRIES(BCKD_CPU_DECLARE)
}
namespace AVX2 {
BCKD_KERNEL_ENTRIES(BCKD_CPU_DECLARE)
}
namespace AVX512 {
BCKD_KERNEL_ENTRIES(BCKD_CPU_DECLARE)
}

#undef BCKD_CPU_DECLARE

}  // namespace cpu
}  // namespace bckd
