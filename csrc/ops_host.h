// The operators' host side, shared by every device: argument checks, output
// allocation and the kernel arguments. `Backend` runs the kernels of one
// device (CpuBackend in cpu/ops_cpu.cpp, CudaBackend in cuda/ops_cuda.cpp).
//
// Every refusal is a ValueError naming the operator and the argument, as
// bckd_kernels/_contract.py words it for the Python side.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <array>
#include <cmath>
#include <tuple>

#include "args.h"
#include "layout.h"

namespace bckd {

// --------------------------------------------------------------- checks ----

// The input dtypes (dispatch.h's BCKD_DISPATCH_FLOATING_TYPES).
inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// A pair of per-location-row inputs (student/teacher logits, pred/target
// boxes): same shape, dtype and device.
inline void check_pair(const char* op, const at::Tensor& s, const char* s_name,
                       const at::Tensor& t, const char* t_name) {
  TORCH_CHECK_VALUE(s.dim() == 2 || s.dim() == 4, op, ": ", s_name,
              " must be [N, C] or [B, C, H, W], got shape ", s.sizes());
  TORCH_CHECK_VALUE(is_supported_float(s.scalar_type()), op, ": ", s_name,
              " must be float32, float16, bfloat16 or float64, got ", s.scalar_type());
  TORCH_CHECK_VALUE(t.sizes() == s.sizes(), op, ": ", t_name, " shape ", t.sizes(),
              " must equal ", s_name, " shape ", s.sizes());
  TORCH_CHECK_VALUE(t.scalar_type() == s.scalar_type(), op, ": ", t_name, " dtype ",
              t.scalar_type(), " must equal ", s_name, " dtype ", s.scalar_type());
  TORCH_CHECK_VALUE(t.device() == s.device(), op, ": ", t_name, " is on ", t.device(),
              " but ", s_name, " is on ", s.device());
}

// A per-location tensor (weight, upstream gradient) as a contiguous float
// vector of the accumulation dtype. Copies only when it has to (a few bytes
// per location, never [N, C]).
inline at::Tensor per_location(const char* op, const at::Tensor& v, const char* name,
                               const at::Tensor& like, at::ScalarType dtype) {
  const auto shape = location_shape(like);
  TORCH_CHECK_VALUE(v.sizes() == at::IntArrayRef(shape), op, ": ", name, " must have shape ",
              at::IntArrayRef(shape), " (one value per location), got ", v.sizes());
  TORCH_CHECK_VALUE(v.device() == like.device(), op, ": ", name, " is on ", v.device(),
              " but the inputs are on ", like.device());
  TORCH_CHECK_VALUE(at::isFloatingType(v.scalar_type()) || v.scalar_type() == at::kBool, op,
              ": ", name, " must be a floating point or bool tensor, got ", v.scalar_type());
  return v.to(dtype).contiguous();
}

// β and eps: finite and positive (an infinite β gives NaN gradients, an
// infinite eps NaN losses).
inline void check_positive(const char* op, double value, const char* name) {
  TORCH_CHECK_VALUE(std::isfinite(value) && value > 0.0, op, ": ", name, " must be finite and > 0, got ",
                    value);
}

// ---------------------------------------------------------- kernel args ----

// The input fields every op's arguments share.
inline MapPair map_pair(const at::Tensor& student, const at::Tensor& teacher,
                        const std::vector<LocLayout>& l) {
  return {student.scalar_type(), student.const_data_ptr(), teacher.const_data_ptr(), l[0], l[1]};
}

inline BoxPair box_pair(const at::Tensor& pred, const at::Tensor& target,
                        const std::vector<LocLayout>& l) {
  return {pred.scalar_type(), pred.const_data_ptr(), target.const_data_ptr(), l[0], l[1]};
}

// ------------------------------------------------------------------ BCDL ----

inline void check_bcdl(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                       double beta) {
  check_pair(op, student, "student", teacher, "teacher");
  check_positive(op, beta, "beta");
}

template <class Backend>
std::tuple<at::Tensor, at::Tensor> bin_cls_distill(const at::Tensor& student,
                                                   const at::Tensor& teacher,
                                                   const c10::optional<at::Tensor>& weight,
                                                   double beta) {
  const char* op = "bin_cls_distill";
  check_bcdl(op, student, teacher, beta);
  const auto acc = loss_dtype(student.scalar_type());
  at::Tensor w;
  if (weight.has_value()) w = per_location(op, *weight, "weight", student, acc);
  at::Tensor loss = new_per_location(student);
  at::Tensor mad = new_per_location(student);
  if (loss.numel() == 0) return {loss, mad};
  const BcdlFwdArgs a{map_pair(student, teacher, make_layouts({&student, &teacher})), beta,
                      w.defined() ? w.const_data_ptr() : nullptr, loss.mutable_data_ptr(),
                      mad.mutable_data_ptr()};
  Backend::bcdl_forward(student, a);
  return {loss, mad};
}

template <class Backend>
at::Tensor bin_cls_distill_backward(const at::Tensor& grad_loss, const at::Tensor& student,
                                    const at::Tensor& teacher,
                                    const c10::optional<at::Tensor>& weight, double beta) {
  const char* op = "_bin_cls_distill_backward";
  check_bcdl(op, student, teacher, beta);
  const auto acc = loss_dtype(student.scalar_type());
  const at::Tensor g = per_location(op, grad_loss, "grad_loss", student, acc);
  at::Tensor w;
  if (weight.has_value()) w = per_location(op, *weight, "weight", student, acc);
  at::Tensor grad = at::empty_like(student);
  if (grad.numel() == 0) return grad;
  const auto l = make_layouts({&student, &teacher, &grad});
  const BcdlBwdArgs a{map_pair(student, teacher, l), beta, g.const_data_ptr(),
                      w.defined() ? w.const_data_ptr() : nullptr,
                      grad.mutable_data_ptr(), l[2]};
  Backend::bcdl_backward(student, a);
  return grad;
}

// ------------------------------------------------------------------ GIoU ----

inline void check_boxes(const char* op, const at::Tensor& pred, const at::Tensor& target,
                        double eps) {
  TORCH_CHECK_VALUE(pred.dim() == 2 && pred.size(1) == 4, op,
              ": pred must be [N, 4] boxes (x1, y1, x2, y2), got shape ", pred.sizes());
  check_pair(op, pred, "pred", target, "target");
  check_positive(op, eps, "eps");
}

template <class Backend>
at::Tensor paired_giou(const at::Tensor& pred, const at::Tensor& target, double eps) {
  check_boxes("paired_giou", pred, target, eps);
  at::Tensor loss = new_per_location(pred);
  if (loss.numel() == 0) return loss;
  const GiouFwdArgs a{box_pair(pred, target, make_layouts({&pred, &target})), eps,
                      loss.mutable_data_ptr()};
  Backend::giou_forward(pred, a);
  return loss;
}

// output_mask: which of (grad_pred, grad_target) to compute; the others are
// returned undefined (None in Python), the way ATen's backward ops do.
template <class Backend>
std::tuple<at::Tensor, at::Tensor> paired_giou_backward(const at::Tensor& grad,
                                                        const at::Tensor& pred,
                                                        const at::Tensor& target, double eps,
                                                        std::array<bool, 2> output_mask) {
  const char* op = "_paired_giou_backward";
  check_boxes(op, pred, target, eps);
  const at::Tensor grad_loss = per_location(op, grad, "grad", pred, loss_dtype(pred.scalar_type()));
  at::Tensor grad_pred, grad_target;
  if (output_mask[0]) grad_pred = at::empty_like(pred);
  if (output_mask[1]) grad_target = at::empty_like(target);
  if (pred.size(0) == 0 || !(output_mask[0] || output_mask[1])) return {grad_pred, grad_target};
  // Boxes are [N, 4]: each tensor's layout is its own.
  const auto layout = [](const at::Tensor& x) { return x.defined() ? make_layouts({&x})[0] : LocLayout{}; };
  const GiouBwdArgs a{box_pair(pred, target, make_layouts({&pred, &target})), eps, grad_loss.const_data_ptr(),
                      grad_pred.defined() ? grad_pred.mutable_data_ptr() : nullptr,
                      grad_target.defined() ? grad_target.mutable_data_ptr() : nullptr, layout(grad_pred),
                      layout(grad_target)};
  Backend::giou_backward(pred, a);
  return {grad_pred, grad_target};
}

// ------------------------------------------------------ DFL decode + GIoU ----

inline void check_dfl(const char* op, const at::Tensor& student, const at::Tensor& teacher,
                      int64_t reg_max, double eps) {
  check_pair(op, student, "student_reg", teacher, "teacher_reg");
  TORCH_CHECK_VALUE(reg_max >= 1 && reg_max <= kMaxRegMax, op, ": reg_max must be in [1, ",
              kMaxRegMax, "], got ", reg_max);
  TORCH_CHECK_VALUE(student.size(1) == 4 * (reg_max + 1), op, ": student_reg must have 4 * (reg_max + 1) = ",
              4 * (reg_max + 1), " channels in dimension 1 for reg_max = ", reg_max, ", got shape ",
              student.sizes());
  check_positive(op, eps, "eps");
}

template <class Backend>
at::Tensor dfl_giou_distill(const at::Tensor& student, const at::Tensor& teacher, int64_t reg_max,
                            double eps) {
  check_dfl("dfl_giou_distill", student, teacher, reg_max, eps);
  at::Tensor loss = new_per_location(student);
  if (loss.numel() == 0) return loss;
  const DflFwdArgs a{map_pair(student, teacher, make_layouts({&student, &teacher})),
                     static_cast<int>(reg_max + 1), eps, loss.mutable_data_ptr()};
  Backend::dfl_forward(student, a);
  return loss;
}

template <class Backend>
at::Tensor dfl_giou_distill_backward(const at::Tensor& grad, const at::Tensor& student,
                                     const at::Tensor& teacher, int64_t reg_max, double eps) {
  const char* op = "_dfl_giou_distill_backward";
  check_dfl(op, student, teacher, reg_max, eps);
  const at::Tensor grad_loss =
      per_location(op, grad, "grad", student, loss_dtype(student.scalar_type()));
  at::Tensor grad_student = at::empty_like(student);
  if (grad_student.numel() == 0) return grad_student;
  const auto l = make_layouts({&student, &teacher, &grad_student});
  const DflBwdArgs a{map_pair(student, teacher, l), static_cast<int>(reg_max + 1), eps,
                     grad_loss.const_data_ptr(), grad_student.mutable_data_ptr(), l[2]};
  Backend::dfl_backward(student, a);
  return grad_student;
}

}  // namespace bckd

// Registers every operator's kernel for one dispatch key.
#define BCKD_REGISTER_KERNELS(m, Backend)                                               \
  do {                                                                                  \
    m.impl("bin_cls_distill", &bckd::bin_cls_distill<Backend>);                         \
    m.impl("_bin_cls_distill_backward", &bckd::bin_cls_distill_backward<Backend>);      \
    m.impl("paired_giou", &bckd::paired_giou<Backend>);                                 \
    m.impl("_paired_giou_backward", &bckd::paired_giou_backward<Backend>);              \
    m.impl("dfl_giou_distill", &bckd::dfl_giou_distill<Backend>);                       \
    m.impl("_dfl_giou_distill_backward", &bckd::dfl_giou_distill_backward<Backend>);    \
  } while (0)
