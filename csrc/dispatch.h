// Run-time arguments to compile-time kernel variants, written once for the
// CPU and the CUDA kernels, the way AT_DISPATCH_* turns a dtype into scalar_t.
#pragma once

#include <ATen/Dispatch.h>

#include <type_traits>

// The input dtypes every kernel takes (ops_host.h's is_supported_float).
#define BCKD_DISPATCH_FLOATING_TYPES(dtype, name, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, __VA_ARGS__)

namespace bckd {

// Calls f(std::integral_constant<int, MODE>{}) with the BETA_MODE of
// bckd_math.h for β: 1 for β = 1, 2 for β = 2 (no pow), 0 for any other β.
//   with_beta_mode(beta, [&](auto mode) { kernel<scalar_t, decltype(mode)::value>(a); });
template <class F>
void with_beta_mode(double beta, const F& f) {
  if (beta == 1.0) {
    f(std::integral_constant<int, 1>{});
  } else if (beta == 2.0) {
    f(std::integral_constant<int, 2>{});
  } else {
    f(std::integral_constant<int, 0>{});
  }
}

}  // namespace bckd
