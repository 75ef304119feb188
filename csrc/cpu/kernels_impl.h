// CPU kernel bodies. Included once per instruction set, with CPU_CAPABILITY
// naming the namespace (DEFAULT, AVX2) so that the copies never collide.
//
// One SIMD lane per location: a task takes Vec::size() neighbouring locations
// of one row of the layout and walks their channels, so sums and maxima over
// classes or bins are plain lane-wise operations (no horizontal reductions) and
// each location's result depends on its own inputs only, in a fixed order:
// bitwise deterministic whatever the number of threads. Unit-stride rows (head
// maps [B, C, H, W]) load directly; other strides gather into the lanes.
// One pass over the inputs per direction; the backward recomputes the forward
// pieces instead of saving anything of size [N, C].
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
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
#endif

template <typename acc_t>
struct VecMath {
  using T = Vectorized<acc_t>;
  using Scalar = acc_t;
  using Mask = Vectorized<acc_t>;
  static T exp_neg(const T& x) {
#if defined(CPU_CAPABILITY_AVX2)
    if constexpr (std::is_same_v<acc_t, float>) return fast_exp_neg(x);
#endif
    return x.exp();
  }
  static T log1p_unit(const T& x) {
#if defined(CPU_CAPABILITY_AVX2)
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

// Calls f(k, zs_k, zt_k) for every class k of the n locations of a run, with
// the student's and the teacher's logits of class k in the lanes.
template <typename acc_t, typename scalar_t, class F>
void for_each_class(const MapPair& a, int64_t b, int64_t h, int64_t w0, int64_t n, const F& f) {
  const scalar_t* ps = static_cast<const scalar_t*>(a.student) + offset(a.ls, b, h, w0);
  const scalar_t* pt = static_cast<const scalar_t*>(a.teacher) + offset(a.lt, b, h, w0);
  for (int64_t k = 0; k < a.ls.C; ++k) {
    f(k, load_lanes<acc_t>(ps + k * a.ls.sc, a.ls.sw, n), load_lanes<acc_t>(pt + k * a.lt.sc, a.lt.sw, n));
  }
}

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
    for_each_class<acc_t, scalar_t>(a, b, h, w0, n, [&](int64_t, const Vec& zs, const Vec& zt) {
      Vec ad;
      sum = sum + math::bcdl_loss<M, MODE>(zs, zt, beta, ad);
      mx = M::max(mx, ad);
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
    Vec c = load_lanes<acc_t>(grad_loss + o, 1, n);
    if (weight != nullptr) c = c * load_lanes<acc_t>(weight + o, 1, n);
    for_each_class<acc_t, scalar_t>(a, b, h, w0, n, [&](int64_t k, const Vec& zs, const Vec& zt) {
      store_lanes(math::bcdl_grad<M, MODE>(zs, zt, beta) * c, pg + k * a.lg.sc, a.lg.sw, n);
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
  for (int j = 0; j < 4; ++j) {
    p[j] = load_lanes<acc_t>(pp + j * a.lp.sc, a.lp.sw, n);
    t[j] = load_lanes<acc_t>(pt + j * a.lt.sc, a.lt.sw, n);
  }
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
        for (int j = 0; j < 4; ++j) store_lanes(gp[j], gpp + j * a.lgp.sc, a.lgp.sw, n);
      }
      if (grad_target != nullptr) {
        scalar_t* gpt = grad_target + offset(a.lgt, b, h, w0);
        for (int j = 0; j < 4; ++j) store_lanes(gt[j], gpt + j * a.lgt.sc, a.lgt.sw, n);
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
  for (int e = 0; e < 4; ++e) {
    Vec* eb = bins + e * nbins;
    for (int j = 0; j < nbins; ++j) {
      eb[j] = load_lanes<acc_t>(base + (e * nbins + j) * l.sc, l.sw, n);
    }
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
      scalar_t* pg = grad + offset(a.lg, b, h, w0);
      for (int e = 0; e < 4; ++e) {
        const Vec inv = Vec(1) / sum[e];
        for (int j = 0; j < nb; ++j) {
          const Vec prob = bins[e * nb + j] * inv;
          store_lanes(gd[e] * prob * (Vec(static_cast<acc_t>(j)) - ds[e]),
                      pg + (e * nb + j) * a.lg.sc, a.lg.sw, n);
        }
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bckd
