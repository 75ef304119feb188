"""Triton kernels: on CPU tensors through the Triton interpreter (conftest turns
it on without a GPU), on CUDA tensors when a GPU is there."""

import pytest
import torch
from conftest import DEVICES, HAS_CUDA, as_layout, assert_matches

triton = pytest.importorskip("triton")

import bckd_kernels  # noqa: E402
from bckd_kernels import reference, triton_ops  # noqa: E402,F401

DTYPES = [torch.float32, torch.bfloat16] + ([torch.float16] if HAS_CUDA else [])


def make(shape, dtype, device, layout, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    loc = (shape[0],) if len(shape) == 2 else (shape[0], shape[2], shape[3])
    w = torch.rand(loc, generator=g, dtype=torch.float64)
    gout = torch.randn(loc, generator=g, dtype=torch.float64)
    return as_layout(s.to(device), layout), as_layout(t.to(device), layout), w.to(device), gout.to(device)


def grads(fn, s, t, gout, *args):
    s = s.detach().requires_grad_()
    out = fn(s, t, *args)
    loss = out[0] if isinstance(out, tuple) else out
    (g,) = torch.autograd.grad(loss, s, gout.to(loss.dtype))
    return (*out, g) if isinstance(out, tuple) else (out, g)


CASES = [
    ("nc", (37, 13)),
    ("nc_strided", (9, 80)),
    ("nchw", (2, 11, 5, 7)),
    ("nchw_last", (1, 80, 3, 5)),
    ("nchw_strided", (2, 5, 3, 3)),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, shape", CASES)
@pytest.mark.parametrize("beta", [1.0, 1.5])
def test_bin_cls_distill(device, dtype, layout, shape, beta):
    s, t, w, gout = make(shape, dtype, device, layout)
    out = grads(torch.ops.bckd.bin_cls_distill_triton, s, t, gout, w, beta)
    ref = grads(reference.bin_cls_distill, s.double(), t.double(), gout, w.double(), beta)
    lowp = grads(lambda *a: reference.bin_cls_distill(*a, upcast=False), s, t, gout, w.to(dtype), beta)
    for name, a, r, lp in zip(("loss", "max_abs_diff", "grad"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)
    fused = grads(torch.ops.bckd.bin_cls_distill, s, t, gout, w, beta)
    for a, b in zip(out, fused):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout, shape, reg_max", [("nc", (37, 68), 16), ("nc_strided", (5, 32), 7), ("nc", (9, 164), 40),
                                                     ("nchw", (2, 68, 5, 7), 16), ("nchw_strided", (1, 68, 3, 3), 16)])
def test_dfl_giou_distill(device, dtype, layout, shape, reg_max):
    s, t, _, gout = make(shape, dtype, device, layout, seed=1)
    out = grads(torch.ops.bckd.dfl_giou_distill_triton, s, t, gout, reg_max, 1e-6)
    ref = grads(reference.dfl_giou_distill, s.double(), t.double(), gout, reg_max, 1e-6)
    lowp = grads(lambda *a: reference.dfl_giou_distill(*a, upcast=False), s, t, gout, reg_max, 1e-6)
    for name, a, r, lp in zip(("loss", "grad"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


def boxes(n, device, dtype, seed=2):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
    p = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10], 1)
    t = p + torch.randn(n, 4, generator=g, dtype=torch.float64)
    t[::5] = p[::5]
    return p.to(dtype).to(device), t.to(dtype).to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nc", "nc_t"])
def test_paired_giou(device, dtype, layout):
    p, t = (as_layout(x, layout) for x in boxes(301, device, dtype))
    gout = torch.randn(301, dtype=torch.float64, device=device)

    def run(fn, a, b):
        a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
        loss = fn(a, b)
        return (loss, *torch.autograd.grad(loss, (a, b), gout.to(loss.dtype)))

    out = run(lambda a, b: torch.ops.bckd.paired_giou_triton(a, b, 1e-6), p, t)
    ref = run(reference.paired_giou, p.double(), t.double())
    lowp = run(lambda a, b: reference.paired_giou(a, b, upcast=False), p, t)
    for name, a, r, lp in zip(("loss", "grad_pred", "grad_target"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


@pytest.mark.parametrize("device", DEVICES)
def test_functional_backend_and_empty(device):
    s, t, w, _ = make((2, 11, 5, 7), torch.float32, device, "nchw")
    a = bckd_kernels.bcdl_loss(s, t, w, backend="triton")
    b = bckd_kernels.bcdl_loss(s, t, w, backend="reference")
    torch.testing.assert_close(a, b)
    empty = torch.zeros(0, 80, device=device, requires_grad=True)
    loss, mad = torch.ops.bckd.bin_cls_distill_triton(empty, empty.detach(), None, 1.0)
    assert loss.shape == (0,)
    (g,) = torch.autograd.grad(loss.sum(), empty)
    assert g.shape == empty.shape


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("loss", ["bcdl", "giou", "dfl"])
def test_compile_fullgraph_cuda(loss):
    if loss == "giou":
        a, b = boxes(1000, "cuda", torch.float32)
        fn = lambda x, y: bckd_kernels.giou_loss(x, y, backend="triton")  # noqa: E731
    else:
        shape = (2, 80, 20, 24) if loss == "bcdl" else (2, 68, 20, 24)
        a, b, _, _ = make(shape, torch.float32, "cuda", "nchw")
        f = bckd_kernels.bcdl_loss if loss == "bcdl" else bckd_kernels.ildl_loss
        fn = lambda x, y: f(x, y, backend="triton")  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    fn(a1, b).backward()
    out = compiled(a2, b)
    out.backward()
    torch.testing.assert_close(out, fn(a, b))
    torch.testing.assert_close(a1.grad, a2.grad)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_deterministic_cuda():
    s, t, w, gout = make((4, 80, 100, 140), torch.float32, "cuda", "nchw")
    a = grads(torch.ops.bckd.bin_cls_distill_triton, s, t, gout, w, 1.0)
    b = grads(torch.ops.bckd.bin_cls_distill_triton, s, t, gout, w, 1.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_offsets_beyond_int32_cuda():
    big_s = torch.empty(2**31 + 160, dtype=torch.bfloat16, device="cuda")
    big_t = torch.empty(2**31 + 160, dtype=torch.bfloat16, device="cuda")
    s = big_s.as_strided((2, 80), (2**31, 1))
    t = big_t.as_strided((2, 80), (2**31, 1))
    s.copy_(torch.randn(2, 80, device="cuda"))
    t.copy_(torch.randn(2, 80, device="cuda"))
    loss, mad = torch.ops.bckd.bin_cls_distill_triton(s, t, None, 1.0)
    ref_loss, ref_mad = reference.bin_cls_distill(s.double(), t.double())
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mad.double(), ref_mad, rtol=1e-5, atol=1e-6)
