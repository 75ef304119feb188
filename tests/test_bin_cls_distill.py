import os
import subprocess
import sys

import pytest
import torch
from conftest import DEVICES, DTYPES, as_layout, assert_matches

from bckd_kernels import reference


op = torch.ops.bckd.bin_cls_distill


def loc_shape(x):
    return (x.shape[0],) if x.dim() == 2 else (x.shape[0], x.shape[2], x.shape[3])


def make(shape, layout, dtype, device, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    w = torch.rand(loc_shape(s), generator=g, dtype=torch.float64)
    gout = torch.randn(loc_shape(s), generator=g, dtype=torch.float64)  # non-unit upstream gradient
    s, t = as_layout(s.to(device), layout), as_layout(t.to(device), layout)
    return s, t, w.to(device), gout.to(device)


def run(fn, s, t, w, beta, gout):
    s = s.detach().requires_grad_()
    loss, mad = fn(s, t, w, beta)
    (grad,) = torch.autograd.grad(loss, s, gout.to(loss.dtype))
    return loss, mad, grad


def check_against_reference(s, t, w, beta, gout, dtype):
    loss, mad, grad = run(op, s, t, w, beta, gout)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert mad.dtype == loss.dtype and grad.dtype == dtype and grad.shape == s.shape
    s64, t64 = s.double(), t.double()
    w64 = None if w is None else w.double()
    ref = run(reference.bin_cls_distill, s64, t64, w64, beta, gout)
    lowp = run(lambda *a: reference.bin_cls_distill(*a, upcast=False), s, t, None if w is None else w.to(dtype), beta, gout)
    for name, a, r, lp in zip(("loss", "max_abs_diff", "grad"), (loss, mad, grad), ref, lowp):
        assert_matches(a, r, lp, dtype, name)


LAYOUTS = {
    "nc": (37, 13),
    "nc_t": (37, 13),
    "nc_strided": (37, 13),
    "nchw": (2, 11, 5, 7),
    "nchw_last": (2, 11, 5, 7),
    "nchw_strided": (2, 11, 5, 7),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("beta", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(device, dtype, layout, beta, weighted):
    s, t, w, gout = make(LAYOUTS[layout], layout, dtype, device)
    check_against_reference(s, t, w if weighted else None, beta, gout, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape", [(1, 80), (50, 1), (19, 7), (1, 1), (1, 3, 1, 1), (3, 1, 2, 9), (1, 80, 3, 3), (2, 9, 1, 13)]
)
def test_awkward_shapes(device, dtype, shape):
    layout = "nc" if len(shape) == 2 else "nchw"
    s, t, w, gout = make(shape, layout, dtype, device, seed=1)
    check_against_reference(s, t, w, 1.0, gout, dtype)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 80), (4, 0), (0, 80, 3, 3), (2, 80, 0, 5), (2, 0, 3, 3)])
def test_empty(device, shape):
    s = torch.zeros(shape, device=device, requires_grad=True)
    t = torch.zeros(shape, device=device)
    loss, mad = op(s, t, None, 1.0)
    assert loss.shape == loc_shape(s) and mad.shape == loc_shape(s)
    assert not loss.any() and not mad.any()
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert grad is not None and grad.shape == s.shape and not grad.any()


