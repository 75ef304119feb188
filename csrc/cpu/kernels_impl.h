// CPU kernel bodies. Included once per instruction set, with CPU_CAPABILITY
// naming the namespace (DEFAULT, AVX2) so that the copies never collide.
//
// One SIMD lane per location: a task takes Vec::size() neighbouring locations
// of one row of the layout and walks their channels, so sums and maxima over
// classes or bins are plain lane-wise operations (no horizontal reductions) and
// each location's result depends on its own inputs only, in a fixed order:
// bitwise deterministic whatever the number of threads. Unit-stride rows (head
// maps [B, C, H, W]) load directly. When instead each location's channels are
// contiguous (channels_last maps, [N, C] rows), BCDL's AVX2 and AVX-512 builds
// hold 8 or 16 classes of one location per vector (bcdl_forward_rows), and the
// other paths read kTile channels of the run's locations as short contiguous
// rows and transpose them in registers (load_tile); other strides gather into
// the lanes.
// One pass over the inputs per direction; the backward recomputes the forward
// pieces instead of saving anything of size [N, C].
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../bckd_math.h"
#include "../dispatch.h"
#include "kernels.h"

namespace bckd {
namespace cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

constexpr int kMaxBins = kMaxRegMax + 1;
// Elements per parallel task, as ATen uses.
constexpr int64_t kGrainSize = 32768;

#if defined(CPU_CAPABILITY_AVX2)
// exp(x) for x ≤ 0 (NaN propagates): Cody-Waite reduction x = n·ln2 + r and
// a degree-6 polynomial for exp(r) (Cephes' expf coefficients, ~1 ulp), then
// 2^n through the exponent bits. x is clamped at −87 so that 2^n stays a normal
// number; exp(−87) ≈ 1.6e−38 stands in for anything smaller.
inline Vectorized<float> fast_exp_neg(const Vectorized<float>& xv) {
  const __m256 x = _mm256_max_ps(_mm256_set1_ps(-87.0f), xv);
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// log1p(e) for e in [0, 1]: log1p(e) = 2·atanh(t) with t = e / (2 + e) ≤ 1/3,
// whose odd series in t² has its first dropped term below 1.5e−8 relative.
inline Vectorized<float> fast_log1p_unit(const Vectorized<float>& ev) {
  const __m256 e = ev;
  const __m256 t = _mm256_div_ps(e, _mm256_add_ps(e, _mm256_set1_ps(2.0f)));
  const __m256 u = _mm256_mul_ps(t, t);
  __m256 s = _mm256_set1_ps(1.0f / 13.0f);
  s = _mm256_fmadd_ps(s, u, _mm256_set1_ps(1.0f / 11.0f));
  s = _mm256_fmadd_ps(s, u, _mm256_set1_ps(1.0f / 9.0f));
  s = _mm256_fmadd_ps(s, u, _mm256_set1_ps(1.0f / 7.0f));
  s = _mm256_fmadd_ps(s, u, _mm256_set1_ps(1.0f / 5.0f));
  s = _mm256_fmadd_ps(s, u, _mm256_set1_ps(1.0f / 3.0f));
  s = _mm256_fmadd_ps(s, u, _mm256_set1_ps(1.0f));
  return _mm256_mul_ps(_mm256_add_ps(t, t), s);
}
#elif defined(CPU_CAPABILITY_AVX512)
// The same two functions, 16 lanes wide: lane for lane the same operations.
inline Vectorized<float> fast_exp_neg(const Vectorized<float>& xv) {
  const __m512 x = _mm512_max_ps(_mm512_set1_ps(-87.0f), xv);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

// log1p(e) for e in [0, 1]: log1p(e) = 2·atanh(t) with t = e / (2 + e) ≤ 1/3,
// whose odd series in t² has its first dropped term below 1.5e−8 relative.
inline Vectorized<float> fast_log1p_unit(const Vectorized<float>& ev) {
  const __m512 e = ev;
  const __m512 t = _mm512_div_ps(e, _mm512_add_ps(e, _mm512_set1_ps(2.0f)));
  const __m512 u = _mm512_mul_ps(t, t);
  __m512 s = _mm512_set1_ps(1.0f / 13.0f);
  s = _mm512_fmadd_ps(s, u, _mm512_set1_ps(1.0f / 11.0f));
  s = _mm512_fmadd_ps(s, u, _mm512_set1_ps(1.0f / 9.0f));
  s = _mm512_fmadd_ps(s, u, _mm512_set1_ps(1.0f / 7.0f));
  s = _mm512_fmadd_ps(s, u, _mm512_set1_ps(1.0f / 5.0f));
  s = _mm512_fmadd_ps(s, u, _mm512_set1_ps(1.0f / 3.0f));
  s = _mm512_fmadd_ps(s, u, _mm512_set1_ps(1.0f));
  return _mm512_mul_ps(_mm512_add_ps(t, t), s);
}
#endif

template <typename acc_t>
struct VecMath {
  using T = Vectorized<acc_t>;
  using Scalar = acc_t;
  using Mask = Vectorized<acc_t>;
  static T exp_neg(const T& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
    if constexpr (std::is_same_v<acc_t, float>) return fast_exp_neg(x);
#endif
    return x.exp();
  }
  static T log1p_unit(const T& x) {
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
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

template <typename acc_t, typename scalar_t>
inline Vectorized<acc_t> load_lanes(const scalar_t* p, int64_t stride, int64_t n) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (stride == 1) return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  }
  alignas(64) acc_t buf[Vec::size()];
  int64_t i = 0;
  for (; i < n; ++i) buf[i] = static_cast<acc_t>(p[i * stride]);
  for (; i < Vec::size(); ++i) buf[i] = acc_t(0);
  return Vec::loadu(buf);
}

template <typename acc_t, typename scalar_t>
inline void store_lanes(const Vectorized<acc_t>& v, scalar_t* p, int64_t stride, int64_t n) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    if (stride == 1) {
      v.store(p, n);
      return;
    }
  }
  alignas(64) acc_t buf[Vectorized<acc_t>::size()];
  v.store(buf);
  for (int64_t i = 0; i < n; ++i) p[i * stride] = static_cast<scalar_t>(buf[i]);
}

// ------------------------------------------------ channel-contiguous tiles ----
//
// Gathering one location per lane stores Vec::size() scalars and reads them
// back as one vector. That load cannot be forwarded from several stores: it
// waits until they reach the cache, once per channel and map, and doubled the
// time of channels_last maps against NCHW ones. A tile instead reads kTile
// contiguous channels of each location and transposes them in registers.
constexpr int kTile = 4;

#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
#define BCKD_CPU_SIMD 1
// Shared by both instruction sets: the first kn ≤ 4 elements of a row (0 when
// r is null), as floats or as their 16-bit patterns.
inline __m128i first_lanes(int kn) { return _mm_cmpgt_epi32(_mm_set1_epi32(kn), _mm_setr_epi32(0, 1, 2, 3)); }

inline __m128 row4(const float* r, int kn) {
  if (r == nullptr) return _mm_setzero_ps();
  if (kn == 4) return _mm_loadu_ps(r);
  return _mm_maskload_ps(r, first_lanes(kn));
}

template <typename scalar_t>
inline int64_t row4_bits(const scalar_t* r, int kn) {
  int64_t u = 0;
  if (r != nullptr) std::memcpy(&u, r, kn * sizeof(scalar_t));
  return u;
}

inline void store_row4(const __m128& v, float* r, int kn) {
  if (r == nullptr) return;
  if (kn == 4) {
    _mm_storeu_ps(r, v);
  } else {
    _mm_maskstore_ps(r, first_lanes(kn), v);
  }
}

template <typename scalar_t>
inline void store_row4_bits(int64_t u, scalar_t* r, int kn) {
  if (r != nullptr) std::memcpy(r, &u, kn * sizeof(scalar_t));
}
#endif

// Per instruction set, with Native the register of one Vectorized<float>
// (kLanes floats):
//   widen / narrow: kLanes 16-bit floats to float and back, rounding to
//     nearest even as c10's conversions do (NaN: bfloat16's quiet NaN);
//   row_lanes / store_row_lanes: the first kn ≤ kLanes elements of a row;
//   transpose_lanes: kLanes × kLanes, a[i] lane j to a[j] lane i;
//   broadcast_lane: lane i of v in every lane;
//   tile_rows / store_tile_rows: rows i, i + 4, … of a tile (4 channels of
//     kLanes locations) in the 128-bit blocks of one register, and back;
//   transpose_tile: 4 × 4 within each 128-bit block, so that tile_rows' a[i]
//     become channel i of the kLanes locations.
#if defined(CPU_CAPABILITY_AVX2)
using Native = __m256;
constexpr int kLanes = 8;

template <typename scalar_t>
inline __m256 widen(const __m128i& x) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) return _mm256_cvtph_ps(x);
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(x), 16));
}

