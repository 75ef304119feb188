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
// (channels.h) are written in, one intrinsic each.
#if defined(CPU_CAPABILITY_AVX2)
#define BCKD_CPU_SIMD 1
using Native = __m256;
constexpr int kLanes = 8;

struct NativeOps {
  static Native set1(float x) { return _mm256_set1_ps(x); }
  static Native add(const Native& a, const Native& b) { return _mm256_add_ps(a, b); }
  static Native mul(const Native& a, const Native& b) { return _mm256_mul_ps(a, b); }
  static Native div(const Native& a, const Native& b) { return _mm256_div_ps(a, b); }
  static Native max(const Native& a, const Native& b) { return _mm256_max_ps(a, b); }
  static Native fmadd(const Native& a, const Native& b, const Native& c) { return _mm256_fmadd_ps(a, b, c); }
  static Native fnmadd(const Native& a, const Native& b, const Native& c) { return _mm256_fnmadd_ps(a, b, c); }
  static Native round(const Native& x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  // 2^n for an integral n that keeps it a normal number: n + 127 in the exponent bits.
  static Native exp2i(const Native& n) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
  }
  static Native unpacklo(const Native& a, const Native& b) { return _mm256_unpacklo_ps(a, b); }
  static Native unpackhi(const Native& a, const Native& b) { return _mm256_unpackhi_ps(a, b); }
  template <int IMM>
  static Native shuffle(const Native& a, const Native& b) {
    return _mm256_shuffle_ps(a, b, IMM);
  }
};
#elif defined(CPU_CAPABILITY_AVX512)
#define BCKD_CPU_SIMD 1
using Native = __m512;
constexpr int kLanes = 16;

struct NativeOps {
  static Native set1(float x) { return _mm512_set1_ps(x); }
  static Native add(const Native& a, const Native& b) { return _mm512_add_ps(a, b); }
  static Native mul(const Native& a, const Native& b) { return _mm512_mul_ps(a, b); }
  static Native div(const Native& a, const Native& b) { return _mm512_div_ps(a, b); }
  static Native max(const Native& a, const Native& b) { return _mm512_max_ps(a, b); }
  static Native fmadd(const Native& a, const Native& b, const Native& c) { return _mm512_fmadd_ps(a, b, c); }
  static Native fnmadd(const Native& a, const Native& b, const Native& c) { return _mm512_fnmadd_ps(a, b, c); }
  static Native round(const Native& x) {
    return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  static Native exp2i(const Native& n) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
  }
  static Native unpacklo(const Native& a, const Native& b) { return _mm512_unpacklo_ps(a, b); }
  static Native unpackhi(const Native& a, const Native& b) { return _mm512_unpackhi_ps(a, b); }
  template <int IMM>
  static Native shuffle(const Native& a, const Native& b) {
    return _mm512_shuffle_ps(a, b, IMM);
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
