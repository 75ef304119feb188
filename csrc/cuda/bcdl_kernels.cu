// BCDL on CUDA (SPEC 1). One thread per location walks the C classes: on a
// head map [B, C, H, W] neighbouring threads read neighbouring locations of
// one class plane, so every load is coalesced, and the sum and max over
// classes are a thread's own serial loop — deterministic, no atomics.
//   forward:  loss_i = w_i Σ_k |d|^β BCE(zs, q),  max_abs_diff_i = max_k |d|
//   backward: ∂/∂zs_ik = g_i w_i (|d|^β d + ∂|d|^β/∂d · p(1−p) · BCE)
// The per-element maths is bckd_math.h's, shared with the CPU kernels.
#include <ATen/Dispatch.h>

#include "common.cuh"
#include "kernels.h"

namespace bckd {
namespace cuda {
namespace {

template <typename scalar_t, int MODE>
__global__ void bcdl_forward_kernel(const BcdlArgs a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = math::ScalarMath<acc_t>;
  const auto* zs = static_cast<const scalar_t*>(a.student);
  const auto* zt = static_cast<const scalar_t*>(a.teacher);
  const auto* coef = static_cast<const acc_t*>(a.coef);
  const acc_t beta = static_cast<acc_t>(a.beta);
  BCKD_GRID_LOOP(i, n) {
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = zs + loc.offset(a.ls);
    const scalar_t* pt = zt + loc.offset(a.lt);
    acc_t sum = 0, mx = 0;
    for (int64_t k = 0; k < a.ls.C; ++k) {
      acc_t ad;
      sum += math::bcdl_loss<M, MODE>(static_cast<acc_t>(ps[k * a.ls.sc]),
                                      static_cast<acc_t>(pt[k * a.lt.sc]), beta, ad);
      mx = M::max(mx, ad);
    }
    if (coef != nullptr) sum *= coef[i];
    static_cast<acc_t*>(a.loss)[i] = sum;
    static_cast<acc_t*>(a.max_abs_diff)[i] = mx;
  }
}

template <typename scalar_t, int MODE>
__global__ void bcdl_backward_kernel(const BcdlArgs a, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  using M = math::ScalarMath<acc_t>;
  const auto* zs = static_cast<const scalar_t*>(a.student);
  const auto* zt = static_cast<const scalar_t*>(a.teacher);
  const auto* coef = static_cast<const acc_t*>(a.coef);
  auto* grad = static_cast<scalar_t*>(a.grad);
  const acc_t beta = static_cast<acc_t>(a.beta);
  BCKD_GRID_LOOP(i, n) {
    const LocIndex loc(a.ls, i);
    const scalar_t* ps = zs + loc.offset(a.ls);
    const scalar_t* pt = zt + loc.offset(a.lt);
    scalar_t* pg = grad + loc.offset(a.lg);
    const acc_t c = coef[i];
    for (int64_t k = 0; k < a.ls.C; ++k) {
      const acc_t g = math::bcdl_grad<M, MODE>(static_cast<acc_t>(ps[k * a.ls.sc]),
                                               static_cast<acc_t>(pt[k * a.lt.sc]), beta);
      pg[k * a.lg.sc] = static_cast<scalar_t>(g * c);
    }
  }
}

template <typename scalar_t, int MODE, bool FORWARD>
void launch_mode(const BcdlArgs& a, int64_t n, cudaStream_t stream) {
  if (FORWARD) {
    bcdl_forward_kernel<scalar_t, MODE><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
  } else {
    bcdl_backward_kernel<scalar_t, MODE><<<blocks_for(n), kThreads, 0, stream>>>(a, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool FORWARD>
void launch(const BcdlArgs& a, cudaStream_t stream) {
  const int64_t n = a.ls.num_locations();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, a.dtype, "bcdl_cuda", [&] {
    if (a.beta == 1.0) {
      launch_mode<scalar_t, 1, FORWARD>(a, n, stream);
    } else if (a.beta == 2.0) {
      launch_mode<scalar_t, 2, FORWARD>(a, n, stream);
    } else {
      launch_mode<scalar_t, 0, FORWARD>(a, n, stream);
    }
  });
}

}  // namespace

void bcdl_forward(const BcdlArgs& a, cudaStream_t stream) { launch<true>(a, stream); }
void bcdl_backward(const BcdlArgs& a, cudaStream_t stream) { launch<false>(a, stream); }

}  // namespace cuda
}  // namespace bckd
