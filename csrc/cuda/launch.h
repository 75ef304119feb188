// The launchers' choice of kernel variant, made from the arguments alone.
// Host code only (no CUDA headers), like access.h, so that every decision is
// compiled and checked on a machine without a GPU
// (benchmarks/cuda_access_check.cpp, run by tests/test_cuda_static.py).
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "../args.h"
#include "access.h"

namespace bckd {
namespace cuda {

// ----------------------------------------------------------------- BCDL ----

// The access of both maps (and the gradient), at 16 bytes per vector below
// float64 (whose vector kernels would only add build time for a gradcheck
// dtype). A kLocations thread also reads and writes its VL per-location
// values as 16-byte words: without those pointers aligned, VL = 1.
inline AccessPlan plan_bcdl(const BcdlFwdArgs& a, int64_t elem) {
  const Operand s{a.student, &a.ls}, t{a.teacher, &a.lt};
  AccessPlan plan = elem < 8 ? plan_access({s, t}, elem, {kVecBytes}) : plan_access({s, t}, elem, {});
  if (plan.access == Access::kLocations &&
      !(base_ok(a.loss) && base_ok(a.max_abs_diff) && (a.weight == nullptr || base_ok(a.weight)))) {
    plan.vec = 1;
  }
  return plan;
}

inline AccessPlan plan_bcdl(const BcdlBwdArgs& a, int64_t elem) {
  const Operand s{a.student, &a.ls}, t{a.teacher, &a.lt}, g{a.grad, &a.lg};
  AccessPlan plan = elem < 8 ? plan_access({s, t, g}, elem, {kVecBytes}) : plan_access({s, t, g}, elem, {});
  if (plan.access == Access::kLocations && !(base_ok(a.grad_loss) && (a.weight == nullptr || base_ok(a.weight)))) {
    plan.vec = 1;
  }
  return plan;
}

// ----------------------------------------------------------------- GIoU ----

// One 4-element access per box (boxes_packed) for every box tensor the call
// reads or writes; an output that is not wanted has no pointer and takes no
// part.
inline bool giou_packed(const GiouFwdArgs& a, int64_t elem) {
  return boxes_packed({{a.pred, &a.lp}, {a.target, &a.lt}}, elem);
}

inline bool giou_packed(const GiouBwdArgs& a, int64_t elem) {
  const Operand gp{a.grad_pred != nullptr ? a.grad_pred : a.pred, a.grad_pred != nullptr ? &a.lgp : &a.lp};
  const Operand gt{a.grad_target != nullptr ? a.grad_target : a.target,
                   a.grad_target != nullptr ? &a.lgt : &a.lt};
  return boxes_packed({{a.pred, &a.lp}, {a.target, &a.lt}, gp, gt}, elem);
}

// ------------------------------------------------------ DFL decode + GIoU ----

// Lanes per location of the kChannels DFL kernel: one per edge.
constexpr int kEdges = 4;
// The bin count with a kernel of its own, bins in registers: the GFocal
// default, reg_max = 16.
constexpr int kFixedBins = 17;
// Shared memory a block gets without opting in.
constexpr size_t kDefaultSharedBytes = 48 * 1024;

// Shared memory of the kChannels DFL kernel: per warp, the student and
// teacher rows (C values each, as acc_t) of its 32 / kEdges locations.
inline size_t dfl_chan_smem(int64_t C, size_t acc_bytes) {
  return static_cast<size_t>(kThreads / kWarpSize) * (kWarpSize / kEdges) * 2 * C * acc_bytes;
}

enum class DflKernel {
  kChannels,   // dfl_chan: 4 lanes per location, rows staged in shared memory
  kFixedBins,  // dfl_loc_fixed<kFixedBins>: one thread per location, bins in registers
  kAnyBins,    // dfl_loc_any: one thread per location, bins read per use
};

struct DflPlan {
  DflKernel kernel;
  int vec;  // channels per load of dfl_chan; 1 for the others
};

// kChannels where every map has contiguous channels and the tile fits the
// default 48 KB of shared memory (68 channels in float32 take 34 KB), with
// 16-byte vectors, else 8-byte ones (half-precision rows of 68 channels are
// 136 bytes; float32 rows whose base is 8 bytes off), else scalar loads.
// Otherwise one thread per location, with the bins in registers for 17 bins.
// elem: bytes per element; acc_bytes: per accumulator value.
inline DflPlan plan_dfl(std::initializer_list<Operand> ops, int nbins, int64_t C, int64_t elem, size_t acc_bytes) {
  const AccessPlan plan = elem < 8 ? plan_access(ops, elem, {16, 8}) : plan_access(ops, elem, {});
  if (plan.access == Access::kChannels && dfl_chan_smem(C, acc_bytes) <= kDefaultSharedBytes) {
    return {DflKernel::kChannels, plan.vec};
  }
  return {nbins == kFixedBins ? DflKernel::kFixedBins : DflKernel::kAnyBins, 1};
}

inline DflPlan plan_dfl(const DflFwdArgs& a, int64_t elem, size_t acc_bytes) {
  return plan_dfl({{a.student, &a.ls}, {a.teacher, &a.lt}}, a.nbins, a.ls.C, elem, acc_bytes);
}

inline DflPlan plan_dfl(const DflBwdArgs& a, int64_t elem, size_t acc_bytes) {
  return plan_dfl({{a.student, &a.ls}, {a.teacher, &a.lt}, {a.grad, &a.lg}}, a.nbins, a.ls.C, elem, acc_bytes);
}

}  // namespace cuda
}  // namespace bckd
