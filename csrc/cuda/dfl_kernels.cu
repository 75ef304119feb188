// Fused DFL decode + GIoU on CUDA (docs/method.md section 2): each
// location's 4 edges × nbins logits (student and teacher) are decoded in
// registers, never written out:
//   P_ej = softmax(r_e)_j,  dist_e = Σ_j j·P_ej,  box = (−l, −t, r, b)
//   loss = 1 − GIoU(box_s, box_t)
//   ∂loss/∂r_ej = ∂loss/∂dist_e · P_ej · (j − dist_e)
// The backward recomputes the decode (nothing of size [N, 68] is saved) and
// keeps the student's exponentials for the chain rule. Each pass reads the
// two maps once (the backward also writes the gradient once).
// Accesses as in bcdl_kernels.cu (access.h):
// - kLocations: one thread per location. With reg_max = 16 (17 bins, the
//   GFocal default) an edge's 17 bins of student and teacher are loaded into
//   registers together (34 loads in flight), so each bin is read once; other
//   bin counts take a loop that reads the bins from memory per use.
// - kChannels: 4 lanes share a location (one per edge); they read its rows
//   as 16-byte vectors (8 bytes for half-precision rows of 68) into shared
//   memory, each lane decodes its edge, and shuffles hand every lane the
//   four distances (dfl_chan below).
#include <type_traits>

#include "../dispatch.h"
#include "common.cuh"
#include "kernels.h"
#include "launch.h"

namespace bckd {
namespace cuda {
namespace {

// ------------------------------------------ DFL + GIoU, kLocations ----

// Boxes of the two decoded distance vectors, their loss or its gradient with
// respect to the student's distances (box = (−l, −t, r, b)).
template <class M, typename acc_t>
__device__ __forceinline__ acc_t dfl_giou_loss(const acc_t* ds, const acc_t* dt, acc_t eps) {
  acc_t bs[4], bt[4];
  math::distances_to_box<M>(ds, bs);
  math::distances_to_box<M>(dt, bt);
  return math::giou_loss<M>(bs, bt, eps);
}

template <class M, typename acc_t>
__device__ __forceinline__ void dfl_giou_grad(const acc_t* ds, const acc_t* dt, acc_t eps, acc_t c,
                                              acc_t* gd) {
  acc_t bs[4], bt[4], gs[4], gt[4];
  math::distances_to_box<M>(ds, bs);
  math::distances_to_box<M>(dt, bt);
  math::giou_grad<M>(bs, bt, eps, c, gs, gt, true, false);
  gd[0] = -gs[0];
  gd[1] = -gs[1];
  gd[2] = gs[2];
  gd[3] = gs[3];
}

// The arguments of one direction.
template <bool BACKWARD>
using DflArgs = std::conditional_t<BACKWARD, DflBwdArgs, DflFwdArgs>;

// Location i of a kLocations kernel once its distances are decoded: the
// forward writes its loss, the backward sets gd = grad_loss_i · ∂loss/∂dist.
template <class M, typename acc_t>
__device__ __forceinline__ void dfl_location(const DflFwdArgs& a, int64_t i, const acc_t* ds,
                                             const acc_t* dt, acc_t eps, acc_t*) {
  static_cast<acc_t*>(a.loss)[i] = dfl_giou_loss<M>(ds, dt, eps);
}

template <class M, typename acc_t>
__device__ __forceinline__ void dfl_location(const DflBwdArgs& a, int64_t i, const acc_t* ds,
                                             const acc_t* dt, acc_t eps, acc_t* gd) {
  dfl_giou_grad<M>(ds, dt, eps, static_cast<const acc_t*>(a.grad_loss)[i], gd);
}

// nbins known at compile time: bins live in registers, each read once.
template <typename scalar_t, int NB, bool BACKWARD>
__global__ void __launch_bounds__(kThreads) dfl_loc_fixed(const DflArgs<BACKWARD> a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = DeviceMath<acc_t>;
  const auto* __restrict__ rs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ rt = static_cast<const scalar_t*>(a.teacher);
  const acc_t eps = static_cast<acc_t>(a.eps);
  BCKD_GRID_LOOP(i, n) {
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = rs + loc.offset(a.ls);
    const scalar_t* pt = rt + loc.offset(a.lt);
    acc_t ds[4], dt[4], inv[4];
    acc_t ex[BACKWARD ? 4 : 1][NB];  // the student's exp(r − max), backward only
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      acc_t xs[NB], xt[NB];
#pragma unroll
      for (int j = 0; j < NB; ++j) {
        xs[j] = static_cast<acc_t>(ps[static_cast<int64_t>(e * NB + j) * a.ls.sc]);
        xt[j] = static_cast<acc_t>(pt[static_cast<int64_t>(e * NB + j) * a.lt.sc]);
      }
      acc_t mx, sum;
      math::softmax_integral<M>([&](int j) { return xt[j]; }, NB, mx, sum, dt[e]);
      if constexpr (BACKWARD) {
        math::softmax_integral<M>([&](int j) { return xs[j]; }, NB, mx, sum, ds[e],
                                  [&](int j, acc_t v) { ex[e][j] = v; });
        inv[e] = acc_t(1) / sum;
      } else {
        math::softmax_integral<M>([&](int j) { return xs[j]; }, NB, mx, sum, ds[e]);
      }
    }
    acc_t gd[4];
    dfl_location<M>(a, i, ds, dt, eps, gd);
    if constexpr (BACKWARD) {
      scalar_t* pg = static_cast<scalar_t*>(a.grad) + loc.offset(a.lg);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const acc_t k = gd[e] * inv[e];
#pragma unroll
        for (int j = 0; j < NB; ++j) {
          pg[static_cast<int64_t>(e * NB + j) * a.lg.sc] =
              static_cast<scalar_t>(k * ex[e][j] * (static_cast<acc_t>(j) - ds[e]));
        }
      }
    }
  }
}

// Any nbins: the softmax integral reads the bins from memory per use (twice
// in the decode, once more in the backward's chain rule).
template <typename scalar_t, bool BACKWARD>
__global__ void __launch_bounds__(kThreads) dfl_loc_any(const DflArgs<BACKWARD> a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = DeviceMath<acc_t>;
  const auto* __restrict__ rs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ rt = static_cast<const scalar_t*>(a.teacher);
  const acc_t eps = static_cast<acc_t>(a.eps);
  const int nb = a.nbins;
  BCKD_GRID_LOOP(i, n) {
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = rs + loc.offset(a.ls);
    const scalar_t* pt = rt + loc.offset(a.lt);
    acc_t mx[4], sum[4], ds[4], dt[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const scalar_t* es = ps + static_cast<int64_t>(e) * nb * a.ls.sc;
      const scalar_t* et = pt + static_cast<int64_t>(e) * nb * a.lt.sc;
      acc_t mx_t, sum_t;
      math::softmax_integral<M>([&](int j) { return static_cast<acc_t>(es[j * a.ls.sc]); }, nb, mx[e],
                                sum[e], ds[e]);
      math::softmax_integral<M>([&](int j) { return static_cast<acc_t>(et[j * a.lt.sc]); }, nb, mx_t,
                                sum_t, dt[e]);
    }
    acc_t gd[4];
    dfl_location<M>(a, i, ds, dt, eps, gd);
    if constexpr (BACKWARD) {
      scalar_t* pg = static_cast<scalar_t*>(a.grad) + loc.offset(a.lg);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const acc_t k = gd[e] / sum[e];
        for (int j = 0; j < nb; ++j) {
          const int64_t c = static_cast<int64_t>(e) * nb + j;
          const acc_t ej = M::exp_neg(static_cast<acc_t>(ps[c * a.ls.sc]) - mx[e]);
          pg[c * a.lg.sc] = static_cast<scalar_t>(k * ej * (static_cast<acc_t>(j) - ds[e]));
        }
      }
    }
  }
}

