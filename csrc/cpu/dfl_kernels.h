// Fused DFL decode + GIoU on the CPU (docs/method.md section 2): each lane
// decodes one location's 4 edges × nbins logits of student and teacher into
// distances and boxes, loss = 1 − GIoU, and the backward chains its gradient
// through the student's softmax. Included once per instruction set
// (kernels_impl.h).
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>

#include "../bckd_math.h"
#include "../dispatch.h"
#include "channels.h"
#include "kernels.h"

namespace bckd {
namespace cpu {
namespace CPU_CAPABILITY {

constexpr int kMaxBins = kMaxRegMax + 1;

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
