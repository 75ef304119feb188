// Paired-box GIoU on the CPU (docs/method.md section 2): one box pair per
// lane, loss = 1 − GIoU and its gradient from bckd_math.h. Included once per
// instruction set (kernels_impl.h).
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

// The pred and target boxes of the n locations of a run.
template <typename acc_t, typename scalar_t>
void load_boxes(const BoxPair& a, int64_t b, int64_t h, int64_t w0, int64_t n, Vectorized<acc_t>* p,
                Vectorized<acc_t>* t) {
  const scalar_t* pp = static_cast<const scalar_t*>(a.pred) + offset(a.lp, b, h, w0);
  const scalar_t* pt = static_cast<const scalar_t*>(a.target) + offset(a.lt, b, h, w0);
  load_channels<acc_t>(pp, a.lp, n, 4, p);
  load_channels<acc_t>(pt, a.lt, n, 4, t);
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
        store_channels<acc_t>(gp, gpp, a.lgp, n, 4);
      }
      if (grad_target != nullptr) {
        scalar_t* gpt = grad_target + offset(a.lgt, b, h, w0);
        store_channels<acc_t>(gt, gpt, a.lgt, n, 4);
      }
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace bckd
