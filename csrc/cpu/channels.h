// Reading and writing the channels of a run of locations through a layout,
// one location per lane (the CPU kernels' shared walk; kernels_impl.h): direct
// vector loads for unit-stride rows, tiles transposed in registers when each
// location's channels are contiguous (with the per-instruction-set shuffles
// they and BCDL's rows are built from), gathers for any other strides.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../layout.h"
#include "simd.h"

namespace bckd {
namespace cpu {
namespace CPU_CAPABILITY {

// Elements per parallel task, as ATen uses.
constexpr int64_t kGrainSize = 32768;

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
// time of channels_last maps against nchw ones. A tile instead reads kTile
// contiguous channels of each location and transposes them in registers.
constexpr int kTile = 4;

#if defined(BCKD_CPU_SIMD)
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

// bfloat16's rounded patterns r (one per 32-bit lane) as kLanes 16-bit
// values, its quiet NaN where v is NaN.
#if defined(CPU_CAPABILITY_AVX2)
inline __m128i pack_bf16(__m256i r, const __m256& v) {
  r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  r = _mm256_packus_epi32(r, r);
  return _mm_unpacklo_epi64(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
#elif defined(CPU_CAPABILITY_AVX512)
inline __m256i pack_bf16(__m512i r, const __m512& v) {
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, _mm512_set1_epi32(0x7fc0));
  return _mm512_cvtepi32_epi16(r);
}
#endif

#if defined(BCKD_CPU_SIMD)
// kLanes 16-bit floats to float and back, rounding to nearest even as c10's
// conversions do (NaN: bfloat16's quiet NaN).
template <typename scalar_t>
inline Native widen(const Native16& x) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) return BCKD_MM(cvtph_ps)(x);
  return BCKD_MM_CAST_INT_PS(BCKD_MM(slli_epi32)(BCKD_MM(cvtepu16_epi32)(x), 16));
}

template <typename scalar_t>
inline Native16 narrow(const Native& v) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
    return BCKD_MM(cvtps_ph)(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  } else {
    const NativeInt u = BCKD_MM_INT(castps_)(v);
    const NativeInt lsb = BCKD_MM_INT(and_)(BCKD_MM(srli_epi32)(u, 16), BCKD_MM(set1_epi32)(1));
    const NativeInt bias = BCKD_MM(add_epi32)(lsb, BCKD_MM(set1_epi32)(0x7fff));
    const NativeInt r = BCKD_MM(srli_epi32)(BCKD_MM(add_epi32)(u, bias), 16);
    return pack_bf16(r, v);
  }
}
#endif

// Per instruction set:
//   row_lanes / store_row_lanes: the first kn ≤ kLanes elements of a row;
//   transpose_lanes: kLanes × kLanes, a[i] lane j to a[j] lane i;
//   broadcast_lane: lane i of v in every lane;
//   tile_rows / store_tile_rows: rows i, i + 4, … of a tile (4 channels of
//     kLanes locations) in the 128-bit blocks of one register, and back;
//   transpose_tile: 4 × 4 within each 128-bit block, so that tile_rows' a[i]
//     become channel i of the kLanes locations.
#if defined(CPU_CAPABILITY_AVX2)
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
#elif defined(CPU_CAPABILITY_AVX512)
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
#endif

#if defined(BCKD_CPU_SIMD)
inline void transpose_tile(Native* a) {
  using O = NativeOps;
  const Native t0 = O::unpacklo(a[0], a[1]), t1 = O::unpacklo(a[2], a[3]);
  const Native t2 = O::unpackhi(a[0], a[1]), t3 = O::unpackhi(a[2], a[3]);
  a[0] = O::shuffle<0x44>(t0, t1);
  a[1] = O::shuffle<0xee>(t0, t1);
  a[2] = O::shuffle<0x44>(t2, t3);
  a[3] = O::shuffle<0xee>(t2, t3);
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
inline bool channels_contiguous(const LocLayout& l) { return l.sc == 1 && l.sw != 1; }

// Channels [0, kn) of n locations of layout l starting at p, into out[0, kn).
template <typename acc_t, typename scalar_t>
inline void load_channels(const scalar_t* p, const LocLayout& l, int64_t n, int kn, Vectorized<acc_t>* out) {
  if (channels_contiguous(l)) {
    load_tile<acc_t>(p, l.sw, n, kn, out);
  } else {
    for (int j = 0; j < kn; ++j) out[j] = load_lanes<acc_t>(p + j * l.sc, l.sw, n);
  }
}

template <typename acc_t, typename scalar_t>
inline void store_channels(const Vectorized<acc_t>* v, scalar_t* p, const LocLayout& l, int64_t n, int kn) {
  if (channels_contiguous(l)) {
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
  if (!channels_contiguous(l)) return;
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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bckd