template <typename scalar_t>
inline __m128i narrow(const __m256& v) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    r = _mm256_packus_epi32(r, r);
    return _mm_unpacklo_epi64(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
  }
}

inline __m256i first_lanes8(int kn) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(kn), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

template <typename scalar_t>
inline __m256 row_lanes(const scalar_t* r, int kn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return kn == 8 ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, first_lanes8(kn));
  } else {
    if (kn == 8) return widen<scalar_t>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(r)));
    __m128i x = _mm_setzero_si128();
    std::memcpy(&x, r, kn * sizeof(scalar_t));
    return widen<scalar_t>(x);
  }
}

template <typename scalar_t>
inline void store_row_lanes(const __m256& v, scalar_t* r, int kn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kn == 8) {
      _mm256_storeu_ps(r, v);
    } else {
      _mm256_maskstore_ps(r, first_lanes8(kn), v);
    }
  } else {
    const __m128i x = narrow<scalar_t>(v);
    if (kn == 8) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(r), x);
    } else {
      std::memcpy(r, &x, kn * sizeof(scalar_t));
    }
  }
}

inline void transpose_lanes(__m256* a) {
  __m256 t[8], s[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]);
  }
  for (int h = 0; h < 2; ++h) {  // rows 0-3, then 4-7
    const __m256* u = t + 4 * h;
    s[4 * h + 0] = _mm256_shuffle_ps(u[0], u[2], 0x44);
    s[4 * h + 1] = _mm256_shuffle_ps(u[0], u[2], 0xee);
    s[4 * h + 2] = _mm256_shuffle_ps(u[1], u[3], 0x44);
    s[4 * h + 3] = _mm256_shuffle_ps(u[1], u[3], 0xee);
  }
  for (int j = 0; j < 4; ++j) {
    a[j] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x20);
    a[j + 4] = _mm256_permute2f128_ps(s[j], s[4 + j], 0x31);
  }
}

