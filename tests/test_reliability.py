"""Inputs at the edges, on every backend of the operators (the extension's C++
and CUDA kernels, the Triton kernels): no silent NaN, no silently wrong result,
no silently missing gradient."""

import pytest
import torch
from conftest import assert_matches, loc_shape, needs_extension

import bckd_kernels
from bckd_kernels import reference

pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("shape", [(7, 13), (2, 5, 3, 4)])
def test_weight_that_requires_grad_gets_its_gradient(backend, shape):
    device = backend.device
    g = torch.Generator().manual_seed(0)
    s = torch.randn(shape, generator=g).to(device).requires_grad_()
    t = torch.randn(shape, generator=g).to(device)
    loc = loc_shape(s)
    w = torch.rand(loc, generator=g).to(device).requires_grad_()
    gout = torch.randn(loc, generator=g).to(device)
    loss, _ = backend.op("bin_cls_distill")(s, t, w, 1.5)
    gs, gw = torch.autograd.grad(loss, (s, w), gout)
    ref, _ = reference.bin_cls_distill(s, t, w, 1.5)
    rs, rw = torch.autograd.grad(ref, (s, w), gout)
    torch.testing.assert_close(gs, rs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw, rw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("loss", ["bcdl", "giou", "dfl"])
def test_double_backward_is_refused(backend, loss):
    device = backend.device
    if loss == "bcdl":
        x = torch.randn(4, 6, device=device, requires_grad=True)
        out = backend.op("bin_cls_distill")(x, torch.randn(4, 6, device=device), None, 1.0)[0]
    elif loss == "giou":
        x = torch.tensor([[0.0, 0.0, 2.0, 2.0]], device=device, requires_grad=True)
        out = backend.op("paired_giou")(x, torch.tensor([[1.0, 1.0, 3.0, 3.0]], device=device), 1e-6)
    else:
        x = torch.randn(4, 68, device=device, requires_grad=True)
        out = backend.op("dfl_giou_distill")(x, torch.randn(4, 68, device=device), 16, 1e-6)
    (g,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward .* is not supported"):
        g.sum().backward()


def test_max_abs_diff_keeps_nan(backend):
    """max_abs_diff is ILDL's weight: a NaN logit must not vanish from it."""
    s = torch.randn(3, 40, device=backend.device)
    t = torch.randn(3, 40, device=backend.device)
    s[1, 33] = float("nan")
    t[2, 0] = float("nan")
    loss, mad = backend.op("bin_cls_distill")(s, t, None, 1.0)
    assert torch.isfinite(mad[0]) and mad[1].isnan() and mad[2].isnan()
    assert torch.isfinite(loss[0]) and loss[1].isnan() and loss[2].isnan()


@pytest.mark.parametrize("coord", [5e9, 1e12, 1e18])
def test_giou_gradient_of_huge_boxes(backend, coord):
    """Areas near float32's largest value: (I/U)/U, never I/U²."""
    p64 = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.9, 1.1]], dtype=torch.float64) * coord
    t64 = torch.tensor([[0.2, 0.1, 1.1, 0.8], [0.0, 0.0, 1.0, 1.0]], dtype=torch.float64) * coord
    p, t = p64.float().to(backend.device).requires_grad_(), t64.float().to(backend.device).requires_grad_()
    loss = backend.op("paired_giou")(p, t, 1e-6)
    gp, gt = torch.autograd.grad(loss.sum(), (p, t))
    p64, t64 = p.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    rp, rt = torch.autograd.grad(reference.paired_giou(p64, t64).sum(), (p64, t64))
    # Gradients scale as 1/coordinate: compare gradient × coordinate.
    for a, r in ((gp, rp), (gt, rt)):
        torch.testing.assert_close((a.double() * coord).cpu(), (r * coord).cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("eps", [1e-23, 1e-30, 1e-38])
def test_zero_area_pair_with_tiny_eps_has_finite_gradient(backend, eps):
    p = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 2.0, 2.0]], device=backend.device,
                     requires_grad=True)
    t = p.detach().clone().requires_grad_()
    loss = backend.op("paired_giou")(p, t, eps)
    gp, gt = torch.autograd.grad(loss.sum(), (p, t))
    assert torch.isfinite(loss).all() and torch.isfinite(gp).all() and torch.isfinite(gt).all()
    p64, t64 = p.detach().double().requires_grad_(), t.detach().double().requires_grad_()
    ref = reference.paired_giou(p64, t64, eps)
    rp, rt = torch.autograd.grad(ref.sum(), (p64, t64))
    torch.testing.assert_close(loss.double().cpu(), ref.cpu())
    torch.testing.assert_close(gp.double().cpu(), rp.cpu())


