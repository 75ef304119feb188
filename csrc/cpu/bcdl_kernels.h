// BCDL on the CPU (docs/method.md section 1), per location over its C
// classes: the loss, its max |p − q| and the gradient, from bckd_math.h.
// Included once per instruction set (kernels_impl.h).
#pragma once

#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../bckd_math.h"
#include "../dispatch.h"
#include "channels.h"
#include "kernels.h"

namespace bckd {
namespace cpu {
namespace CPU_CAPABILITY {

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
      if (channels_contiguous(a.ls) && channels_contiguous(a.lt)) {
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
      if (channels_contiguous(a.ls) && channels_contiguous(a.lt) && channels_contiguous(a.lg)) {
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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bckd