inline __m256 broadcast_lane(const __m256& v, int i) { return _mm256_permutevar8x32_ps(v, _mm256_set1_epi32(i)); }

template <typename scalar_t>
inline __m256 tile_rows(const scalar_t* p, int64_t sw, int64_t n, int kn, int i) {
  const scalar_t* lo = i < n ? p + i * sw : nullptr;
  const scalar_t* hi = i + 4 < n ? p + (i + 4) * sw : nullptr;
  if constexpr (std::is_same_v<scalar_t, float>) {
    return _mm256_insertf128_ps(_mm256_castps128_ps256(row4(lo, kn)), row4(hi, kn), 1);
  } else {
    return widen<scalar_t>(_mm_set_epi64x(row4_bits(hi, kn), row4_bits(lo, kn)));
  }
}

template <typename scalar_t>
inline void store_tile_rows(const __m256& v, scalar_t* p, int64_t sw, int64_t n, int kn, int i) {
  scalar_t* lo = i < n ? p + i * sw : nullptr;
  scalar_t* hi = i + 4 < n ? p + (i + 4) * sw : nullptr;
  if constexpr (std::is_same_v<scalar_t, float>) {
    store_row4(_mm256_castps256_ps128(v), lo, kn);
    store_row4(_mm256_extractf128_ps(v, 1), hi, kn);
  } else {
    const __m128i x = narrow<scalar_t>(v);
    store_row4_bits(_mm_cvtsi128_si64(x), lo, kn);
    store_row4_bits(_mm_extract_epi64(x, 1), hi, kn);
  }
}

inline void transpose_tile(__m256* a) {
  const __m256 t0 = _mm256_unpacklo_ps(a[0], a[1]), t1 = _mm256_unpacklo_ps(a[2], a[3]);
  const __m256 t2 = _mm256_unpackhi_ps(a[0], a[1]), t3 = _mm256_unpackhi_ps(a[2], a[3]);
  a[0] = _mm256_shuffle_ps(t0, t1, 0x44);
  a[1] = _mm256_shuffle_ps(t0, t1, 0xee);
  a[2] = _mm256_shuffle_ps(t2, t3, 0x44);
  a[3] = _mm256_shuffle_ps(t2, t3, 0xee);
}
#elif defined(CPU_CAPABILITY_AVX512)
using Native = __m512;
constexpr int kLanes = 16;

template <typename scalar_t>
inline __m512 widen(const __m256i& x) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) return _mm512_cvtph_ps(x);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(x), 16));
}

template <typename scalar_t>
inline __m256i narrow(const __m512& v) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    return _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    const __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7fc0));
    return _mm512_cvtepi32_epi16(r);
  }
}

inline __mmask16 first_lanes16(int kn) { return static_cast<__mmask16>((1u << kn) - 1u); }

template <typename scalar_t>
inline __m512 row_lanes(const scalar_t* r, int kn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return kn == 16 ? _mm512_loadu_ps(r) : _mm512_maskz_loadu_ps(first_lanes16(kn), r);
  } else {
    return widen<scalar_t>(kn == 16 ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(r))
                                    : _mm256_maskz_loadu_epi16(first_lanes16(kn), r));
  }
}

template <typename scalar_t>
inline void store_row_lanes(const __m512& v, scalar_t* r, int kn) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kn == 16) {
      _mm512_storeu_ps(r, v);
    } else {
      _mm512_mask_storeu_ps(r, first_lanes16(kn), v);
    }
  } else {
    const __m256i x = narrow<scalar_t>(v);
    if (kn == 16) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(r), x);
    } else {
      _mm256_mask_storeu_epi16(r, first_lanes16(kn), x);
    }
  }
}

