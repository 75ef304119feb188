// Per-element maths of every bckd op, written once and shared by the CPU and
// the CUDA kernels.
//
// Each function is a template over a "math policy" M that supplies the value
// type M::T and its primitive operations. exp_neg(x) is exp for x ≤ 0 and
// log1p_unit(x) is log1p for x in [0, 1]: every exp and log1p here has such
// an argument, which lets a policy use short, range-free approximations. The
// CUDA kernels use DeviceMath (cuda/common.cuh): FastMath, the special-function
// unit's approximations over ScalarMath<float>, for float32 accumulation and
// ScalarMath<double> for float64; paired GIoU, which has no exp or log1p, uses
// ScalarMath. The CPU kernels instantiate the same functions with VecMath
// (cpu/simd.h), a policy over at::vec::Vectorized, one lane per location.
// Comparisons return M::Mask; M::select(mask, a, b) picks a where the mask
// holds.
//
// Conventions follow docs/method.md (sections 1 and 2).
#pragma once

#include <cmath>
#include <type_traits>
#include <utility>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define BCKD_HD __host__ __device__ __forceinline__
#else
#define BCKD_HD inline
#endif

namespace bckd {
namespace math {

// Unqualified ::exp, ::log1p, ::pow and ::fabs pick the float overloads for
// float (C++ <cmath> on the host, CUDA's math functions on the device).
template <typename scalar_t>
struct ScalarMath {
  using T = scalar_t;
  using Scalar = scalar_t;  // the element type of T
  using Mask = bool;
  static BCKD_HD T exp_neg(T x) { return ::exp(x); }
  static BCKD_HD T log1p_unit(T x) { return ::log1p(x); }
  static BCKD_HD T pow(T x, T y) { return ::pow(x, y); }
  static BCKD_HD T abs(T x) { return ::fabs(x); }
  // NaN-propagating, like torch.maximum / torch.minimum and Vectorized.
  static BCKD_HD T max(T a, T b) { return (a > b || a != a) ? a : b; }
  static BCKD_HD T min(T a, T b) { return (a < b || a != a) ? a : b; }
  static BCKD_HD Mask gt(T a, T b) { return a > b; }
  static BCKD_HD Mask ge(T a, T b) { return a >= b; }
  static BCKD_HD Mask lt(T a, T b) { return a < b; }
  static BCKD_HD Mask eq(T a, T b) { return a == b; }
  static BCKD_HD T select(Mask m, T a, T b) { return m ? a : b; }
};


// 1/x for x in [1, 3]. A policy may supply rcp_unit, a reciprocal valid on
// that range only (the CUDA float32 policy: one special-function
// instruction instead of an IEEE division); otherwise a plain division.
template <class M, class = void>
struct HasRcpUnit : std::false_type {};
template <class M>
struct HasRcpUnit<M, std::void_t<decltype(M::rcp_unit(std::declval<typename M::T>()))>>
    : std::true_type {};

template <class M>
BCKD_HD typename M::T rcp_unit(typename M::T x) {
  if constexpr (HasRcpUnit<M>::value) {
    return M::rcp_unit(x);
  } else {
    return typename M::T(1) / x;
  }
}

// ---------------------------------------------------------------------------
// BCDL (docs/method.md section 1). For one element, with p = σ(zs), q = σ(zt), d = p − q:
//   ℓ = |d|^β · BCE(zs, q),  BCE(z, q) = softplus(z) − q·z
//   ∂ℓ/∂zs = |d|^β · d + ∂|d|^β/∂d · p(1−p) · BCE
// σ, p(1−p) and softplus all come from one e = exp(−|z|):
//   σ(z) = 1/(1+e) for z ≥ 0, e/(1+e) otherwise; p(1−p) = e/(1+e)²;
//   softplus(z) = max(z, 0) + log1p(e).
// The modulating factor is not detached. Its derivative is 0 where d = 0
// (sgn(0) = 0), so the gradient vanishes exactly where p = q.
// BETA_MODE: 1 for β = 1, 2 for β = 2 (no pow), 0 for any other β; kernels
// pick it with dispatch.h's with_beta_mode.
// For β < 1 the derivative β|d|^(β−1) grows without bound as d → 0, so the
// gradient there is only as good as d's relative error, which p − q loses to
// cancellation when zs ≈ zt. The general mode therefore computes d without
// cancelling: with δ = zs − zt, σ(zs)/σ(−zs) = e^zs gives
//   d = p(1−q)·(1 − e^(−δ)) for δ ≥ 0,   d = −q(1−p)·(1 − e^(δ)) for δ < 0,
// and 1 − e^(−a), a = |δ| < 0.35, is its Taylor series to a⁸ (relative error
// below 1e-9); for larger |δ|, p − q has no cancellation worth the cost. In
// float64 the direct difference keeps ample digits and is kept.
// ---------------------------------------------------------------------------

template <class M>
struct BcdlPieces {
  typename M::T d;    // p − q
  typename M::T pp;   // p(1 − p)
  typename M::T bce;  // BCE(zs, q)
};

// 1 − e^(−a) for 0 ≤ a < 0.35: a(1 − a/2(1 − a/3(⋯(1 − a/8)))).
template <class M>
BCKD_HD typename M::T one_minus_exp_neg_small(typename M::T a) {
  using T = typename M::T;
  const T one(1);
  T r = one - a * T(1.0 / 8);
  r = one - a * T(1.0 / 7) * r;
  r = one - a * T(1.0 / 6) * r;
  r = one - a * T(1.0 / 5) * r;
  r = one - a * T(1.0 / 4) * r;
  r = one - a * T(1.0 / 3) * r;
  r = one - a * T(1.0 / 2) * r;
  return a * r;
}

template <class M, int BETA_MODE>
BCKD_HD BcdlPieces<M> bcdl_pieces(typename M::T zs, typename M::T zt) {
  using T = typename M::T;
  const T one(1), zero(0);
  const T es = M::exp_neg(-M::abs(zs));
  const T rs = rcp_unit<M>(one + es);
  const auto zs_pos = M::ge(zs, zero);
  const T p = M::select(zs_pos, rs, es * rs);
  const T et = M::exp_neg(-M::abs(zt));
  const T rt = rcp_unit<M>(one + et);
  const auto zt_pos = M::ge(zt, zero);
  const T q = M::select(zt_pos, rt, et * rt);
  const T softplus = M::max(zs, zero) + M::log1p_unit(es);
  T d = p - q;
  if (BETA_MODE == 0 && sizeof(typename M::Scalar) == 4) {
    const T delta = zs - zt;
    const T a = M::abs(delta);
    const T one_minus_p = M::select(zs_pos, es * rs, rs);
    const T one_minus_q = M::select(zt_pos, et * rt, rt);
    const T scale = M::select(M::ge(delta, zero), p * one_minus_q, zero - q * one_minus_p);
    d = M::select(M::lt(a, T(0.35)), scale * one_minus_exp_neg_small<M>(a), d);
  }
  return {d, es * rs * rs, softplus - q * zs};
}

// |d|^β and its derivative with respect to d.
template <class M, int BETA_MODE>
BCKD_HD void bcdl_modulator(typename M::T d, typename M::T beta,
                            typename M::T& mod, typename M::T& dmod) {
  using T = typename M::T;
  const T zero(0);
  const T ad = M::abs(d);
  if (BETA_MODE == 1) {
    mod = ad;
    dmod = M::select(M::gt(d, zero), T(1), M::select(M::lt(d, zero), T(-1), zero));
  } else if (BETA_MODE == 2) {
    mod = d * d;
    dmod = T(2) * d;
  } else {
    mod = M::pow(ad, beta);
    // β |d|^(β−1) sgn(d) = β |d|^β / d, and 0 at d = 0.
    const T safe_d = M::select(M::eq(d, zero), T(1), d);
    dmod = M::select(M::eq(d, zero), zero, beta * mod / safe_d);
  }
}

// The loss of one element is mod · bce; |d| is returned for the max_abs_diff
// side output. A kernel that must add the product where another does (so that
// a compiler contracting the two into one FMA does so in both) takes the factors.
template <class M, int BETA_MODE>
BCKD_HD void bcdl_loss_factors(typename M::T zs, typename M::T zt, typename M::T beta,
                               typename M::T& mod, typename M::T& bce, typename M::T& abs_d) {
  const BcdlPieces<M> e = bcdl_pieces<M, BETA_MODE>(zs, zt);
  typename M::T dmod;
  bcdl_modulator<M, BETA_MODE>(e.d, beta, mod, dmod);
  bce = e.bce;
  abs_d = M::abs(e.d);
}

template <class M, int BETA_MODE>
BCKD_HD typename M::T bcdl_loss(typename M::T zs, typename M::T zt,
                                typename M::T beta, typename M::T& abs_d) {
  typename M::T mod, bce;
  bcdl_loss_factors<M, BETA_MODE>(zs, zt, beta, mod, bce, abs_d);
  return mod * bce;
}

// ∂ℓ/∂zs of one element.
template <class M, int BETA_MODE>
BCKD_HD typename M::T bcdl_grad(typename M::T zs, typename M::T zt,
                                typename M::T beta) {
  using T = typename M::T;
  const BcdlPieces<M> e = bcdl_pieces<M, BETA_MODE>(zs, zt);
  T mod, dmod;
  bcdl_modulator<M, BETA_MODE>(e.d, beta, mod, dmod);
  return mod * e.d + dmod * e.pp * e.bce;
}

// ---------------------------------------------------------------------------
// GIoU (docs/method.md section 2), boxes (x1, y1, x2, y2), reference-code conventions:
//   I = max(0, iw) · max(0, ih),  iw = min(x2, X2) − max(x1, X1)
//   U = max(A_p + A_t − I, eps),  E = max(max(0, ew) · max(0, eh), eps)
//   loss = 1 − GIoU = 1 − I/U + (E − U)/E
// Areas are (x2 − x1)(y2 − y1) without a clamp, as in the reference code, so an
// inverted box has a negative area; every quotient has a denominator ≥ eps, so
// finite boxes give a finite loss (I = 0 whenever either box is inverted).
// Gradient, U and E unclamped:
//   ∂/∂I = −1/U − I/U² + 1/E,  ∂/∂A = I/U² − 1/E,  ∂/∂E = U/E²
// then through min/max (ties split ½–½, as torch.minimum/maximum do), through
// max(0, ·) and the eps clamps (no gradient at the bound itself, as
// torch.clamp) and through the areas.
// ---------------------------------------------------------------------------

template <class M>
BCKD_HD typename M::T giou_loss(const typename M::T* p, const typename M::T* t,
                                typename M::T eps) {
  using T = typename M::T;
  const T zero(0);
  const T iw = M::min(p[2], t[2]) - M::max(p[0], t[0]);
  const T ih = M::min(p[3], t[3]) - M::max(p[1], t[1]);
  const T inter = M::max(iw, zero) * M::max(ih, zero);
  const T ap = (p[2] - p[0]) * (p[3] - p[1]);
  const T at = (t[2] - t[0]) * (t[3] - t[1]);
  const T uni = M::max(ap + at - inter, eps);
  const T ew = M::max(p[2], t[2]) - M::min(p[0], t[0]);
  const T eh = M::max(p[3], t[3]) - M::min(p[1], t[1]);
  const T enc = M::max(M::max(ew, zero) * M::max(eh, zero), eps);
  return T(1) - inter / uni + (enc - uni) / enc;
}

// ∂ min(a, b)/∂a with ties split evenly (∂ max(a, b)/∂a is the same with a, b
// swapped).
template <class M>
BCKD_HD typename M::T d_min_a(typename M::T a, typename M::T b) {
  using T = typename M::T;
  return M::select(M::lt(a, b), T(1), M::select(M::eq(a, b), T(0.5), T(0)));
}

// Writes g · ∂loss/∂p into gp[4] if want_p and g · ∂loss/∂t into gt[4] if
// want_t; a gradient nobody asked for is not computed.
template <class M>
BCKD_HD void giou_grad(const typename M::T* p, const typename M::T* t,
                       typename M::T eps, typename M::T g, typename M::T* gp,
                       typename M::T* gt, bool want_p, bool want_t) {
  using T = typename M::T;
  const T zero(0);
  const T ix2 = M::min(p[2], t[2]), ix1 = M::max(p[0], t[0]);
  const T iy2 = M::min(p[3], t[3]), iy1 = M::max(p[1], t[1]);
  const T iw = ix2 - ix1, ih = iy2 - iy1;
  const T iwc = M::max(iw, zero), ihc = M::max(ih, zero);
  const T inter = iwc * ihc;
  const T pw = p[2] - p[0], ph = p[3] - p[1];
  const T tw = t[2] - t[0], th = t[3] - t[1];
  const T uraw = pw * ph + tw * th - inter;
  const T uni = M::max(uraw, eps);
  const T ex2 = M::max(p[2], t[2]), ex1 = M::min(p[0], t[0]);
  const T ey2 = M::max(p[3], t[3]), ey1 = M::min(p[1], t[1]);
  const T ew = ex2 - ex1, eh = ey2 - ey1;
  const T ewc = M::max(ew, zero), ehc = M::max(eh, zero);
  const T eraw = ewc * ehc;
  const T enc = M::max(eraw, eps);

  // loss = 1 − I/U + 1 − U/E as a function of (I, U, E). Quotients are taken
  // one at a time ((I/U)/U, not I/(U·U)), so that coordinates near the square
  // root of the largest float do not overflow; dead branches are selected away,
  // never multiplied by 0, so that an infinite or 0/0 term there cannot make NaN.
  const T g_u = M::select(M::gt(uraw, eps), g * (inter / uni / uni - T(1) / enc), zero);  // ∂/∂(A_p + A_t − I)
  const T g_i = -g / uni - g_u;                                                        // direct + through U
  const T g_e = M::select(M::gt(eraw, eps), g * (uni / enc / enc), zero);

  // Through max(0, ·) of the intersection and enclosure sides.
  const T g_iw = M::select(M::gt(iw, zero), g_i * ihc, zero);
  const T g_ih = M::select(M::gt(ih, zero), g_i * iwc, zero);
  const T g_ew = M::select(M::gt(ew, zero), g_e * ehc, zero);
  const T g_eh = M::select(M::gt(eh, zero), g_e * ewc, zero);

  // x2: +iw through min(p2, t2), +ew through max(p2, t2); x1: −iw through
  // max(p0, t0), −ew through min(p0, t0); and the box's own area.
  if (want_p) {
    gp[0] = -g_iw * d_min_a<M>(t[0], p[0]) - g_ew * d_min_a<M>(p[0], t[0]) - g_u * ph;
    gp[1] = -g_ih * d_min_a<M>(t[1], p[1]) - g_eh * d_min_a<M>(p[1], t[1]) - g_u * pw;
    gp[2] = g_iw * d_min_a<M>(p[2], t[2]) + g_ew * d_min_a<M>(t[2], p[2]) + g_u * ph;
    gp[3] = g_ih * d_min_a<M>(p[3], t[3]) + g_eh * d_min_a<M>(t[3], p[3]) + g_u * pw;
  }
  if (want_t) {
    gt[0] = -g_iw * d_min_a<M>(p[0], t[0]) - g_ew * d_min_a<M>(t[0], p[0]) - g_u * th;
    gt[1] = -g_ih * d_min_a<M>(p[1], t[1]) - g_eh * d_min_a<M>(t[1], p[1]) - g_u * tw;
    gt[2] = g_iw * d_min_a<M>(t[2], p[2]) + g_ew * d_min_a<M>(p[2], t[2]) + g_u * th;
    gt[3] = g_ih * d_min_a<M>(t[3], p[3]) + g_eh * d_min_a<M>(p[3], t[3]) + g_u * tw;
  }
}

// Boxes of two distance vectors (l, t, r, b) around one anchor point, taken as
// the origin: the anchor cancels in every difference, so it is not an input.
template <class M>
BCKD_HD void distances_to_box(const typename M::T* dist, typename M::T* box) {
  box[0] = -dist[0];
  box[1] = -dist[1];
  box[2] = dist[2];
  box[3] = dist[3];
}

// ---------------------------------------------------------------------------
// Softmax integral (docs/method.md section 2): dist = Σ_j j · softmax(r)_j over reg_max + 1 bins
// read through `load(j)`. Max-subtracted, so any finite logits are safe.
// `keep(j, e)` receives each e_j = exp(r_j − max) (P_j = e_j / sum), so that a
// backward can reuse them instead of computing the exponentials again.
//   ∂dist/∂r_j = P_j · (j − dist)
// ---------------------------------------------------------------------------

struct DiscardExp {
  template <class T>
  BCKD_HD void operator()(int, const T&) const {}
};

template <class M, class Load, class Keep = DiscardExp>
BCKD_HD void softmax_integral(Load load, int nbins, typename M::T& mx, typename M::T& sum,
                              typename M::T& dist, Keep keep = Keep()) {
  using T = typename M::T;
  mx = load(0);
  for (int j = 1; j < nbins; ++j) mx = M::max(mx, load(j));
  T s(0), sj(0);
  for (int j = 0; j < nbins; ++j) {
    const T e = M::exp_neg(load(j) - mx);
    keep(j, e);
    s = s + e;
    sj = sj + T(j) * e;
  }
  sum = s;
  dist = sj / s;
}

}  // namespace math
}  // namespace bckd
