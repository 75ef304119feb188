// A one-pass BCDL forward for benchmarks/onepass_cpu.py: with the loss and
// max |d| it also writes ∂ℓ/∂zs (unscaled, float32) from the same evaluation
// of the per-element pieces, so that a backward would only scale it by the
// per-location g·w. The AVX2 build of the project's own CPU kernel machinery
// (csrc/cpu/kernels_impl.h: one SIMD lane per location), β = 1.
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include <torch/extension.h>

#include "../csrc/cpu/kernels_impl.h"
#include "../csrc/layout.h"

namespace {

using namespace bckd;
using namespace bckd::cpu::AVX2;

// zs, zt: [B, C, H, W] float32 contiguous; returns (loss, max_abs_diff, grad).
std::vector<at::Tensor> forward_with_grad(const at::Tensor& zs_t, const at::Tensor& zt_t) {
  using M = VecMath<float>;
  using Vec = Vectorized<float>;
  TORCH_CHECK(zs_t.is_contiguous() && zs_t.scalar_type() == at::kFloat && zs_t.dim() == 4);
  at::Tensor loss = at::empty(location_shape(zs_t), zs_t.options());
  at::Tensor mad = at::empty_like(loss);
  at::Tensor grad = at::empty_like(zs_t);
  const auto l = make_layouts({&zs_t, &zt_t, &grad});
  const float* zs = zs_t.const_data_ptr<float>();
  const float* zt = zt_t.const_data_ptr<float>();
  float* g = grad.mutable_data_ptr<float>();
  float* lo = loss.mutable_data_ptr<float>();
  float* md = mad.mutable_data_ptr<float>();
  const Vec beta(1.0f);
  for_each_run<Vec::size()>(l[0], l[0].C, [&](int64_t b, int64_t h, int64_t w0, int64_t n, int64_t o) {
    const float* ps = zs + offset(l[0], b, h, w0);
    const float* pt = zt + offset(l[1], b, h, w0);
    float* pg = g + offset(l[2], b, h, w0);
    Vec sum(0), mx(0);
    for (int64_t k = 0; k < l[0].C; ++k) {
      const auto e = math::bcdl_pieces<M, 1>(load_lanes<float>(ps + k * l[0].sc, l[0].sw, n),
                                             load_lanes<float>(pt + k * l[1].sc, l[1].sw, n));
      Vec mod, dmod;
      math::bcdl_modulator<M, 1>(e.d, beta, mod, dmod);
      sum = sum + mod * e.bce;
      mx = M::max(mx, M::abs(e.d));
      store_lanes(mod * e.d + dmod * e.pp * e.bce, pg + k * l[2].sc, l[2].sw, n);
    }
    store_lanes(sum, lo + o, 1, n);
    store_lanes(mx, md + o, 1, n);
  });
  return {loss, mad, grad};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("forward_with_grad", &forward_with_grad); }
