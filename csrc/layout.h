// Host-side argument checks and the location layout shared by the CPU and CUDA
// wrappers. Every refusal is a ValueError naming the operator and the argument,
// as bckd_kernels/_contract.py words it for the Python side.
//
// Every op reads per-location rows of "channels" (classes, or 4·(reg_max + 1)
// regression bins) either from an [N, C] matrix or from a head map
// [B, C, H, W], in place, whatever the strides. Both become
//   element(b, h, w, c) = base + b·sb + h·sh + w·sw + c·sc,
// with H merged into W whenever the strides allow it (contiguous and
// channels-last maps), so that kernels walk long runs of locations.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <vector>

namespace bckd {

struct LocLayout {
  int64_t B = 1, H = 1, W = 0, C = 0;
  int64_t sb = 0, sh = 0, sw = 0, sc = 0;
  int64_t num_locations() const { return B * H * W; }
};

// H and W merge into one run of H·W locations when w's stride steps over h.
inline bool can_merge_hw(const at::Tensor& x) {
  return x.dim() == 4 && (x.size(2) == 1 || x.size(3) == 1 || x.stride(2) == x.size(3) * x.stride(3));
}

// Layouts of tensors of one shape. All get the same (B, H, W) split, merged
// only when every one of them allows it.
inline std::vector<LocLayout> make_layouts(std::initializer_list<const at::Tensor*> xs) {
  bool merge = true;
  for (const at::Tensor* x : xs) merge = merge && can_merge_hw(*x);
  std::vector<LocLayout> out;
  for (const at::Tensor* x : xs) {
    LocLayout l;
    if (x->dim() == 2) {
      l.W = x->size(0);
      l.C = x->size(1);
      l.sw = x->stride(0);
      l.sc = x->stride(1);
    } else {
      l.B = x->size(0);
      l.C = x->size(1);
      l.sb = x->stride(0);
      l.sc = x->stride(1);
      if (merge && x->size(3) == 1) {
        l.W = x->size(2);
        l.sw = x->stride(2);
      } else if (merge) {
        l.W = x->size(2) * x->size(3);
        l.sw = x->stride(3);
      } else {
        l.H = x->size(2);
        l.W = x->size(3);
        l.sh = x->stride(2);
        l.sw = x->stride(3);
      }
    }
    out.push_back(l);
  }
  return out;
}

// Shape of the per-location output: [N] or [B, H, W].
inline std::vector<int64_t> location_shape(const at::Tensor& x) {
  if (x.dim() == 2) return {x.size(0)};
  return {x.size(0), x.size(2), x.size(3)};
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// Per-location outputs are float32, float64 for float64 inputs.
inline at::ScalarType loss_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks a pair of per-location-row inputs (student/teacher logits).
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

}  // namespace bckd
