// Kernels for x86-64 CPUs with AVX2 and FMA, chosen at run time by
// ops_cpu.cpp. setup.py compiles this one file with -mavx2 -mfma -mf16c (the
// flags PyTorch gives its own AVX2 files), so ATen's and SLEEF's headers see
// the instruction set they are compiled for; the rest of the build keeps the
// compiler's baseline.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if !defined(__AVX2__) || !defined(__FMA__) || !defined(__F16C__)
#error "kernels_avx2.cpp must be compiled with -mavx2 -mfma -mf16c (see setup.py)"
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels_impl.h"
#endif