def test_float16_boxes_whose_areas_overflow_float16(backend):
    """Plain float16 PyTorch overflows (areas above 65504, non-finite loss); the
    kernels accumulate in float32 and stay within the float16 floor."""
    g = torch.Generator().manual_seed(3)
    p = torch.rand(64, 2, generator=g) * 100
    p = torch.cat([p, p + 300 + torch.rand(64, 2, generator=g) * 100], 1)
    t = p + torch.randn(64, 4, generator=g) * 20
    p, t = p.half().to(backend.device), t.half().to(backend.device)
    lowp = reference.paired_giou(p, t, upcast=False)
    assert not torch.isfinite(lowp).all()
    ref64 = reference.paired_giou(p.double(), t.double())
    assert_matches(backend.op("paired_giou")(p, t, 1e-6), ref64, lowp, torch.float16, "loss")


@needs_extension
@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: bckd_kernels.giou_loss(torch.rand(4, 4), torch.rand(4, 4), torch.ones(4, 1)), "weight must have shape"),
        (lambda: bckd_kernels.ildl_loss(torch.rand(4, 68), torch.rand(4, 68), torch.ones(4, 1)),
         "weight must have shape"),
        (lambda: bckd_kernels.ildl_loss(torch.rand(4, 68), torch.rand(4, 68), reg_max=16.9), "reg_max must be an int"),
        (lambda: bckd_kernels.bckd_loss(torch.rand(2, 8, 1, 30), torch.rand(2, 8, 1, 30), torch.rand(2, 68, 30, 30),
                                        torch.rand(2, 68, 30, 30)), "student_reg has locations"),
        (lambda: bckd_kernels.bckd_loss(torch.rand(2, 8, 29, 30), torch.rand(2, 8, 29, 30), torch.rand(2, 68, 30, 30),
                                        torch.rand(2, 68, 30, 30)), "student_reg has locations"),
    ],
)
def test_functional_api_refuses_what_would_broadcast(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_giou_of_zero_area_and_inverted_boxes_in_low_precision(backend, dtype):
    """Zero-area and inverted boxes, where the union and enclosure sit at their eps
    clamps: loss and gradients against the float64 reference of the same
    (rounded) inputs."""
    g = torch.Generator().manual_seed(5)
    p = torch.rand(256, 4, generator=g, dtype=torch.float64) * 8
    t = torch.rand(256, 4, generator=g, dtype=torch.float64) * 8
    p[::4, 2] = p[::4, 0]  # zero width
    t[1::4, 3] = t[1::4, 1]  # zero height
    p[2::4] = p[2::4].flip(1)  # inverted
    t[3::4] = p[3::4]  # identical pairs
    p, t = p.to(dtype).to(backend.device), t.to(dtype).to(backend.device)
    gout = torch.randn(256, generator=g, dtype=torch.float64).to(backend.device)

    def run(fn, a, b):
        a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
        loss = fn(a, b)
        return (loss, *torch.autograd.grad(loss, (a, b), gout.to(loss.dtype)))

    out = run(lambda a, b: backend.op("paired_giou")(a, b, 1e-6), p, t)
    ref = run(reference.paired_giou, p.double(), t.double())
    lowp = run(lambda a, b: reference.paired_giou(a, b, upcast=False), p, t)
    for name, a, r, lp in zip(("loss", "grad_pred", "grad_target"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


@needs_extension
def test_cross_process_determinism_check_passes_and_catches_one_bit():
    """benchmarks/gpu_determinism.py (which benchmarks/gpu_run.sh runs on a GPU over the
    Triton and CUDA kernels): two processes hash every output and gradient; here on the
    extension's CPU kernels it passes, a single flipped bit in the second process fails
    it, and without a GPU its default (--device cuda) says it skipped (exit 3)."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                          "gpu_determinism.py")
    base = [sys.executable, script, "--device", "cpu", "--implementations", "extension", "--no-compile", "--shape", "1", "5", "7"]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "10 equal across processes" in ok.stdout and ok.stdout.rstrip().endswith("passed")
    bad = subprocess.run(base + ["--self-test-mismatch"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and "FAIL bits differ between the 2 processes: bcdl extension float32 nchw" in bad.stdout
    if not torch.cuda.is_available():
        skip = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=300)
        assert skip.returncode == 3 and "skipped" in skip.stdout
