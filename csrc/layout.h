// The location layout shared by the CPU and CUDA wrappers, and the rule for
// per-location outputs (shape and dtype).
//
// Every op reads per-location rows of "channels" (classes, or 4·(reg_max + 1)
// regression bins) either from an [N, C] matrix or from a head map
// [B, C, H, W], in place, whatever the strides. Both become
//   element(b, h, w, c) = base + b·sb + h·sh + w·sw + c·sc,
// with H merged into W whenever the strides allow it (nchw and
// channels_last maps), so that kernels walk long runs of locations.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

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

// The layout of rows x: [N, C] is one run of N locations.
inline LocLayout make_layout(const at::Tensor& x, bool merge_hw) {
  LocLayout l;
  l.C = x.size(1);
  l.sc = x.stride(1);
  if (x.dim() == 2) {
    l.W = x.size(0);
    l.sw = x.stride(0);
    return l;
  }
  l.B = x.size(0);
  l.sb = x.stride(0);
  if (merge_hw) {
    l.W = x.size(2) * x.size(3);
    l.sw = x.size(3) == 1 ? x.stride(2) : x.stride(3);
  } else {
    l.H = x.size(2);
    l.W = x.size(3);
    l.sh = x.stride(2);
    l.sw = x.stride(3);
  }
  return l;
}

// Layouts of tensors of one shape. All get the same (B, H, W) split, merged
// only when every one of them allows it.
inline std::vector<LocLayout> make_layouts(std::initializer_list<const at::Tensor*> xs) {
  bool merge = true;
  for (const at::Tensor* x : xs) merge = merge && can_merge_hw(*x);
  std::vector<LocLayout> out;
  for (const at::Tensor* x : xs) out.push_back(make_layout(*x, merge));
  return out;
}

// Shape of the per-location output: [N] or [B, H, W].
inline std::vector<int64_t> location_shape(const at::Tensor& x) {
  if (x.dim() == 2) return {x.size(0)};
  return {x.size(0), x.size(2), x.size(3)};
}

// Per-location outputs are float32, float64 for float64 inputs.
inline at::ScalarType loss_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// A new per-location output for rows x.
inline at::Tensor new_per_location(const at::Tensor& x) {
  return at::empty(location_shape(x), x.options().dtype(loss_dtype(x.scalar_type())));
}

}  // namespace bckd
