// Shared by the CUDA kernels: 64-bit location indexing, grid-stride loops,
// vector loads and stores, warp-group reductions and the float32 maths policy.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../bckd_math.h"
#include "../layout.h"
#include "access.h"

namespace bckd {
namespace cuda {

// Blocks for `threads` threads; beyond the cap the kernels' grid-stride loops
// take over.
inline unsigned int blocks_for(int64_t threads) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((threads + kThreads - 1) / kThreads, 1 << 30)));
}

// Location i (output index) -> (b, h, w) of a layout; every layout of one
// call shares B, H, W.
struct LocIndex {
  int64_t b, h, w;
  __device__ __forceinline__ LocIndex(const LocLayout& l, int64_t i) {
    w = i % l.W;
    const int64_t row = i / l.W;
    h = row % l.H;
    b = row / l.H;
  }
  __device__ __forceinline__ int64_t offset(const LocLayout& l) const {
    return b * l.sb + h * l.sh + w * l.sw;
  }
};

#define BCKD_GRID_LOOP(i, n)                                                        \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// N elements loaded or stored as one access of N·sizeof(T) bytes (16 for the
// kernels' vectors), moved as machine words of the widest width that divides
// them (uint4 for 16). Stores go through st.global.v4 / v2 explicitly: with a
// plain struct or uint4 store nvcc split the gradient stores of the backward
// kernels into scalar st.global.f32 already in the PTX.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int BYTES>
using WordOf = std::conditional_t<
    BYTES % 16 == 0, uint4,
    std::conditional_t<BYTES % 8 == 0, uint2, std::conditional_t<BYTES % 4 == 0, unsigned int, unsigned short>>>;

template <int N, typename T>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  using W = WordOf<sizeof(Pack<T, N>)>;
  constexpr int kWords = sizeof(Pack<T, N>) / sizeof(W);
  W w[kWords];
#pragma unroll
  for (int i = 0; i < kWords; ++i) w[i] = reinterpret_cast<const W*>(p)[i];
  Pack<T, N> x;
  memcpy(&x, w, sizeof(x));
  return x;
}

// volatile: a store's only effect is on memory. An asm statement without
// outputs is treated as volatile anyway (GCC's rule, which nvcc follows);
// written out, it does not rest on that rule: the store is never removed as
// unused nor moved across other volatile asm.
__device__ __forceinline__ void store_word(uint4* p, const uint4& w) {
  asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};" ::"l"(p), "r"(w.x), "r"(w.y), "r"(w.z), "r"(w.w)
               : "memory");
}
__device__ __forceinline__ void store_word(uint2* p, const uint2& w) {
  asm volatile("st.global.v2.b32 [%0], {%1, %2};" ::"l"(p), "r"(w.x), "r"(w.y) : "memory");
}
template <typename W>
__device__ __forceinline__ void store_word(W* p, const W& w) {
  *p = w;
}

// p: global memory.
template <int N, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& x) {
  using W = WordOf<sizeof(Pack<T, N>)>;
  constexpr int kWords = sizeof(Pack<T, N>) / sizeof(W);
  W w[kWords];
  memcpy(w, &x, sizeof(x));
#pragma unroll
  for (int i = 0; i < kWords; ++i) store_word(reinterpret_cast<W*>(p) + i, w[i]);
}

// Warps of the kChannels kernels: each warp takes 32 / group locations at a
// time, lane / group picks the location and lane % group the lane inside its
// group. The loop condition is the same for all lanes of a warp, so the
// shuffles inside the loop always see a full warp, also past the last
// location (those lanes carry neutral values and store nothing).
struct WarpGroups {
  int group, sub, slot, per_warp;
  int64_t first, step;
  __device__ __forceinline__ explicit WarpGroups(int g) : group(g) {
    const int lane = threadIdx.x % kWarpSize;
    sub = lane % g;
    slot = lane / g;
    per_warp = kWarpSize / g;
    first = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) / kWarpSize;
    step = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarpSize;
  }
  __device__ __forceinline__ int64_t location(int64_t warp) const { return warp * per_warp + slot; }
};

