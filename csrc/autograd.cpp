// Autograd of the bckd operators, registered for the Autograd key as
// torchvision's csrc/ops/autograd does: the backward runs in C++ and calls the
// backward operators through the dispatcher (so CPU, CUDA, meta and fake
// tensors, torch.compile and opcheck all see the same kernels). A Python
// autograd registration costs tens of microseconds per call in
// torch/_library/autograd.py, more than the kernels themselves on small
// inputs.
//
// - bin_cls_distill: gradients to the student and to the weight; the teacher
//   is a constant and max_abs_diff has none. The weight's gradient (the
//   unweighted loss times the upstream gradient) costs one more forward pass,
//   taken only when the weight requires a gradient.
// - paired_giou: gradients to the boxes that need them; the backward
//   operator's output_mask keeps the other from being computed or written.
// - dfl_giou_distill: gradient to the student's regression logits only.
// The backward operators refuse a second derivative instead of returning a
// wrong one.
#include <ATen/ops/mul.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>
#include <tuple>

namespace bckd {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

template <class Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

// The kernels below autograd (CPU, CUDA, fake), for calls from inside an
// autograd function.
template <class Signature, class... Args>
auto call_below_autograd(const c10::TypedOperatorHandle<Signature>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

using BcdlSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const OptTensor&, double);
using BcdlBwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, double);
using GiouSig = at::Tensor(const at::Tensor&, const at::Tensor&, double);
using GiouBwdSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                      double, std::array<bool, 2>);
using DflSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double);
using DflBwdSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double);

// The operators' handles, looked up once.
struct Ops {
  c10::TypedOperatorHandle<BcdlSig> bcdl = find_op<BcdlSig>("bckd::bin_cls_distill");
  c10::TypedOperatorHandle<BcdlBwdSig> bcdl_backward = find_op<BcdlBwdSig>("bckd::_bin_cls_distill_backward");
  c10::TypedOperatorHandle<GiouSig> giou = find_op<GiouSig>("bckd::paired_giou");
  c10::TypedOperatorHandle<GiouBwdSig> giou_backward = find_op<GiouBwdSig>("bckd::_paired_giou_backward");
  c10::TypedOperatorHandle<DflSig> dfl = find_op<DflSig>("bckd::dfl_giou_distill");
  c10::TypedOperatorHandle<DflBwdSig> dfl_backward = find_op<DflBwdSig>("bckd::_dfl_giou_distill_backward");
};

const Ops& ops() {
  static const Ops handles;
  return handles;
}

OptTensor optional_of(const at::Tensor& t) { return t.defined() ? OptTensor(t) : OptTensor(); }

// ------------------------------------------------------------------ BCDL ----

struct BinClsDistill : torch::autograd::Function<BinClsDistill> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& student, const at::Tensor& teacher,
                               const OptTensor& weight, double beta) {
    auto [loss, max_abs_diff] = call_below_autograd(ops().bcdl, student, teacher, weight, beta);
    ctx->save_for_backward({student, teacher, weight.value_or(at::Tensor())});
    ctx->saved_data["beta"] = beta;
    ctx->saved_data["has_weight"] = weight.has_value();
    ctx->mark_non_differentiable({max_abs_diff});
    return {loss, max_abs_diff};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& student = saved[0];
    const at::Tensor& teacher = saved[1];
    const at::Tensor& weight = saved[2];
    const double beta = ctx->saved_data["beta"].toDouble();
    const at::Tensor& grad_loss = grads[0];
    at::Tensor grad_student, grad_weight;
    if (ctx->needs_input_grad(0)) {
      grad_student = ops().bcdl_backward.call(grad_loss, student, teacher, optional_of(weight), beta);
    }
    // needs_input_grad counts the tensors passed: the weight is the third
    // when there is one.
    if (ctx->saved_data["has_weight"].toBool() && ctx->needs_input_grad(2)) {
      const at::Tensor unweighted = std::get<0>(ops().bcdl.call(student.detach(), teacher, OptTensor(), beta));
      grad_weight = at::mul(grad_loss, unweighted).to(weight.scalar_type());
    }
    return {grad_student, at::Tensor(), grad_weight, at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> bin_cls_distill_autograd(const at::Tensor& student, const at::Tensor& teacher,
                                                            const OptTensor& weight, double beta) {
  const variable_list out = BinClsDistill::apply(student, teacher, weight, beta);
  return {out[0], out[1]};
}

// ------------------------------------------------------------------ GIoU ----

struct PairedGiou : torch::autograd::Function<PairedGiou> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& pred, const at::Tensor& target, double eps) {
    ctx->save_for_backward({pred, target});
    ctx->saved_data["eps"] = eps;
    return call_below_autograd(ops().giou, pred, target, eps);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const std::array<bool, 2> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
    if (!mask[0] && !mask[1]) return {at::Tensor(), at::Tensor(), at::Tensor()};
    const variable_list saved = ctx->get_saved_variables();
    auto [grad_pred, grad_target] =
        ops().giou_backward.call(grads[0], saved[0], saved[1], ctx->saved_data["eps"].toDouble(), mask);
    return {grad_pred, grad_target, at::Tensor()};
  }
};