// Within 128-bit blocks as the AVX2 transpose, then the 4 × 4 grid of blocks.
inline void transpose_lanes(__m512* a) {
  __m512 t[16], s[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {  // rows 4g .. 4g + 3
    const __m512* u = t + 4 * g;
    s[4 * g + 0] = _mm512_shuffle_ps(u[0], u[2], 0x44);
    s[4 * g + 1] = _mm512_shuffle_ps(u[0], u[2], 0xee);
    s[4 * g + 2] = _mm512_shuffle_ps(u[1], u[3], 0x44);
    s[4 * g + 3] = _mm512_shuffle_ps(u[1], u[3], 0xee);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 x0 = _mm512_shuffle_f32x4(s[c], s[4 + c], 0x44), x1 = _mm512_shuffle_f32x4(s[c], s[4 + c], 0xee);
    const __m512 y0 = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0x44);
    const __m512 y1 = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0xee);
    a[c] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    a[4 + c] = _mm512_shuffle_f32x4(x0, y0, 0xdd);
    a[8 + c] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    a[12 + c] = _mm512_shuffle_f32x4(x1, y1, 0xdd);
  }
}

inline __m512 broadcast_lane(const __m512& v, int i) { return _mm512_permutexvar_ps(_mm512_set1_epi32(i), v); }

template <typename scalar_t>
inline __m512 tile_rows(const scalar_t* p, int64_t sw, int64_t n, int kn, int i) {
  const scalar_t* r[4];
  for (int q = 0; q < 4; ++q) r[q] = i + 4 * q < n ? p + (i + 4 * q) * sw : nullptr;
  if constexpr (std::is_same_v<scalar_t, float>) {
    __m512 v = _mm512_castps128_ps512(row4(r[0], kn));
    v = _mm512_insertf32x4(v, row4(r[1], kn), 1);
    v = _mm512_insertf32x4(v, row4(r[2], kn), 2);
    return _mm512_insertf32x4(v, row4(r[3], kn), 3);
  } else {
    return widen<scalar_t>(
        _mm256_set_epi64x(row4_bits(r[3], kn), row4_bits(r[2], kn), row4_bits(r[1], kn), row4_bits(r[0], kn)));
  }
}

template <typename scalar_t>
inline void store_tile_rows(const __m512& v, scalar_t* p, int64_t sw, int64_t n, int kn, int i) {
  scalar_t* r[4];
  for (int q = 0; q < 4; ++q) r[q] = i + 4 * q < n ? p + (i + 4 * q) * sw : nullptr;
  if constexpr (std::is_same_v<scalar_t, float>) {
    store_row4(_mm512_castps512_ps128(v), r[0], kn);
    store_row4(_mm512_extractf32x4_ps(v, 1), r[1], kn);
    store_row4(_mm512_extractf32x4_ps(v, 2), r[2], kn);
    store_row4(_mm512_extractf32x4_ps(v, 3), r[3], kn);
  } else {
    const __m256i x = narrow<scalar_t>(v);
    store_row4_bits(_mm256_extract_epi64(x, 0), r[0], kn);
    store_row4_bits(_mm256_extract_epi64(x, 1), r[1], kn);
    store_row4_bits(_mm256_extract_epi64(x, 2), r[2], kn);
    store_row4_bits(_mm256_extract_epi64(x, 3), r[3], kn);
  }
}

inline void transpose_tile(__m512* a) {
  const __m512 t0 = _mm512_unpacklo_ps(a[0], a[1]), t1 = _mm512_unpacklo_ps(a[2], a[3]);
  const __m512 t2 = _mm512_unpackhi_ps(a[0], a[1]), t3 = _mm512_unpackhi_ps(a[2], a[3]);
  a[0] = _mm512_shuffle_ps(t0, t1, 0x44);
  a[1] = _mm512_shuffle_ps(t0, t1, 0xee);
  a[2] = _mm512_shuffle_ps(t2, t3, 0x44);
  a[3] = _mm512_shuffle_ps(t2, t3, 0xee);
}
#endif

// Channels [0, kn) (kn ≤ kTile) of the n ≤ Vec::size() locations p, p + sw, …,
// whose channels are contiguous, into out[0, kn): one vector per channel, a
// location per lane, 0 in the lanes past n.
template <typename acc_t, typename scalar_t>
inline void load_tile(const scalar_t* p, int64_t sw, int64_t n, int kn, Vectorized<acc_t>* out) {
  using Vec = Vectorized<acc_t>;
#if defined(BCKD_CPU_SIMD)
  if constexpr (std::is_same_v<acc_t, float>) {
    Native a[kTile];
    for (int i = 0; i < kTile; ++i) a[i] = tile_rows(p, sw, n, kn, i);
    transpose_tile(a);
    for (int j = 0; j < kn; ++j) out[j] = a[j];
    return;
  }
#endif
  alignas(64) acc_t buf[kTile][Vec::size()] = {};
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < kn; ++j) buf[j][i] = static_cast<acc_t>(p[i * sw + j]);
  }
  for (int j = 0; j < kn; ++j) out[j] = Vec::loadu(buf[j]);
}