@pytest.mark.parametrize("device", DEVICES)
def test_zero_gradient_where_scores_agree(device):
    s = torch.randn(64, 80, dtype=torch.float64, device=device, requires_grad=True)
    loss, mad = op(s, s.detach().clone(), None, 1.0)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(mad, torch.zeros_like(mad))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits(device, dtype):
    vals = torch.tensor([-1e4, -100.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1e4], dtype=torch.float64)
    s = vals.repeat_interleave(len(vals)).reshape(-1, 1).repeat(1, 3).to(dtype).to(device)
    t = vals.repeat(len(vals)).reshape(-1, 1).repeat(1, 3).to(dtype).to(device)
    gout = torch.full((s.shape[0],), 0.5, dtype=torch.float64, device=device)
    loss, mad, grad = run(op, s, t, None, 1.0, gout)
    assert torch.isfinite(loss).all() and torch.isfinite(mad).all() and torch.isfinite(grad).all()
    ref = run(reference.bin_cls_distill, s.double(), t.double(), None, 1.0, gout)
    torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mad.double(), ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref[2], rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("beta", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("layout", ["nc", "nchw_strided"])
def test_gradcheck(device, beta, layout):
    shape = (6, 5) if layout == "nc" else (2, 5, 3, 2)
    s, t, w, _ = make(shape, layout, torch.float64, device, scale=2.0)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: op(x, t, w, beta)[0], (s,))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    s, t, w, gout = make((2, 11, 5, 7), "nchw", torch.float32, device)
    s.requires_grad_()
    torch.library.opcheck(op, (s, t, w, 1.0))
    torch.library.opcheck(op, (s, t, None, 2.0))
    torch.library.opcheck(torch.ops.bckd._bin_cls_distill_backward, (gout.float(), s.detach(), t, w, 1.0))


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    import bckd_kernels

    s, t, w, _ = make((2, 11, 5, 7), "nchw", torch.float32, device)

    def f(s, t, w):
        loss, mad = bckd_kernels.bcdl_loss(s, t, w, avg_factor=torch.tensor(3.0), return_max_abs_diff=True)
        return loss, mad

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    l1, m1 = f(s1, t, w)
    l2, m2 = compiled(s2, t, w)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(m1, m2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["nc", "nchw"])
def test_deterministic(device, layout):
    shape = (4099, 80) if layout == "nc" else (2, 80, 37, 41)
    s, t, w, gout = make(shape, layout, torch.float32, device)
    a = run(op, s, t, w, 1.0, gout)
    b = run(op, s, t, w, 1.0, gout)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_saves_only_inputs():
    s, t, w, gout = make((2, 80, 9, 9), "nchw", torch.float32, "cpu")
    s.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        loss, _ = op(s, t, w, 1.0)
    ptrs = {s.data_ptr(), t.data_ptr(), w.data_ptr()}
    assert saved and all(x.data_ptr() in ptrs for x in saved)


def test_baseline_cpu_kernels_match_vectorised():
    """The kernels built for any CPU (ATEN_CPU_CAPABILITY=default) agree with the AVX2 build."""
    code = (
        "import torch, bckd_kernels\n"
        "g = torch.Generator().manual_seed(0)\n"
        "s = torch.randn(3, 80, 11, 13, generator=g, requires_grad=True)\n"
        "t = torch.randn(3, 80, 11, 13, generator=g)\n"
        "l, m = torch.ops.bckd.bin_cls_distill(s, t, None, 1.0)\n"
        "l.sum().backward()\n"
        "rs = torch.randn(3, 68, 11, 13, generator=g, requires_grad=True)\n"
        "d = torch.ops.bckd.dfl_giou_distill(rs, torch.randn(3, 68, 11, 13, generator=g), 16, 1e-6)\n"
        "d.sum().backward()\n"
        "torch.save([l, m, s.grad, d, rs.grad], __import__('sys').argv[1])\n"
    )
    outs = []
    for cap in ("default", "avx2"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bckd_cap_{cap}_{os.getpid()}.pt")
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env)
        outs.append(torch.load(path))
        os.remove(path)
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_offsets_beyond_int32(device):
    """Rows 2^31 elements apart: offsets need 64 bits. torch.empty only reserves
    the storage; the pages of the two rows are the only ones touched."""
    big_s = torch.empty(2**31 + 160, dtype=torch.bfloat16, device=device)
    big_t = torch.empty(2**31 + 160, dtype=torch.bfloat16, device=device)
    s = big_s.as_strided((2, 80), (2**31, 1))
    t = big_t.as_strided((2, 80), (2**31, 1))
    g = torch.Generator().manual_seed(0)
    s.copy_(torch.randn(2, 80, generator=g).to(device))
    t.copy_(torch.randn(2, 80, generator=g).to(device))
    loss, mad = op(s, t, None, 1.0)
    ref_loss, ref_mad = reference.bin_cls_distill(s.double(), t.double())
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mad.double(), ref_mad, rtol=1e-5, atol=1e-6)