// ------------------------------------------- DFL + GIoU, kChannels ----

// a[e] for the lane's own edge e, as selects: no register array indexed at
// run time.
template <typename T>
__device__ __forceinline__ T pick(const T (&a)[4], int e) {
  return e == 0 ? a[0] : e == 1 ? a[1] : e == 2 ? a[2] : a[3];
}

// A group of kEdges lanes reads each location's two rows with vector loads
// (coalesced: the group's lanes take neighbouring vectors) into the warp's
// shared-memory tile; lane e then decodes edge e of both rows serially with
// the same softmax_integral as every other kernel, and the four distances
// reach all lanes of the group through shuffles. With 17 bins the lanes of a
// warp read 32 different banks (row stride 68 floats). The backward writes
// the gradient of each bin over the student's exponentials in the tile and
// the group stores the row with vector stores. Only lanes of one warp share
// a tile, so __syncwarp orders its phases.
template <typename scalar_t, int VEC, bool BACKWARD>
__global__ void __launch_bounds__(kThreads) dfl_chan(const DflArgs<BACKWARD> a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = DeviceMath<acc_t>;
  extern __shared__ __align__(16) unsigned char dfl_tile[];
  const auto* __restrict__ rs = static_cast<const scalar_t*>(a.student);
  const auto* __restrict__ rt = static_cast<const scalar_t*>(a.teacher);
  const acc_t eps = static_cast<acc_t>(a.eps);
  const int nb = a.nbins;
  const int64_t C = a.ls.C;
  const int64_t nvec = C / VEC;
  const WarpGroups wg(kEdges);
  const int group_base = (threadIdx.x % kWarpSize) - wg.sub;
  acc_t* const s_row = reinterpret_cast<acc_t*>(dfl_tile) +
                       ((threadIdx.x / kWarpSize) * (kWarpSize / kEdges) + wg.slot) * 2 * C;
  acc_t* const t_row = s_row + C;
  BCKD_WARP_LOOP(wg, warp, n) {
    const int64_t i = wg.location(warp);
    const bool live = i < n;
    const LocIndex loc(a.ls, live ? i : 0);
    if (live) {
      const scalar_t* ps = rs + loc.offset(a.ls);
      const scalar_t* pt = rt + loc.offset(a.lt);
      for (int64_t v0 = wg.sub; v0 < nvec; v0 += kEdges * kVecsPerLane) {
        Pack<scalar_t, VEC> vs[kVecsPerLane], vt[kVecsPerLane];
#pragma unroll
        for (int u = 0; u < kVecsPerLane; ++u) {
          const int64_t v = v0 + u * kEdges;
          if (v < nvec) {
            vs[u] = load_pack<VEC>(ps + v * VEC);
            vt[u] = load_pack<VEC>(pt + v * VEC);
          }
        }
#pragma unroll
        for (int u = 0; u < kVecsPerLane; ++u) {
          const int64_t v = v0 + u * kEdges;
          if (v < nvec) {
#pragma unroll
            for (int q = 0; q < VEC; ++q) {
              s_row[v * VEC + q] = static_cast<acc_t>(vs[u].v[q]);
              t_row[v * VEC + q] = static_cast<acc_t>(vt[u].v[q]);
            }
          }
        }
      }
    }
    __syncwarp();
    // Lanes of locations past the end decode whatever the tile holds and
    // store nothing.
    acc_t* const se = s_row + wg.sub * nb;
    const acc_t* const te = t_row + wg.sub * nb;
    acc_t mx, sum, sum_t, d_s, d_t;
    if constexpr (BACKWARD) {
      math::softmax_integral<M>([&](int j) { return se[j]; }, nb, mx, sum, d_s,
                                [&](int j, acc_t e) { se[j] = e; });
    } else {
      math::softmax_integral<M>([&](int j) { return se[j]; }, nb, mx, sum, d_s);
    }
    math::softmax_integral<M>([&](int j) { return te[j]; }, nb, mx, sum_t, d_t);
    acc_t ds[4], dt[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      ds[e] = __shfl_sync(0xffffffffu, d_s, group_base + e);
      dt[e] = __shfl_sync(0xffffffffu, d_t, group_base + e);
    }
    if constexpr (!BACKWARD) {
      if (live && wg.sub == 0) static_cast<acc_t*>(a.loss)[i] = dfl_giou_loss<M>(ds, dt, eps);
    } else {
      acc_t gd[4];
      dfl_giou_grad<M>(ds, dt, eps, live ? static_cast<const acc_t*>(a.grad_loss)[i] : acc_t(0), gd);
      const acc_t k = pick(gd, wg.sub) / sum;
      for (int j = 0; j < nb; ++j) se[j] = k * se[j] * (static_cast<acc_t>(j) - d_s);
      __syncwarp();
      if (live) {
        scalar_t* pg = static_cast<scalar_t*>(a.grad) + loc.offset(a.lg);
        for (int64_t v = wg.sub; v < nvec; v += kEdges) {
          Pack<scalar_t, VEC> g;
#pragma unroll
          for (int q = 0; q < VEC; ++q) g.v[q] = static_cast<scalar_t>(s_row[v * VEC + q]);
          store_pack(pg + v * VEC, g);
        }
      }
    }
    __syncwarp();  // the next iteration overwrites the tile
  }
}

