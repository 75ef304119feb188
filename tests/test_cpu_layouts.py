"""The CPU kernels read a map in whichever layout it comes: nchw (a lane per
location), contiguous channels (channels_last maps and rows: a vector of
classes per location for BCDL, transposed tiles of bins for ILDL) and any other
strides (gathered lanes). Each path computes the same maths in the same order,
so the same values give the same bits in every layout, forward and backward,
including the class and location counts that leave a vector part full."""

import os
import subprocess
import sys

import pytest
import torch
from conftest import make

from bckd_kernels import reference

pytestmark = [pytest.mark.kernels, pytest.mark.skipif(
    not hasattr(torch.ops, "bckd") or not hasattr(torch.ops.bckd, "bin_cls_distill"),
    reason="needs the bckd extension")]

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def layouts(x):
    """x [B, C, H, W] in every layout the kernels tell apart, as (name, tensor)."""
    B, C, H, W = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, C)
    padded = torch.zeros(B * H * W, C + 3, dtype=x.dtype)
    padded[:, 1:C + 1] = rows
    wide = torch.zeros(B, C, H, W + 2, dtype=x.dtype).contiguous(memory_format=torch.channels_last)
    wide[..., 1:W + 1] = x
    return [
        ("nchw", x.contiguous()),
        ("channels_last", x.contiguous(memory_format=torch.channels_last)),
        ("rows", rows.contiguous()),
        ("rows, 3 channels apart", padded[:, 1:C + 1]),
        ("channels_last, columns sliced", wide[..., 1:W + 1]),
        ("rows_transposed", rows.t().contiguous().t()),
    ]


def bcdl(s, t, gout, beta):
    s = s.detach().requires_grad_()
    loss, mad = torch.ops.bckd.bin_cls_distill(s, t, None, beta)
    (grad,) = torch.autograd.grad(loss, s, gout.reshape(loss.shape))
    return loss.reshape(-1), mad.reshape(-1), grad


def ildl(s, t, gout, reg_max):
    s = s.detach().requires_grad_()
    loss = torch.ops.bckd.dfl_giou_distill(s, t, reg_max, 1e-6)
    (grad,) = torch.autograd.grad(loss, s, gout.reshape(loss.shape))
    return loss.reshape(-1), grad


def as_rows(grad):
    return grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1]) if grad.dim() == 4 else grad


def assert_same_bits(outs, what):
    (name0, first), rest = outs[0], outs[1:]
    for name, out in rest:
        for i, (a, b) in enumerate(zip(first, out)):
            a, b = as_rows(a), as_rows(b)
            same = torch.equal(a, b) or (torch.equal(a.isnan(), b.isnan()) and torch.equal(a[~a.isnan()], b[~b.isnan()]))
            assert same, f"{what}: output {i} in layout {name!r} differs from {name0!r} by {(a - b).abs().max()}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [1, 3, 8, 9, 13, 80])
@pytest.mark.parametrize("hw", [(5, 7), (1, 16), (3, 1)])
@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_bcdl_same_bits_in_every_layout(dtype, classes, hw, beta):
    s, t, _, gout = make((2, classes, *hw), "nchw", dtype, "cpu", weight=False)
    outs = [(name, bcdl(xs, xt, gout, beta)) for (name, xs), (_, xt) in zip(layouts(s), layouts(t))]
    # Student and teacher in different layouts take the gathering path.
    outs.append(("student channels_last, teacher nchw", bcdl(s.contiguous(memory_format=torch.channels_last), t,
                                                             gout, beta)))
    assert_same_bits(outs, f"BCDL {dtype} C={classes}")
    ref = reference.bin_cls_distill(s.double(), t.double(), None, beta)[0].reshape(-1)
    torch.testing.assert_close(outs[1][1][0], ref.float(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reg_max", [1, 7, 16])
@pytest.mark.parametrize("hw", [(5, 7), (3, 1)])
def test_ildl_same_bits_in_every_layout(dtype, reg_max, hw):
    s, t, _, gout = make((2, 4 * (reg_max + 1), *hw), "nchw", dtype, "cpu", scale=2.0, weight=False)
    outs = [(name, ildl(xs, xt, gout, reg_max)) for (name, xs), (_, xt) in zip(layouts(s), layouts(t))]
    assert_same_bits(outs, f"ILDL {dtype} reg_max={reg_max}")
    ref = reference.dfl_giou_distill(s.double(), t.double(), reg_max).reshape(-1)
    torch.testing.assert_close(outs[1][1][0], ref.float(), rtol=1e-4, atol=1e-5)


def test_bcdl_nonfinite_logits_in_every_layout():
    """NaN and ±inf logits in the class tail past the last full vector."""
    s, t, _, gout = make((1, 11, 3, 3), "nchw", torch.float32, "cpu", weight=False)
    s[0, 9, 0, 0], s[0, 10, 1, 1], t[0, 10, 2, 2] = float("nan"), float("inf"), -float("inf")
    outs = [(name, bcdl(xs, xt, gout, 1.0)) for (name, xs), (_, xt) in zip(layouts(s), layouts(t))]
    assert_same_bits(outs, "BCDL non-finite")
    loss, mad, _ = outs[0][1]
    assert loss[0].isnan() and mad[0].isnan() and loss[1:].isfinite().sum() >= 7


@pytest.mark.parametrize("cap", ["default", "avx2", "avx512"])
def test_every_build_same_bits_in_every_layout(cap):
    """This file's layout tests under each of the builds the extension holds (ATEN_CPU_CAPABILITY
    picks one; a processor without it runs its best one below)."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", os.path.abspath(__file__),
         "-k", "not every_build"],
        env=dict(os.environ, ATEN_CPU_CAPABILITY=cap), capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