// The inverse of load_tile: v[j] is channel j of the n locations.
template <typename acc_t, typename scalar_t>
inline void store_tile(const Vectorized<acc_t>* v, scalar_t* p, int64_t sw, int64_t n, int kn) {
  using Vec = Vectorized<acc_t>;
#if defined(BCKD_CPU_SIMD)
  if constexpr (std::is_same_v<acc_t, float>) {
    Native a[kTile];
    for (int j = 0; j < kTile; ++j) a[j] = j < kn ? Native(v[j]) : Native(Vec(0));
    transpose_tile(a);
    for (int i = 0; i < kTile; ++i) store_tile_rows(a[i], p, sw, n, kn, i);
    return;
  }
#endif
  alignas(64) acc_t buf[kTile][Vec::size()];
  for (int j = 0; j < kn; ++j) v[j].store(buf[j]);
  for (int64_t i = 0; i < n; ++i) {
    for (int j = 0; j < kn; ++j) p[i * sw + j] = static_cast<scalar_t>(buf[j][i]);
  }
}

// Each location's channels are contiguous, and its neighbours are not.
inline bool classes_contiguous(const LocLayout& l) { return l.sc == 1 && l.sw != 1; }

// Channels [0, kn) of n locations of layout l starting at p, into out[0, kn).
template <typename acc_t, typename scalar_t>
inline void load_channels(const scalar_t* p, const LocLayout& l, int64_t n, int kn, Vectorized<acc_t>* out) {
  if (classes_contiguous(l)) {
    load_tile<acc_t>(p, l.sw, n, kn, out);
  } else {
    for (int j = 0; j < kn; ++j) out[j] = load_lanes<acc_t>(p + j * l.sc, l.sw, n);
  }
}

template <typename acc_t, typename scalar_t>
inline void store_channels(const Vectorized<acc_t>* v, scalar_t* p, const LocLayout& l, int64_t n, int kn) {
  if (classes_contiguous(l)) {
    store_tile<acc_t>(v, p, l.sw, n, kn);
  } else {
    for (int j = 0; j < kn; ++j) store_lanes(v[j], p + j * l.sc, l.sw, n);
  }
}

// Asks for the channels [0, C) of the next run's V locations, which follow
// p's when their channels are contiguous: a run computes for long enough to
// hide the memory's latency, which the prefetcher does not see across the
// V interleaved rows of a tile. Writes (for a gradient) ask for ownership.
template <int64_t V, bool kWrite = false, typename scalar_t>
inline void prefetch_next_run(const scalar_t* p, const LocLayout& l, int64_t C) {
  if (!classes_contiguous(l)) return;
  const int64_t bytes = C * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t i = V; i < 2 * V; ++i) {
    const char* row = reinterpret_cast<const char*>(p + i * l.sw);
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(row + off, kWrite ? 1 : 0);
  }
}

// Loads or stores channels [0, C) of n locations, kTile at a time.
template <typename acc_t, typename scalar_t>
inline void load_all_channels(const scalar_t* p, const LocLayout& l, int64_t C, int64_t n, Vectorized<acc_t>* out) {
  for (int64_t k = 0; k < C; k += kTile) {
    load_channels<acc_t>(p + k * l.sc, l, n, static_cast<int>(std::min<int64_t>(kTile, C - k)), out + k);
  }
}

template <typename acc_t, typename scalar_t>
inline void store_all_channels(const Vectorized<acc_t>* v, scalar_t* p, const LocLayout& l, int64_t C, int64_t n) {
  for (int64_t k = 0; k < C; k += kTile) {
    store_channels<acc_t>(v + k, p + k * l.sc, l, n, static_cast<int>(std::min<int64_t>(kTile, C - k)));
  }
}

inline int64_t offset(const LocLayout& l, int64_t b, int64_t h, int64_t w) {
  return b * l.sb + h * l.sh + w * l.sw;
}

// Calls body(b, h, w0, n, o) for every run of n ≤ V locations (b, h, w0..w0+n)
// whose per-location outputs start at index o, in parallel over runs.
template <int64_t V, class F>
void for_each_run(const LocLayout& l, int64_t work_per_location, const F& body) {
  const int64_t nrun = (l.W + V - 1) / V;
  const int64_t total = l.B * l.H * nrun;
  if (total == 0) return;
  const int64_t grain =
      std::max<int64_t>(1, kGrainSize / (V * std::max<int64_t>(1, work_per_location)));
  at::parallel_for(0, total, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = i / nrun;
      const int64_t w0 = (i - row * nrun) * V;
      body(row / l.H, row % l.H, w0, std::min(V, l.W - w0), row * l.W + w0);
    }
  });
}

// ----------------------------------------------------------------- BCDL ----

// Calls f(k, kn, zs, zt) for every block of kn ≤ kTile classes k, k + 1, …
// of the n locations of a run, with the student's and the teacher's logits of
// class k + j in the lanes of zs[j] and zt[j].
template <typename acc_t, typename scalar_t, class F>
void for_each_class(const MapPair& a, int64_t b, int64_t h, int64_t w0, int64_t n, const F& f) {
  const scalar_t* ps = static_cast<const scalar_t*>(a.student) + offset(a.ls, b, h, w0);
  const scalar_t* pt = static_cast<const scalar_t*>(a.teacher) + offset(a.lt, b, h, w0);
  prefetch_next_run<Vectorized<acc_t>::size()>(ps, a.ls, a.ls.C);
  prefetch_next_run<Vectorized<acc_t>::size()>(pt, a.lt, a.lt.C);
  for (int64_t k = 0; k < a.ls.C; k += kTile) {
    const int kn = static_cast<int>(std::min<int64_t>(kTile, a.ls.C - k));
    Vectorized<acc_t> zs[kTile], zt[kTile];
    load_channels<acc_t>(ps + k * a.ls.sc, a.ls, n, kn, zs);
    load_channels<acc_t>(pt + k * a.lt.sc, a.lt, n, kn, zt);
    f(k, kn, zs, zt);
  }
}

