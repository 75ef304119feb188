// The instruction set's vector maths for the CPU kernels, included once per
// instruction set (kernels_impl.h): Native, the register of one
// Vectorized<float>, with the operations on it (NativeOps); the float32 fast
// maths of the AVX2 and AVX-512 builds written once over them; and the math
// policy VecMath over at::vec::Vectorized (one lane per location).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace bckd {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// Native: the register of one Vectorized<float> (kLanes floats); NativeOps:
// the float operations on it that the fast maths below and transpose_tile
// (channels.h) are written in, one intrinsic each. Both instruction sets name
// their intrinsics alike but for the prefix (BCKD_MM(op)), the integer
// register's suffix (BCKD_MM_INT(op_)), the cast from it and the rounding;
// channels.h writes its conversions with the same macros.
#if defined(CPU_CAPABILITY_AVX2)
#define BCKD_MM(op) _mm256_##op
#define BCKD_MM_INT(op_) _mm256_##op_##si256
#define BCKD_MM_CAST_INT_PS _mm256_castsi256_ps
#define BCKD_MM_ROUND_PS _mm256_round_ps
using Native = __m256;
#elif defined(CPU_CAPABILITY_AVX512)
#define BCKD_MM(op) _mm512_##op
#define BCKD_MM_INT(op_) _mm512_##op_##si512
#define BCKD_MM_CAST_INT_PS _mm512_castsi512_ps
#define BCKD_MM_ROUND_PS _mm512_roundscale_ps
using Native = __m512;
#endif

#if defined(BCKD_MM)
#define BCKD_CPU_SIMD 1
constexpr int kLanes = static_cast<int>(sizeof(Native) / sizeof(float));
// The integer register of Native's width, and the half-width one that holds
// kLanes 16-bit floats.
using NativeInt = std::conditional_t<kLanes == 8, __m256i, __m512i>;
using Native16 = std::conditional_t<kLanes == 8, __m128i, __m256i>;

struct NativeOps {
  static Native set1(float x) { return BCKD_MM(set1_ps)(x); }
  static Native add(const Native& a, const Native& b) { return BCKD_MM(add_ps)(a, b); }
  static Native mul(const Native& a, const Native& b) { return BCKD_MM(mul_ps)(a, b); }
  static Native div(const Native& a, const Native& b) { return BCKD_MM(div_ps)(a, b); }
  static Native max(const Native& a, const Native& b) { return BCKD_MM(max_ps)(a, b); }
  static Native fmadd(const Native& a, const Native& b, const Native& c) { return BCKD_MM(fmadd_ps)(a, b, c); }
  static Native fnmadd(const Native& a, const Native& b, const Native& c) { return BCKD_MM(fnmadd_ps)(a, b, c); }
  static Native round(const Native& x) { return BCKD_MM_ROUND_PS(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for an integral n that keeps it a normal number: n + 127 in the exponent bits.
  static Native exp2i(const Native& n) {
    const auto biased = BCKD_MM(add_epi32)(BCKD_MM(cvtps_epi32)(n), BCKD_MM(set1_epi32)(127));
    return BCKD_MM_CAST_INT_PS(BCKD_MM(slli_epi32)(biased, 23));
  }
  static Native unpacklo(const Native& a, const Native& b) { return BCKD_MM(unpacklo_ps)(a, b); }
  static Native unpackhi(const Native& a, const Native& b) { return BCKD_MM(unpackhi_ps)(a, b); }
  template <int IMM>
  static Native shuffle(const Native& a, const Native& b) {
    return BCKD_MM(shuffle_ps)(a, b, IMM);
  }
};
#endif

#if defined(BCKD_CPU_SIMD)
// exp(x) for x ≤ 0 (NaN propagates): Cody-Waite reduction x = n·ln2 + r and
// a degree-6 polynomial for exp(r) (Cephes' expf coefficients, ~1 ulp), then
// 2^n through the exponent bits. x is clamped at −87 so that 2^n stays a normal
// number; exp(−87) ≈ 1.6e−38 stands in for anything smaller.
inline Vectorized<float> fast_exp_neg(const Vectorized<float>& xv) {
  using O = NativeOps;
  const Native x = O::max(O::set1(-87.0f), xv);
  const Native n = O::round(O::mul(x, O::set1(1.44269504088896341f)));
  Native r = O::fnmadd(n, O::set1(0.693359375f), x);
  r = O::fnmadd(n, O::set1(-2.12194440e-4f), r);
  Native p = O::set1(1.9875691500e-4f);
  p = O::fmadd(p, r, O::set1(1.3981999507e-3f));
  p = O::fmadd(p, r, O::set1(8.3334519073e-3f));
  p = O::fmadd(p, r, O::set1(4.1665795894e-2f));
  p = O::fmadd(p, r, O::set1(1.6666665459e-1f));
  p = O::fmadd(p, r, O::set1(5.0000001201e-1f));
  p = O::fmadd(p, O::mul(r, r), O::add(r, O::set1(1.0f)));
  return O::mul(p, O::exp2i(n));
}

// log1p(e) for e in [0, 1]: log1p(e) = 2·atanh(t) with t = e / (2 + e) ≤ 1/3,
// whose odd series in t² has its first dropped term below 1.5e−8 relative.
inline Vectorized<float> fast_log1p_unit(const Vectorized<float>& ev) {
  using O = NativeOps;
  const Native e = ev;
  const Native t = O::div(e, O::add(e, O::set1(2.0f)));
  const Native u = O::mul(t, t);
  Native s = O::set1(1.0f / 13.0f);
  s = O::fmadd(s, u, O::set1(1.0f / 11.0f));
  s = O::fmadd(s, u, O::set1(1.0f / 9.0f));
  s = O::fmadd(s, u, O::set1(1.0f / 7.0f));
  s = O::fmadd(s, u, O::set1(1.0f / 5.0f));
  s = O::fmadd(s, u, O::set1(1.0f / 3.0f));
  s = O::fmadd(s, u, O::set1(1.0f));
  return O::mul(O::add(t, t), s);
}
#endif

template <typename acc_t>
struct VecMath {
  using T = Vectorized<acc_t>;
  using Scalar = acc_t;
  using Mask = Vectorized<acc_t>;
  static T exp_neg(const T& x) {
#if defined(BCKD_CPU_SIMD)
    if constexpr (std::is_same_v<acc_t, float>) return fast_exp_neg(x);
#endif
    return x.exp();
  }
  static T log1p_unit(const T& x) {
#if defined(BCKD_CPU_SIMD)
    if constexpr (std::is_same_v<acc_t, float>) return fast_log1p_unit(x);
#endif
    return x.log1p();
  }
  static T pow(const T& x, const T& y) { return x.pow(y); }
  static T abs(const T& x) { return x.abs(); }
  static T max(const T& a, const T& b) { return at::vec::maximum(a, b); }
  static T min(const T& a, const T& b) { return at::vec::minimum(a, b); }
  static Mask gt(const T& a, const T& b) { return a > b; }
  static Mask ge(const T& a, const T& b) { return a >= b; }
  static Mask lt(const T& a, const T& b) { return a < b; }
  static Mask eq(const T& a, const T& b) { return a == b; }
  static T select(const Mask& m, const T& a, const T& b) { return T::blendv(b, a, m); }
};

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bckd