#define BCKD_WARP_LOOP(wg, warp, n) \
  for (int64_t warp = (wg).first; warp * (wg).per_warp < (n); warp += (wg).step)

// op (sum, maximum) over the lanes of one group (a power of two, aligned in
// the warp). A butterfly: every lane ends with the same value, combined in the
// same order on every run.
template <typename T, class Op>
__device__ __forceinline__ T group_reduce(T x, int group, const Op& op) {
  for (int off = group / 2; off > 0; off /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

// float32 maths on the GPU: the special-function unit's approximations,
// used only in the argument ranges the bckd_math.h contract promises.
//   exp_neg(x), x ≤ 0: 2^(x·log2 e) by ex2.approx.ftz (≤ 2 ulp on its
//     argument). Rounding x·log2 e to float shifts the exponent by up to
//     |x·log2 e|·2^-24, so the result is off by up to about |x|·2^-24
//     relative (5e−6 at x = −87) on top of the 2 ulp; below x = −87.3 the
//     result is a denormal and ftz makes it exactly 0. A sigmoid of a logit
//     z < 0 inherits that relative error, and is 0 below −87.3 where the
//     accurate one is under 1.2e−38: per element, BCDL's loss and gradient
//     are within about (|zs| + |zt|)·2^-24 relative of the accurate maths
//     plus a few ulp, and absolutely within 1.2e−38 below −87.3. A
//     location's loss, a sum of such terms, is within the largest of their
//     relative bounds plus the flushed terms' absolute one.
//   log1p_unit(e), e ∈ [0, 1]: 2·atanh(t), t = e/(2 + e) ≤ 1/3, odd series to
//     t^13 (first dropped term < 1.5e−8 relative), as the AVX2 CPU kernel.
//   rcp_unit(x), x ∈ [1, 3]: rcp.approx (≤ 1 ulp), no IEEE division sequence.
// Flushing denormals (ftz) changes results only below 1.2e−38.
//
// BCKD_SFU(instruction, x, host): the body of a function returning one
// special-function-unit instruction's result on the device, `host` elsewhere.
#ifdef __CUDA_ARCH__
#define BCKD_SFU(instruction, x, host)                     \
  float y;                                                 \
  asm(instruction " %0, %1;" : "=f"(y) : "f"(x));          \
  return y
#else
#define BCKD_SFU(instruction, x, host) return host
#endif
struct FastMath : math::ScalarMath<float> {
  static BCKD_HD float ex2(float x) { BCKD_SFU("ex2.approx.ftz.f32", x, ::exp2f(x)); }
  static BCKD_HD float rcp_unit(float x) { BCKD_SFU("rcp.approx.ftz.f32", x, 1.0f / x); }
  static BCKD_HD float exp_neg(float x) { return ex2(x * 1.44269504088896341f); }
  static BCKD_HD float log1p_unit(float e) {
    const float t = e * rcp_unit(e + 2.0f);
    const float u = t * t;
    float s = 1.0f / 13.0f;
    s = fmaf(s, u, 1.0f / 11.0f);
    s = fmaf(s, u, 1.0f / 9.0f);
    s = fmaf(s, u, 1.0f / 7.0f);
    s = fmaf(s, u, 1.0f / 5.0f);
    s = fmaf(s, u, 1.0f / 3.0f);
    s = fmaf(s, u, 1.0f);
    return (t + t) * s;
  }
};

// The policy of an accumulation type: FastMath for float32 (float, half and
// bfloat16 inputs), the libm-accurate one for float64.
template <typename acc_t>
struct DeviceMathOf {
  using type = math::ScalarMath<acc_t>;
};
template <>
struct DeviceMathOf<float> {
  using type = FastMath;
};
template <typename acc_t>
using DeviceMath = typename DeviceMathOf<acc_t>::type;

}  // namespace cuda
}  // namespace bckd
