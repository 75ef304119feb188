// Kernels for x86-64 CPUs with AVX2 and FMA, chosen at run time by
// ops_cpu.cpp. The target pragma makes this one file AVX2 code without
// changing the flags of the rest of the build; the feature macros that
// -mavx2 -mfma -mf16c would define are set by hand so that ATen's and SLEEF's
// headers declare their 256-bit paths.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#pragma GCC target("avx,avx2,fma,f16c")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
// GCC leaves the static thunks of lambdas in ATen's bfloat16 operators out
// of the pragma; they are never called from here.
#pragma GCC diagnostic ignored "-Wpsabi"
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "kernels_impl.h"
#endif
