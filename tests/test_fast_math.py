"""BCDL in float32 against a per-element oracle of its error.

The float32 kernels take fast maths: on the GPU ex2.approx and rcp.approx with
denormals flushed (csrc/cuda/common.cuh, FastMath), on the CPU polynomial exp and
log1p. Their documented bound is per element: exp(x) within |x|·2^-24 relative plus
a few ulp, and 0 where the accurate value is below float32's smallest normal. A
max-norm comparison against the largest loss would hide a location whose small loss
is wrong in every digit, so this test evaluates the kernels' own formulas
(csrc/bckd_math.h, bcdl_pieces and bcdl_modulator) in float64 interval arithmetic:
every primitive is widened by its documented error and every float32 operation by
half an ulp, giving for each location and class an interval the kernel's value must
lie in. The float64 reference must lie in it too, which checks the oracle itself.
"""

import pytest
import torch

from bckd_kernels import reference

pytestmark = pytest.mark.kernels

ULP = 2.0**-24  # half a float32 ulp, relative
TINY = 1.2e-38  # float32's smallest normal: what a flushed denormal loses


class Interval:
    """[lo, hi] per element, float64."""

    def __init__(self, lo, hi=None):
        self.lo, self.hi = lo, lo if hi is None else hi

    def rounded(self, rel=ULP, ulps=1):
        """Widened by ``ulps`` float32 roundings (and a flushed denormal)."""
        pad_lo = self.lo.abs() * rel * ulps + TINY
        pad_hi = self.hi.abs() * rel * ulps + TINY
        return Interval(self.lo - pad_lo, self.hi + pad_hi)

    def __add__(self, other):
        return Interval(self.lo + other.lo, self.hi + other.hi).rounded()

    def __sub__(self, other):
        return Interval(self.lo - other.hi, self.hi - other.lo).rounded()

    def __mul__(self, other):
        products = torch.stack([self.lo * other.lo, self.lo * other.hi, self.hi * other.lo, self.hi * other.hi])
        return Interval(products.amin(0), products.amax(0)).rounded()

    def reciprocal(self):
        """1/x on a positive interval, rcp.approx's 2 ulp."""
        return Interval(1 / self.hi, 1 / self.lo).rounded(ulps=4)

    def abs(self):
        lo = torch.where((self.lo <= 0) & (self.hi >= 0), torch.zeros_like(self.lo),
                         torch.minimum(self.lo.abs(), self.hi.abs()))
        return Interval(lo, torch.maximum(self.lo.abs(), self.hi.abs()))

    def sign(self):
        return Interval(torch.sign(self.lo), torch.sign(self.hi))

    def contains(self, x):
        return (x >= self.lo) & (x <= self.hi)


def select(cond, a, b):
    return Interval(torch.where(cond, a.lo, b.lo), torch.where(cond, a.hi, b.hi))


def exp_neg(x):
    """exp(x), x ≤ 0: |x|·2^-24 relative from rounding x·log2 e, 2 ulp of ex2.approx,
    and 0 below −87.3 under ftz."""
    e = x.exp()
    pad = e * (x.abs() * ULP + 4 * ULP)
    return Interval((e - pad - TINY).clamp(min=0), e + pad)


def log1p_unit(e):
    """log1p on [0, 1]: the series' 1.5e-8 and a few roundings, relative."""
    return Interval(e.lo.log1p(), e.hi.log1p()).rounded(ulps=8)


def oracle(zs, zt, weight, grad_loss, beta):
    """Per element (location, class): intervals of BCDL's loss term and its gradient."""
    zs, zt = zs.double(), zt.double()
    one = Interval(torch.ones_like(zs))
    es, et = exp_neg(-zs.abs()), exp_neg(-zt.abs())
    rs, rt = (one + es).reciprocal(), (one + et).reciprocal()
    p = select(zs >= 0, rs, es * rs)
    q = select(zt >= 0, rt, et * rt)
    bce = (Interval(zs.clamp(min=0)) + log1p_unit(es)) - q * Interval(zs)
    d = p - q
    if beta == 1:
        mod, dmod = d.abs(), d.sign()
    else:
        mod, dmod = d * d, Interval(torch.full_like(zs, 2.0)) * d
    w = Interval(weight.double()[:, None].expand_as(zs))
    g = Interval(grad_loss.double()[:, None].expand_as(zs))
    term = mod * bce
    grad = (mod * d + dmod * (es * rs * rs) * bce) * w * g
    return term * w, grad, d.abs()


def logits(n, classes, generator):
    """Logits over every range the maths treats apart: around 0, moderate, large, past
    the −87.3 flush threshold, and near-equal student and teacher."""
    zt = torch.randn(n, classes, generator=generator) * 4
    zs = zt + torch.randn(n, classes, generator=generator)
    wide = torch.rand(n // 4, classes, generator=generator) * 200 - 100
    zs[: n // 4], zt[n // 4: n // 2] = wide, wide.flip(0)
    zs[n // 2: n // 2 + 8] = zt[n // 2: n // 2 + 8] + 1e-3
    zs[-8:], zt[-8:] = -87.3 + torch.rand(8, classes, generator=generator), 30.0
    return zs, zt


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_bcdl_within_its_per_element_bound(backend, beta):
    generator = torch.Generator().manual_seed(0)
    n, classes = 256, 80
    zs, zt = logits(n, classes, generator)
    weight = torch.rand(n, generator=generator)
    grad_loss = torch.rand(n, generator=generator) * 3
    term, grad, mad = oracle(zs, zt, weight, grad_loss, beta)
    # The sum over classes adds one rounding per class to the partial sums.
    loss_lo = term.lo.sum(1) - classes * ULP * term.hi.abs().sum(1)
    loss_hi = term.hi.sum(1) + classes * ULP * term.hi.abs().sum(1)

    ref_loss, ref_mad = reference.bin_cls_distill(zs.double(), zt.double(), weight.double(), beta)
    zs64 = zs.double().requires_grad_()
    reference.bin_cls_distill(zs64, zt.double(), weight.double(), beta)[0].backward(grad_loss.double())
    assert ((ref_loss >= loss_lo) & (ref_loss <= loss_hi)).all(), "the oracle excludes the float64 reference"
    assert grad.contains(zs64.grad).all(), "the oracle excludes the float64 reference gradient"

    device = backend.device
    s = zs.to(device).requires_grad_()
    loss, max_abs_diff = backend.op("bin_cls_distill")(s, zt.to(device), weight.to(device), beta)
    loss.backward(grad_loss.to(device))
    loss, max_abs_diff, g = loss.double().cpu(), max_abs_diff.double().cpu(), s.grad.double().cpu()
    outside = ~((loss >= loss_lo) & (loss <= loss_hi))
    assert not outside.any(), (f"{int(outside.sum())} locations outside their bound, first at "
                               f"{int(outside.nonzero()[0])}: {loss[outside][0]:.9g} not in "
                               f"[{loss_lo[outside][0]:.9g}, {loss_hi[outside][0]:.9g}]")
    mad_lo, mad_hi = mad.lo.amax(1), mad.hi.amax(1)
    assert ((max_abs_diff >= mad_lo) & (max_abs_diff <= mad_hi)).all()
    outside = ~grad.contains(g)
    assert not outside.any(), (f"{int(outside.sum())} gradient elements outside their bound, first: "
                               f"{g[outside][0]:.9g} not in [{grad.lo[outside][0]:.9g}, {grad.hi[outside][0]:.9g}]")
