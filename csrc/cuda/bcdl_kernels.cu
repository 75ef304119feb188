// BCDL on CUDA (docs/method.md section 1), per location i over its C classes k:
//   forward:  loss_i = w_i Σ_k |d|^β BCE(zs, q),  max_abs_diff_i = max_k |d|
//   backward: ∂/∂zs_ik = g_i w_i (|d|^β d + ∂|d|^β/∂d · p(1−p) · BCE)
// with p = σ(zs), q = σ(zt), d = p − q; the per-element maths is
// bckd_math.h's, shared with the CPU kernels. Each pass reads zs and zt once
// (and the backward writes the gradient once): 2·C (forward) and 3·C
// (backward) elements per location, plus the per-location weight, gradient
// and outputs, which is the least any implementation moves.
//
// The access is chosen per call (access.h):
// - kLocations (nchw head maps): a thread owns VL neighbouring
//   locations (one 16-byte load per class plane, VL = 4 in float32, 8 in
//   half precision; VL = 1 for any other strides) and loads kUnroll class
//   planes before it uses the first, so that several loads are in flight.
// - kChannels (channels_last maps, rows): `group` lanes share a
//   location and read its row as 16-byte vectors; the sum and max over
//   classes finish in a shuffle butterfly.
// Sums run in a fixed order in both (class order inside a thread, then the
// butterfly), so a call gives the same bits every run; no atomics.
#include "../dispatch.h"
#include "common.cuh"
#include "kernels.h"
#include "launch.h"

namespace bckd {
namespace cuda {
namespace {

// Class planes a kLocations thread loads before computing on them. The last
// block of a row is predicated rather than left to a second loop, which
// would keep the row pointers live across two loops (ptxas spilled them).
constexpr int kUnroll = 4;

// VL per-location accumulator values starting at p (16-byte aligned when the
// launcher chose VL > 1).
template <int VL, typename acc_t>
__device__ __forceinline__ void load_locations(const acc_t* p, acc_t (&out)[VL]) {
  if constexpr (VL % 4 == 0 && sizeof(acc_t) == 4) {
#pragma unroll
    for (int c = 0; c < VL / 4; ++c) {
      const Pack<acc_t, 4> x = load_pack<4>(p + 4 * c);
#pragma unroll
      for (int q = 0; q < 4; ++q) out[4 * c + q] = x.v[q];
    }
  } else {
#pragma unroll
    for (int q = 0; q < VL; ++q) out[q] = p[q];
  }
}

template <int VL, typename acc_t>
__device__ __forceinline__ void store_locations(acc_t* p, const acc_t (&x)[VL]) {
  if constexpr (VL % 4 == 0 && sizeof(acc_t) == 4) {
#pragma unroll
    for (int c = 0; c < VL / 4; ++c) {
      Pack<acc_t, 4> y;
#pragma unroll
      for (int q = 0; q < 4; ++q) y.v[q] = x[4 * c + q];
      store_pack(p + 4 * c, y);
    }
  } else {
#pragma unroll
    for (int q = 0; q < VL; ++q) p[q] = x[q];
  }
}

template <typename scalar_t, int MODE>
struct Bcdl {
  using acc_t = at::opmath_type<scalar_t>;
  using M = DeviceMath<acc_t>;

  static __device__ __forceinline__ void add(scalar_t zs, scalar_t zt, acc_t beta, acc_t& sum,
                                             acc_t& mx) {
    acc_t ad;
    sum += math::bcdl_loss<M, MODE>(static_cast<acc_t>(zs), static_cast<acc_t>(zt), beta, ad);
    mx = M::max(mx, ad);
  }