#if defined(BCKD_CPU_SIMD)
// BCDL over a run whose maps have contiguous classes: a vector holds kLanes
// classes of one location, so nothing is transposed on the way in. The
// backward is element-wise. The forward transposes the two factors of its
// per-class losses, so that each location adds its classes as the other paths
// do (in order, product and sum in one expression) and gets the same bits.
// The maximum does not depend on the order.
template <typename scalar_t, int MODE>
void bcdl_forward_rows(const BcdlFwdArgs& a, const scalar_t* ps, const scalar_t* pt, int64_t n,
                       Vectorized<float>& sum, Vectorized<float>& mx) {
  using M = VecMath<float>;
  using Vec = Vectorized<float>;
  const Vec beta(static_cast<float>(a.beta));
  Native mrow[kLanes];
  for (int i = 0; i < kLanes; ++i) mrow[i] = Vec(0);
  for (int64_t k = 0; k < a.ls.C; k += kLanes) {
    const int kn = static_cast<int>(std::min<int64_t>(kLanes, a.ls.C - k));
    Native mod[kLanes], bce[kLanes];
    for (int i = 0; i < kLanes; ++i) {
      if (i >= n) {
        mod[i] = bce[i] = Vec(0);
        continue;
      }
      Vec m, e, ad;
      math::bcdl_loss_factors<M, MODE>(row_lanes(ps + i * a.ls.sw + k, kn), row_lanes(pt + i * a.lt.sw + k, kn),
                                       beta, m, e, ad);
      mod[i] = m;
      bce[i] = e;
      mrow[i] = M::max(mrow[i], ad);
    }
    transpose_lanes(mod);
    transpose_lanes(bce);
    for (int j = 0; j < kn; ++j) sum = sum + Vec(mod[j]) * Vec(bce[j]);
  }
  transpose_lanes(mrow);
  for (int j = 0; j < kLanes; ++j) mx = M::max(mx, mrow[j]);
}

template <typename scalar_t, int MODE>
void bcdl_backward_rows(const BcdlBwdArgs& a, const scalar_t* ps, const scalar_t* pt, scalar_t* pg, int64_t n,
                        const Vectorized<float>& c) {
  using M = VecMath<float>;
  using Vec = Vectorized<float>;
  const Vec beta(static_cast<float>(a.beta));
  for (int64_t i = 0; i < n; ++i) {
    const Vec ci(broadcast_lane(c, static_cast<int>(i)));
    for (int64_t k = 0; k < a.ls.C; k += kLanes) {
      const int kn = static_cast<int>(std::min<int64_t>(kLanes, a.ls.C - k));
      const Vec g =
          math::bcdl_grad<M, MODE>(row_lanes(ps + i * a.ls.sw + k, kn), row_lanes(pt + i * a.lt.sw + k, kn), beta);
      store_row_lanes(g * ci, pg + i * a.lg.sw + k, kn);
    }
  }
}
#endif

template <typename scalar_t, int MODE>
void bcdl_forward_t(const BcdlFwdArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = VecMath<acc_t>;
  using Vec = Vectorized<acc_t>;
  const auto* weight = static_cast<const acc_t*>(a.weight);
  auto* loss = static_cast<acc_t*>(a.loss);
  auto* mad = static_cast<acc_t*>(a.max_abs_diff);
  const Vec beta(static_cast<acc_t>(a.beta));
  for_each_run<Vec::size()>(a.ls, a.ls.C, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
    Vec sum(0), mx(0);
#if defined(BCKD_CPU_SIMD)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (classes_contiguous(a.ls) && classes_contiguous(a.lt)) {
        const scalar_t* ps = static_cast<const scalar_t*>(a.student) + offset(a.ls, b, h, w0);
        const scalar_t* pt = static_cast<const scalar_t*>(a.teacher) + offset(a.lt, b, h, w0);
        prefetch_next_run<Vec::size()>(ps, a.ls, a.ls.C);
        prefetch_next_run<Vec::size()>(pt, a.lt, a.lt.C);
        bcdl_forward_rows<scalar_t, MODE>(a, ps, pt, n, sum, mx);
        if (weight != nullptr) sum = sum * load_lanes<acc_t>(weight + o, 1, n);
        store_lanes(sum, loss + o, 1, n);
        store_lanes(mx, mad + o, 1, n);
        return;
      }
    }