at::Tensor paired_giou_autograd(const at::Tensor& pred, const at::Tensor& target, double eps) {
  return PairedGiou::apply(pred, target, eps);
}

// ------------------------------------------------------ DFL decode + GIoU ----

struct DflGiouDistill : torch::autograd::Function<DflGiouDistill> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& student_reg, const at::Tensor& teacher_reg,
                            int64_t reg_max, double eps) {
    ctx->save_for_backward({student_reg, teacher_reg});
    ctx->saved_data["reg_max"] = reg_max;
    ctx->saved_data["eps"] = eps;
    return call_below_autograd(ops().dfl, student_reg, teacher_reg, reg_max, eps);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad_student;
    if (ctx->needs_input_grad(0)) {
      const variable_list saved = ctx->get_saved_variables();
      grad_student = ops().dfl_backward.call(grads[0], saved[0], saved[1], ctx->saved_data["reg_max"].toInt(),
                                            ctx->saved_data["eps"].toDouble());
    }
    return {grad_student, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor dfl_giou_distill_autograd(const at::Tensor& student_reg, const at::Tensor& teacher_reg, int64_t reg_max,
                                     double eps) {
  return DflGiouDistill::apply(student_reg, teacher_reg, reg_max, eps);
}

// ------------------------------------------------------ backward operators ----

// Autograd of a backward operator: run() below autograd, with outputs whose
// own backward refuses. `inputs` are the tensors a second derivative would
// flow to. Undefined outputs (not asked for) are left out of the result.
struct NoDoubleBackward : torch::autograd::Function<NoDoubleBackward> {
  template <class Run, class... Inputs>
  static variable_list forward(AutogradContext* ctx, const char* name, const Run& run, const Inputs&...) {
    ctx->saved_data["name"] = std::string(name);
    at::AutoDispatchBelowADInplaceOrView guard;
    variable_list out;
    for (const at::Tensor& t : run()) {
      if (t.defined()) out.push_back(t);
    }
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK(false, "bckd: double backward of ", ctx->saved_data["name"].toStringRef(),
                " is not supported (its backward has no derivative)");
  }
};

at::Tensor bin_cls_distill_backward_autograd(const at::Tensor& grad_loss, const at::Tensor& student,
                                             const at::Tensor& teacher, const OptTensor& weight, double beta) {
  const auto run = [&] { return variable_list{ops().bcdl_backward.call(grad_loss, student, teacher, weight, beta)}; };
  return NoDoubleBackward::apply("bin_cls_distill", run, grad_loss, student, teacher, weight)[0];
}

std::tuple<at::Tensor, at::Tensor> paired_giou_backward_autograd(const at::Tensor& grad, const at::Tensor& pred,
                                                                 const at::Tensor& target, double eps,
                                                                 std::array<bool, 2> output_mask) {
  const auto run = [&] {
    auto [grad_pred, grad_target] = ops().giou_backward.call(grad, pred, target, eps, output_mask);
    return variable_list{grad_pred, grad_target};
  };
  const variable_list out = NoDoubleBackward::apply("paired_giou", run, grad, pred, target);
  size_t k = 0;
  at::Tensor grad_pred = output_mask[0] ? out[k++] : at::Tensor();
  at::Tensor grad_target = output_mask[1] ? out[k++] : at::Tensor();
  return {grad_pred, grad_target};
}

at::Tensor dfl_giou_distill_backward_autograd(const at::Tensor& grad, const at::Tensor& student_reg,
                                              const at::Tensor& teacher_reg, int64_t reg_max, double eps) {
  const auto run = [&] {
    return variable_list{ops().dfl_backward.call(grad, student_reg, teacher_reg, reg_max, eps)};
  };
  return NoDoubleBackward::apply("dfl_giou_distill", run, grad, student_reg, teacher_reg)[0];
}

}  // namespace
}  // namespace bckd

TORCH_LIBRARY_IMPL(bckd, Autograd, m) {
  m.impl("bin_cls_distill", &bckd::bin_cls_distill_autograd);
  m.impl("_bin_cls_distill_backward", &bckd::bin_cls_distill_backward_autograd);
  m.impl("paired_giou", &bckd::paired_giou_autograd);
  m.impl("_paired_giou_backward", &bckd::paired_giou_backward_autograd);
  m.impl("dfl_giou_distill", &bckd::dfl_giou_distill_autograd);
  m.impl("_dfl_giou_distill_backward", &bckd::dfl_giou_distill_backward_autograd);
}