  static __device__ __forceinline__ scalar_t grad(scalar_t zs, scalar_t zt, acc_t beta, acc_t c) {
    return static_cast<scalar_t>(
        math::bcdl_grad<M, MODE>(static_cast<acc_t>(zs), static_cast<acc_t>(zt), beta) * c);
  }
};

// ----------------------------------------------------------- kLocations ----

template <typename scalar_t, int MODE, int VL>
__global__ void __launch_bounds__(kThreads)
    bcdl_forward_loc(const BcdlFwdArgs a, int64_t nthreads) {
  using K = Bcdl<scalar_t, MODE>;
  using acc_t = typename K::acc_t;
  const auto* __restrict__ zs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ zt = static_cast<const scalar_t*>(a.teacher);
  const auto* __restrict__ weight = static_cast<const acc_t*>(a.weight);
  const acc_t beta = static_cast<acc_t>(a.beta);
  BCKD_GRID_LOOP(t, nthreads) {
    const int64_t i = t * VL;
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = zs + loc.offset(a.ls);
    const scalar_t* pt = zt + loc.offset(a.lt);
    acc_t sum[VL], mx[VL];
#pragma unroll
    for (int q = 0; q < VL; ++q) sum[q] = mx[q] = acc_t(0);
    for (int64_t k = 0; k < a.ls.C; k += kUnroll) {
      Pack<scalar_t, VL> xs[kUnroll], xt[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (k + u < a.ls.C) {
          xs[u] = load_pack<VL>(ps + (k + u) * a.ls.sc);
          xt[u] = load_pack<VL>(pt + (k + u) * a.lt.sc);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (k + u < a.ls.C) {
#pragma unroll
          for (int q = 0; q < VL; ++q) K::add(xs[u].v[q], xt[u].v[q], beta, sum[q], mx[q]);
        }
      }
    }
    if (weight != nullptr) {
      acc_t w[VL];
      load_locations<VL>(weight + i, w);
#pragma unroll
      for (int q = 0; q < VL; ++q) sum[q] *= w[q];
    }
    store_locations<VL>(static_cast<acc_t*>(a.loss) + i, sum);
    store_locations<VL>(static_cast<acc_t*>(a.max_abs_diff) + i, mx);
  }
}

template <typename scalar_t, int MODE, int VL>
__global__ void __launch_bounds__(kThreads)
    bcdl_backward_loc(const BcdlBwdArgs a, int64_t nthreads) {
  using K = Bcdl<scalar_t, MODE>;
  using acc_t = typename K::acc_t;
  const auto* __restrict__ zs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ zt = static_cast<const scalar_t*>(a.teacher);
  const auto* __restrict__ grad_loss = static_cast<const acc_t*>(a.grad_loss);
  const auto* __restrict__ weight = static_cast<const acc_t*>(a.weight);
  auto* __restrict__ grad = static_cast<scalar_t*>(a.grad);
  const acc_t beta = static_cast<acc_t>(a.beta);
  BCKD_GRID_LOOP(t, nthreads) {
    const int64_t i = t * VL;
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = zs + loc.offset(a.ls);
    const scalar_t* pt = zt + loc.offset(a.lt);
    scalar_t* pg = grad + loc.offset(a.lg);
    acc_t c[VL];
    // c = grad_loss · weight without a branch: with no weight the second load
    // reads grad_loss again (a cache hit) and is not used. A branch here took
    // ptxas from 64 to 105 registers (float32, VL = 4).
    acc_t w[VL];
    load_locations<VL>(grad_loss + i, c);
    load_locations<VL>(weight != nullptr ? weight + i : grad_loss + i, w);
#pragma unroll
    for (int q = 0; q < VL; ++q) c[q] = weight != nullptr ? c[q] * w[q] : c[q];
    for (int64_t k = 0; k < a.ls.C; k += kUnroll) {
      Pack<scalar_t, VL> xs[kUnroll], xt[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (k + u < a.ls.C) {
          xs[u] = load_pack<VL>(ps + (k + u) * a.ls.sc);
          xt[u] = load_pack<VL>(pt + (k + u) * a.lt.sc);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (k + u < a.ls.C) {
          Pack<scalar_t, VL> g;
#pragma unroll
          for (int q = 0; q < VL; ++q) g.v[q] = K::grad(xs[u].v[q], xt[u].v[q], beta, c[q]);
          store_pack(pg + (k + u) * a.lg.sc, g);
        }
      }
    }
  }
}

// ------------------------------------------------------------ kChannels ----

template <typename scalar_t, int MODE, int VEC>
__global__ void __launch_bounds__(kThreads)
    bcdl_forward_chan(const BcdlFwdArgs a, int64_t n, int group) {
  using K = Bcdl<scalar_t, MODE>;
  using acc_t = typename K::acc_t;
  using M = typename K::M;
  const auto* __restrict__ zs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ zt = static_cast<const scalar_t*>(a.teacher);
  const auto* __restrict__ weight = static_cast<const acc_t*>(a.weight);
  const acc_t beta = static_cast<acc_t>(a.beta);
  const int64_t nvec = a.ls.C / VEC;
  const WarpGroups wg(group);
  BCKD_WARP_LOOP(wg, warp, n) {
    const int64_t i = wg.location(warp);
    acc_t sum(0), mx(0);
    if (i < n) {
      const LocIndex loc(a.ls, i);
      const scalar_t* ps = zs + loc.offset(a.ls);
      const scalar_t* pt = zt + loc.offset(a.lt);
      for (int64_t v0 = wg.sub; v0 < nvec; v0 += static_cast<int64_t>(group) * kVecsPerLane) {
        Pack<scalar_t, VEC> xs[kVecsPerLane], xt[kVecsPerLane];
#pragma unroll
        for (int u = 0; u < kVecsPerLane; ++u) {
          const int64_t v = v0 + static_cast<int64_t>(u) * group;
          if (v < nvec) {
            xs[u] = load_pack<VEC>(ps + v * VEC);
            xt[u] = load_pack<VEC>(pt + v * VEC);
          }
        }
#pragma unroll
        for (int u = 0; u < kVecsPerLane; ++u) {
          if (v0 + static_cast<int64_t>(u) * group < nvec) {
#pragma unroll
            for (int q = 0; q < VEC; ++q) K::add(xs[u].v[q], xt[u].v[q], beta, sum, mx);
          }
        }
      }
    }
    sum = group_reduce(sum, group, [](acc_t x, acc_t y) { return x + y; });
    mx = group_reduce(mx, group, [](acc_t x, acc_t y) { return M::max(x, y); });
    if (i < n && wg.sub == 0) {
      if (weight != nullptr) sum *= weight[i];
      static_cast<acc_t*>(a.loss)[i] = sum;
      static_cast<acc_t*>(a.max_abs_diff)[i] = mx;
    }
  }
}

template <typename scalar_t, int MODE, int VEC>
__global__ void __launch_bounds__(kThreads)
    bcdl_backward_chan(const BcdlBwdArgs a, int64_t n, int group) {
  using K = Bcdl<scalar_t, MODE>;
  using acc_t = typename K::acc_t;
  const auto* __restrict__ zs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ zt = static_cast<const scalar_t*>(a.teacher);
  const auto* __restrict__ grad_loss = static_cast<const acc_t*>(a.grad_loss);
  const auto* __restrict__ weight = static_cast<const acc_t*>(a.weight);
  auto* __restrict__ grad = static_cast<scalar_t*>(a.grad);
  const acc_t beta = static_cast<acc_t>(a.beta);
  const int64_t nvec = a.ls.C / VEC;
  const WarpGroups wg(group);
  BCKD_WARP_LOOP(wg, warp, n) {
    const int64_t i = wg.location(warp);
    if (i >= n) continue;
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = zs + loc.offset(a.ls);
    const scalar_t* pt = zt + loc.offset(a.lt);
    scalar_t* pg = grad + loc.offset(a.lg);
    const acc_t c = weight != nullptr ? grad_loss[i] * weight[i] : grad_loss[i];
    for (int64_t v0 = wg.sub; v0 < nvec; v0 += static_cast<int64_t>(group) * kVecsPerLane) {
      Pack<scalar_t, VEC> xs[kVecsPerLane], xt[kVecsPerLane];
#pragma unroll
      for (int u = 0; u < kVecsPerLane; ++u) {
        const int64_t v = v0 + static_cast<int64_t>(u) * group;
        if (v < nvec) {
          xs[u] = load_pack<VEC>(ps + v * VEC);
          xt[u] = load_pack<VEC>(pt + v * VEC);
        }
      }
#pragma unroll
      for (int u = 0; u < kVecsPerLane; ++u) {
        const int64_t v = v0 + static_cast<int64_t>(u) * group;
        if (v < nvec) {
          Pack<scalar_t, VEC> g;
#pragma unroll
          for (int q = 0; q < VEC; ++q) g.v[q] = K::grad(xs[u].v[q], xt[u].v[q], beta, c);
          store_pack(pg + v * VEC, g);
        }
      }
    }
  }
}

// ------------------------------------------------------------ launching ----

// One direction's four kernel variants: kChannels and kLocations, each with
// vectors and scalar.
template <class Args>
struct BcdlKernels {
  void (*chan_vec)(const Args, int64_t, int);
  void (*chan)(const Args, int64_t, int);
  void (*loc_vec)(const Args, int64_t);
  void (*loc)(const Args, int64_t);
};

// Runs the variant plan_bcdl picks; V: the locations of one kLocations vector.
template <class Args>
void launch_bcdl(const Args& a, int64_t elem, int V, const BcdlKernels<Args>& k, cudaStream_t stream) {
  const int64_t n = a.ls.num_locations();
  const AccessPlan plan = plan_bcdl(a, elem);
  if (plan.access == Access::kChannels) {
    const auto kernel = plan.vec > 1 ? k.chan_vec : k.chan;
    kernel<<<blocks_for(n * plan.group), kThreads, 0, stream>>>(a, n, plan.group);
  } else if (plan.vec > 1) {
    const auto kernel = k.loc_vec;
    kernel<<<blocks_for(n / V), kThreads, 0, stream>>>(a, n / V);
  } else {
    const auto kernel = k.loc;
    kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Elements per 16-byte vector; float64 has no vector kernels (plan_bcdl never
// asks for them), so its 1 names the scalar ones.
template <typename scalar_t>
constexpr int kVecOf = sizeof(scalar_t) < 8 ? kVecBytes / sizeof(scalar_t) : 1;

}  // namespace

void bcdl_forward(const BcdlFwdArgs& a, cudaStream_t stream) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "bcdl_cuda", [&] {
    with_beta_mode(a.beta, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, V = kVecOf<scalar_t>;
      launch_bcdl(a, sizeof(scalar_t), V,
                  BcdlKernels<BcdlFwdArgs>{bcdl_forward_chan<scalar_t, MODE, V>, bcdl_forward_chan<scalar_t, MODE, 1>,
                                           bcdl_forward_loc<scalar_t, MODE, V>, bcdl_forward_loc<scalar_t, MODE, 1>},
                  stream);
    });
  });
}

void bcdl_backward(const BcdlBwdArgs& a, cudaStream_t stream) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "bcdl_backward_cuda", [&] {
    with_beta_mode(a.beta, [&](auto mode) {
      constexpr int MODE = decltype(mode)::value, V = kVecOf<scalar_t>;
      launch_bcdl(a, sizeof(scalar_t), V,
                  BcdlKernels<BcdlBwdArgs>{bcdl_backward_chan<scalar_t, MODE, V>, bcdl_backward_chan<scalar_t, MODE, 1>,
                                           bcdl_backward_loc<scalar_t, MODE, V>, bcdl_backward_loc<scalar_t, MODE, 1>},
                  stream);
    });
  });
}

}  // namespace cuda
}  // namespace bckd