// ------------------------------------------------------------ launching ----

template <typename scalar_t, bool BACKWARD>
void launch_dfl(const DflArgs<BACKWARD>& a, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kVectors = sizeof(scalar_t) < 8;
  constexpr int V16 = kVectors ? 16 / sizeof(scalar_t) : 1;
  constexpr int V8 = kVectors ? 8 / sizeof(scalar_t) : 1;
  const int64_t n = a.ls.num_locations();
  const DflPlan plan = plan_dfl(a, sizeof(scalar_t), sizeof(acc_t));
  if (plan.kernel == DflKernel::kChannels) {
    const unsigned int blocks = blocks_for(n * kEdges);
    const size_t smem = dfl_chan_smem(a.ls.C, sizeof(acc_t));
    if (kVectors && plan.vec == V16) {
      dfl_chan<scalar_t, V16, BACKWARD><<<blocks, kThreads, smem, stream>>>(a, n);
    } else if (kVectors && plan.vec == V8) {
      dfl_chan<scalar_t, V8, BACKWARD><<<blocks, kThreads, smem, stream>>>(a, n);
    } else {
      dfl_chan<scalar_t, 1, BACKWARD><<<blocks, kThreads, smem, stream>>>(a, n);
    }
  } else if (plan.kernel == DflKernel::kFixedBins) {
    dfl_loc_fixed<scalar_t, kFixedBins, BACKWARD><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
  } else {
    dfl_loc_any<scalar_t, BACKWARD><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void dfl_forward(const DflFwdArgs& a, cudaStream_t stream) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "dfl_giou_cuda", [&] { launch_dfl<scalar_t, false>(a, stream); });
}

void dfl_backward(const DflBwdArgs& a, cudaStream_t stream) {
  BCKD_DISPATCH_FLOATING_TYPES(a.dtype, "dfl_giou_backward_cuda", [&] { launch_dfl<scalar_t, true>(a, stream); });
}

}  // namespace cuda
}  // namespace bckd