#endif
    for_each_class<acc_t, scalar_t>(a, b, h, w0, n, [&](int64_t, int kn, const Vec* zs, const Vec* zt) {
      for (int j = 0; j < kn; ++j) {
        Vec ad;
        sum = sum + math::bcdl_loss<M, MODE>(zs[j], zt[j], beta, ad);
        mx = M::max(mx, ad);
      }
    });
    if (weight != nullptr) sum = sum * load_lanes<acc_t>(weight + o, 1, n);
    store_lanes(sum, loss + o, 1, n);
    store_lanes(mx, mad + o, 1, n);
  });
}

template <typename scalar_t, int MODE>
void bcdl_backward_t(const BcdlBwdArgs& a) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = VecMath<acc_t>;
  using Vec = Vectorized<acc_t>;
  const auto* grad_loss = static_cast<const acc_t*>(a.grad_loss);
  const auto* weight = static_cast<const acc_t*>(a.weight);
  auto* grad = static_cast<scalar_t*>(a.grad);
  const Vec beta(static_cast<acc_t>(a.beta));
  for_each_run<Vec::size()>(a.ls, a.ls.C, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
    scalar_t* pg = grad + offset(a.lg, b, h, w0);
    prefetch_next_run<Vec::size(), true>(pg, a.lg, a.lg.C);
    Vec c = load_lanes<acc_t>(grad_loss + o, 1, n);
    if (weight != nullptr) c = c * load_lanes<acc_t>(weight + o, 1, n);
#if defined(BCKD_CPU_SIMD)
    if constexpr (std::is_same_v<acc_t, float>) {
      if (classes_contiguous(a.ls) && classes_contiguous(a.lt) && classes_contiguous(a.lg)) {
        const scalar_t* ps = static_cast<const scalar_t*>(a.student) + offset(a.ls, b, h, w0);
        const scalar_t* pt = static_cast<const scalar_t*>(a.teacher) + offset(a.lt, b, h, w0);
        prefetch_next_run<Vec::size()>(ps, a.ls, a.ls.C);
        prefetch_next_run<Vec::size()>(pt, a.lt, a.lt.C);
        bcdl_backward_rows<scalar_t, MODE>(a, ps, pt, pg, n, c);
        return;
      }
    }
#endif
    for_each_class<acc_t, scalar_t>(a, b, h, w0, n, [&](int64_t k, int kn, const Vec* zs, const Vec* zt) {
      Vec g[kTile];
      for (int j = 0; j < kn; ++j) g[j] = math::bcdl_grad<M, MODE>(zs[j], zt[j], beta) * c;
      store_channels<acc_t>(g, pg + k * a.lg.sc, a.lg, n, kn);
    });
  });
}

void bcdl_forward(const BcdlFwdArgs& a) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "bcdl_cpu", [&] {
    with_beta_mode(a.beta, [&](auto mode) { bcdl_forward_t<scalar_t, decltype(mode)::value>(a); });
  });
}

void bcdl_backward(const BcdlBwdArgs& a) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "bcdl_backward_cpu", [&] {
    with_beta_mode(a.beta, [&](auto mode) { bcdl_backward_t<scalar_t, decltype(mode)::value>(a); });
  });
}

// ----------------------------------------------------------------- GIoU ----

// The pred and target boxes of the n locations of a run.
template <typename acc_t, typename scalar_t>
void load_boxes(const BoxPair& a, int64_t b, int64_t h, int64_t w0, int64_t n, Vectorized<acc_t>* p,
                Vectorized<acc_t>* t) {
  const scalar_t* pp = static_cast<const scalar_t*>(a.pred) + offset(a.lp, b, h, w0);
  const scalar_t* pt = static_cast<const scalar_t*>(a.target) + offset(a.lt, b, h, w0);
  load_channels<acc_t>(pp, a.lp, n, 4, p);
  load_channels<acc_t>(pt, a.lt, n, 4, t);
}

void giou_forward(const GiouFwdArgs& a) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "giou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<acc_t>;
    auto* loss = static_cast<acc_t*>(a.loss);
    const Vec eps(static_cast<acc_t>(a.eps));
    for_each_run<Vec::size()>(a.lp, 4, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
      Vec p[4], t[4];
      load_boxes<acc_t, scalar_t>(a, b, h, w0, n, p, t);
      store_lanes(math::giou_loss<VecMath<acc_t>>(p, t, eps), loss + o, 1, n);
    });
  });
}

void giou_backward(const GiouBwdArgs& a) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "giou_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<acc_t>;
    const auto* grad_loss = static_cast<const acc_t*>(a.grad_loss);
    auto* grad_pred = static_cast<scalar_t*>(a.grad_pred);
    auto* grad_target = static_cast<scalar_t*>(a.grad_target);
    const Vec eps(static_cast<acc_t>(a.eps));
    for_each_run<Vec::size()>(a.lp, 4, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
      Vec p[4], t[4], gp[4], gt[4];
      load_boxes<acc_t, scalar_t>(a, b, h, w0, n, p, t);
      math::giou_grad<VecMath<acc_t>>(p, t, eps, load_lanes<acc_t>(grad_loss + o, 1, n), gp, gt,
                                      grad_pred != nullptr, grad_target != nullptr);
      if (grad_pred != nullptr) {
        scalar_t* gpp = grad_pred + offset(a.lgp, b, h, w0);
        store_channels<acc_t>(gp, gpp, a.lgp, n, 4);
      }
      if (grad_target != nullptr) {
        scalar_t* gpt = grad_target + offset(a.lgt, b, h, w0);
        store_channels<acc_t>(gt, gpt, a.lgt, n, 4);
      }
    });
  });
}

