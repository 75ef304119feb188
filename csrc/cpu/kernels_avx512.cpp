// Kernels for x86-64 CPUs with AVX-512 (F, BW, VL, DQ) and FMA, chosen at run
// time by ops_cpu.cpp where ATen reports that capability. setup.py compiles
// this one file with the flags PyTorch gives its own AVX-512 files (plus
// F16C); the rest of the build keeps the compiler's baseline.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || !defined(__AVX512DQ__) || \
    !defined(__FMA__)
#error "kernels_avx512.cpp must be compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma (see setup.py)"
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "kernels_impl.h"
#endif
