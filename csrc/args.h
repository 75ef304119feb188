// Raw arguments of the kernels: pointers, layouts and scalars, no tensors.
// ops_host.h fills them after the checks and allocations; each device's
// kernels read them.
#pragma once

#include <c10/core/ScalarType.h>

#include "layout.h"

namespace bckd {

// Per-location tensors (coef, loss, max_abs_diff) are contiguous in the
// accumulation dtype (float32, float64 for float64 inputs), indexed
// (b·H + h)·W + w.
struct BcdlArgs {
  c10::ScalarType dtype;
  const void* student;
  const void* teacher;
  LocLayout ls, lt;
  const void* coef;  // forward: weight or nullptr; backward: grad_loss · weight
  double beta;
  void* loss;          // forward
  void* max_abs_diff;  // forward
  void* grad;          // backward, layout lg
  LocLayout lg;
};

struct GiouArgs {
  c10::ScalarType dtype;
  const void* pred;
  const void* target;
  LocLayout lp, lt;  // [N, 4] as N locations of 4 channels
  double eps;
  const void* coef;  // backward: upstream gradient
  void* loss;        // forward
  void* grad_pred;   // backward, layout lgp
  void* grad_target; // backward, layout lgt
  LocLayout lgp, lgt;
};

struct DflArgs {
  c10::ScalarType dtype;
  const void* student;
  const void* teacher;
  LocLayout ls, lt;
  int nbins;  // reg_max + 1
  double eps;
  const void* coef;  // backward: upstream gradient
  void* loss;        // forward
  void* grad;        // backward, layout lg
  LocLayout lg;
};

}  // namespace bckd
