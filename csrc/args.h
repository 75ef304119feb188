// Raw arguments of the kernels: pointers, layouts and scalars, no tensors.
// ops_host.h fills them after the checks and allocations; each device's
// kernels read them. One struct per op and direction (flash-attention's
// Flash_fwd_params / Flash_bwd_params habit), so that every field means one
// thing and a kernel sees only what it reads or writes.
#pragma once

#include <c10/core/ScalarType.h>

#include "layout.h"

namespace bckd {

// Largest reg_max the fused DFL kernels take (65 bins per edge).
constexpr int kMaxRegMax = 64;

// Per-location tensors (weights, upstream gradients, losses, max_abs_diff)
// are contiguous in the accumulation dtype (float32, float64 for float64
// inputs), indexed (b·H + h)·W + w.

// The student and teacher maps, read in place through their layouts.
struct MapPair {
  c10::ScalarType dtype;
  const void* student;
  const void* teacher;
  LocLayout ls, lt;
};

// Paired boxes [N, 4], as N locations of 4 channels.
struct BoxPair {
  c10::ScalarType dtype;
  const void* pred;
  const void* target;
  LocLayout lp, lt;
};

struct BcdlFwdArgs : MapPair {
  double beta;
  const void* weight;  // or nullptr
  void* loss;
  void* max_abs_diff;
};

struct BcdlBwdArgs : MapPair {
  double beta;
  const void* grad_loss;
  const void* weight;  // or nullptr; the kernel scales by grad_loss · weight
  void* grad;              // layout lg
  LocLayout lg;
};

struct GiouFwdArgs : BoxPair {
  double eps;
  void* loss;
};

struct GiouBwdArgs : BoxPair {
  double eps;
  const void* grad_loss;
  void* grad_pred;    // layout lgp; nullptr: not wanted
  void* grad_target;  // layout lgt; nullptr: not wanted
  LocLayout lgp, lgt;
};

struct DflFwdArgs : MapPair {
  int nbins;  // reg_max + 1
  double eps;
  void* loss;
};

struct DflBwdArgs : MapPair {
  int nbins;  // reg_max + 1
  double eps;
  const void* grad_loss;
  void* grad;  // layout lg
  LocLayout lg;
};

// Every kernel entry point, X(name, argument struct): cpu/kernels.h and
// cuda/kernels.h declare them from this list, and CudaBackend forwards to them.
#define BCKD_KERNEL_ENTRIES(X)   \
  X(bcdl_forward, BcdlFwdArgs)   \
  X(bcdl_backward, BcdlBwdArgs)  \
  X(giou_forward, GiouFwdArgs)   \
  X(giou_backward, GiouBwdArgs)  \
  X(dfl_forward, DflFwdArgs)     \
  X(dfl_backward, DflBwdArgs)

}  // namespace bckd