// ------------------------------------------------------ DFL decode + GIoU ----

// Loads the 4 edges' bins of n locations and decodes each edge. With
// keep_exp, the bins are overwritten by exp(r_j − max) for the backward.
template <typename acc_t, typename scalar_t>
void decode_edges(const scalar_t* base, const LocLayout& l, int nbins, int64_t n,
                  Vectorized<acc_t>* bins, Vectorized<acc_t>* sum, Vectorized<acc_t>* dist,
                  bool keep_exp) {
  using M = VecMath<acc_t>;
  using Vec = Vectorized<acc_t>;
  prefetch_next_run<Vec::size()>(base, l, 4 * nbins);
  load_all_channels<acc_t>(base, l, 4 * nbins, n, bins);
  for (int e = 0; e < 4; ++e) {
    Vec* eb = bins + e * nbins;
    Vec mx;
    const auto load = [&](int j) { return eb[j]; };
    if (keep_exp) {
      math::softmax_integral<M>(load, nbins, mx, sum[e], dist[e], [&](int j, const Vec& x) { eb[j] = x; });
    } else {
      math::softmax_integral<M>(load, nbins, mx, sum[e], dist[e]);
    }
  }
}

// Decodes the teacher's and then the student's distances of the n locations
// of a run into boxes bt and bs. The student's softmax sums stay in sum and,
// with keep_exp, its exp(r_j − max) in bins.
template <typename acc_t, typename scalar_t>
void decode_boxes(const MapPair& a, int nbins, int64_t b, int64_t h, int64_t w0, int64_t n,
                  bool keep_exp, Vectorized<acc_t>* bins, Vectorized<acc_t>* sum,
                  Vectorized<acc_t>* ds, Vectorized<acc_t>* bs, Vectorized<acc_t>* bt) {
  using M = VecMath<acc_t>;
  Vectorized<acc_t> dt[4];
  decode_edges<acc_t>(static_cast<const scalar_t*>(a.teacher) + offset(a.lt, b, h, w0), a.lt, nbins, n,
                      bins, sum, dt, false);
  decode_edges<acc_t>(static_cast<const scalar_t*>(a.student) + offset(a.ls, b, h, w0), a.ls, nbins, n,
                      bins, sum, ds, keep_exp);
  math::distances_to_box<M>(ds, bs);
  math::distances_to_box<M>(dt, bt);
}

void dfl_forward(const DflFwdArgs& a) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "dfl_giou_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<acc_t>;
    auto* loss = static_cast<acc_t*>(a.loss);
    const Vec eps(static_cast<acc_t>(a.eps));
    for_each_run<Vec::size()>(a.ls, a.ls.C, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
      Vec bins[4 * kMaxBins], sum[4], ds[4], bs[4], bt[4];
      decode_boxes<acc_t, scalar_t>(a, a.nbins, b, h, w0, n, false, bins, sum, ds, bs, bt);
      store_lanes(math::giou_loss<VecMath<acc_t>>(bs, bt, eps), loss + o, 1, n);
    });
  });
}

void dfl_backward(const DflBwdArgs& a) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "dfl_giou_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    using Vec = Vectorized<acc_t>;
    const auto* grad_loss = static_cast<const acc_t*>(a.grad_loss);
    auto* grad = static_cast<scalar_t*>(a.grad);
    const Vec eps(static_cast<acc_t>(a.eps));
    const int nb = a.nbins;
    for_each_run<Vec::size()>(a.ls, a.ls.C, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
      Vec bins[4 * kMaxBins], sum[4], ds[4], bs[4], bt[4], gs[4], gt[4];
      decode_boxes<acc_t, scalar_t>(a, nb, b, h, w0, n, true, bins, sum, ds, bs, bt);
      math::giou_grad<VecMath<acc_t>>(bs, bt, eps, load_lanes<acc_t>(grad_loss + o, 1, n), gs, gt, true, false);
      // box = (−l, −t, r, b)
      const Vec gd[4] = {-gs[0], -gs[1], gs[2], gs[3]};
      for (int e = 0; e < 4; ++e) {
        const Vec inv = Vec(1) / sum[e];
        for (int j = 0; j < nb; ++j) {
          const Vec prob = bins[e * nb + j] * inv;
          bins[e * nb + j] = gd[e] * prob * (Vec(static_cast<acc_t>(j)) - ds[e]);
        }
      }
      scalar_t* pg = grad + offset(a.lg, b, h, w0);
      prefetch_next_run<Vec::size(), true>(pg, a.lg, 4 * nb);
      store_all_channels<acc_t>(bins, pg, a.lg, 4 * nb, n);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bckd
