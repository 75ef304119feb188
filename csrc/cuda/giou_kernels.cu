// Paired-box GIoU and fused DFL-decode + GIoU on CUDA (SPEC 2). One thread
// per location (box pair); the DFL kernels read each location's 4·(reg_max+1)
// bins of student and teacher straight from the head map (coalesced across
// threads), decode them with the softmax integral in registers, and never
// write softmax or boxes to memory. Backward recomputes the forward and
// chains ∂loss/∂dist_e through ∂dist_e/∂r_ej = P_ej (j − dist_e).
#include <ATen/Dispatch.h>

#include "common.cuh"
#include "kernels.h"

namespace bckd {
namespace cuda {
namespace {

template <typename scalar_t>
__global__ void giou_forward_kernel(const GiouArgs a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = math::ScalarMath<acc_t>;
  const auto* pred = static_cast<const scalar_t*>(a.pred);
  const auto* target = static_cast<const scalar_t*>(a.target);
  BCKD_GRID_LOOP(i, n) {
    acc_t p[4], t[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      p[j] = static_cast<acc_t>(pred[i * a.lp.sw + j * a.lp.sc]);
      t[j] = static_cast<acc_t>(target[i * a.lt.sw + j * a.lt.sc]);
    }
    static_cast<acc_t*>(a.loss)[i] = math::giou_loss<M>(p, t, static_cast<acc_t>(a.eps));
  }
}

template <typename scalar_t>
__global__ void giou_backward_kernel(const GiouArgs a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = math::ScalarMath<acc_t>;
  const auto* pred = static_cast<const scalar_t*>(a.pred);
  const auto* target = static_cast<const scalar_t*>(a.target);
  const auto* coef = static_cast<const acc_t*>(a.coef);
  auto* grad_pred = static_cast<scalar_t*>(a.grad_pred);
  auto* grad_target = static_cast<scalar_t*>(a.grad_target);
  BCKD_GRID_LOOP(i, n) {
    acc_t p[4], t[4], gp[4], gt[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      p[j] = static_cast<acc_t>(pred[i * a.lp.sw + j * a.lp.sc]);
      t[j] = static_cast<acc_t>(target[i * a.lt.sw + j * a.lt.sc]);
    }
    math::giou_grad<M>(p, t, static_cast<acc_t>(a.eps), coef[i], gp, gt);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      grad_pred[i * a.lgp.sw + j * a.lgp.sc] = static_cast<scalar_t>(gp[j]);
      grad_target[i * a.lgt.sw + j * a.lgt.sc] = static_cast<scalar_t>(gt[j]);
    }
  }
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ void decode(const scalar_t* base, int64_t sc, int nbins, acc_t* mx,
                                       acc_t* sum, acc_t* dist) {
  using M = math::ScalarMath<acc_t>;
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    const scalar_t* eb = base + static_cast<int64_t>(e) * nbins * sc;
    math::softmax_integral<M>([&](int j) { return static_cast<acc_t>(eb[j * sc]); }, nbins, mx[e],
                              sum[e], dist[e]);
  }
}

template <typename scalar_t>
__global__ void dfl_forward_kernel(const DflArgs a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = math::ScalarMath<acc_t>;
  const auto* rs = static_cast<const scalar_t*>(a.student);
  const auto* rt = static_cast<const scalar_t*>(a.teacher);
  BCKD_GRID_LOOP(i, n) {
    const LocIndex loc(a.ls, i);
    acc_t mx[4], sum[4], ds[4], dt[4], bs[4], bt[4];
    decode(rs + loc.offset(a.ls), a.ls.sc, a.nbins, mx, sum, ds);
    decode(rt + loc.offset(a.lt), a.lt.sc, a.nbins, mx, sum, dt);
    math::distances_to_box<M>(ds, bs);
    math::distances_to_box<M>(dt, bt);
    static_cast<acc_t*>(a.loss)[i] = math::giou_loss<M>(bs, bt, static_cast<acc_t>(a.eps));
  }
}

template <typename scalar_t>
__global__ void dfl_backward_kernel(const DflArgs a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = math::ScalarMath<acc_t>;
  const auto* rs = static_cast<const scalar_t*>(a.student);
  const auto* rt = static_cast<const scalar_t*>(a.teacher);
  const auto* coef = static_cast<const acc_t*>(a.coef);
  auto* grad = static_cast<scalar_t*>(a.grad);
  BCKD_GRID_LOOP(i, n) {
    const LocIndex loc(a.ls, i);
    acc_t mx[4], sum[4], mxt[4], sumt[4], ds[4], dt[4], bs[4], bt[4], gs[4], gt[4];
    const scalar_t* ps = rs + loc.offset(a.ls);
    decode(ps, a.ls.sc, a.nbins, mx, sum, ds);
    decode(rt + loc.offset(a.lt), a.lt.sc, a.nbins, mxt, sumt, dt);
    math::distances_to_box<M>(ds, bs);
    math::distances_to_box<M>(dt, bt);
    math::giou_grad<M>(bs, bt, static_cast<acc_t>(a.eps), coef[i], gs, gt);
    const acc_t gd[4] = {-gs[0], -gs[1], gs[2], gs[3]};  // box = (−l, −t, r, b)
    scalar_t* pg = grad + loc.offset(a.lg);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const acc_t inv = acc_t(1) / sum[e];
      for (int j = 0; j < a.nbins; ++j) {
        const int64_t c = static_cast<int64_t>(e) * a.nbins + j;
        const acc_t prob = M::exp_neg(static_cast<acc_t>(ps[c * a.ls.sc]) - mx[e]) * inv;
        pg[c * a.lg.sc] = static_cast<scalar_t>(gd[e] * prob * (static_cast<acc_t>(j) - ds[e]));
      }
    }
  }
}

}  // namespace

void giou_forward(const GiouArgs& a, cudaStream_t stream) {
  const int64_t n = a.lp.num_locations();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "giou_cuda", [&] {
    giou_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void giou_backward(const GiouArgs& a, cudaStream_t stream) {
  const int64_t n = a.lp.num_locations();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "giou_backward_cuda", [&] {
    giou_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void dfl_forward(const DflArgs& a, cudaStream_t stream) {
  const int64_t n = a.ls.num_locations();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "dfl_giou_cuda", [&] {
    dfl_forward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void dfl_backward(const DflArgs& a, cudaStream_t stream) {
  const int64_t n = a.ls.num_locations();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "dfl_giou_backward_cuda", [&] {
    dfl_backward_kernel<scalar_t><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace cuda
}  // namespace bckd
