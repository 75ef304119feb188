"""Inputs shaped to reach each vector path of the kernels' memory planners (the
CPU and CUDA kernels share csrc/layout.h and pick their pattern from the
strides and the alignment, as the Triton kernels do), compared forward and
backward with the float64 reference: contiguous locations, contiguous channels,
misaligned views, tail sizes, the DFL shared-memory switch and GIoU's boxes."""

import pytest
import torch
from conftest import CUDA_KERNEL_BACKENDS, needs_cuda

from bckd_kernels import reference

pytestmark = pytest.mark.kernels

# Tolerances for a float32 result of float32 maths on exactly representable
# inputs, and for a gradient rounded to the input's dtype.
LOSS_TOL = dict(rtol=2e-5, atol=2e-5)
GRAD_TOL = {torch.float32: dict(rtol=2e-5, atol=2e-5), torch.float64: dict(rtol=1e-10, atol=1e-12),
            torch.bfloat16: dict(rtol=1.6e-2, atol=1e-3), torch.float16: dict(rtol=2e-3, atol=1e-4)}


def offset_view(x, elements):
    """x's values in a view that starts `elements` past its storage's start, same strides."""
    buf = torch.zeros(x.numel() + elements, dtype=x.dtype, device=x.device)
    view = buf[elements:].view(x.shape) if x.is_contiguous() else None
    if view is None:
        view = buf[elements:].as_strided(x.shape, x.stride())
    view.copy_(x)
    return view


def randn(shape, dtype, device, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def check_bcdl(backend, s, t, w=None, gout=None, beta=1.0):
    s = s.detach().requires_grad_()
    loss, mad = backend.op("bin_cls_distill")(s, t, w, beta)
    if gout is None:
        gout = randn(loss.shape, torch.float32, s.device, 7)
    (grad,) = torch.autograd.grad(loss, s, gout)
    s64 = s.detach().double().requires_grad_()
    ref_loss, ref_mad = reference.bin_cls_distill(s64, t.double(), None if w is None else w.double(), beta)
    (ref_grad,) = torch.autograd.grad(ref_loss, s64, gout.double())
    torch.testing.assert_close(loss.double(), ref_loss, **LOSS_TOL)
    torch.testing.assert_close(mad.double(), ref_mad, **LOSS_TOL)
    torch.testing.assert_close(grad.double(), ref_grad, **GRAD_TOL[s.dtype])


def check_dfl(backend, s, t, reg_max):
    s = s.detach().requires_grad_()
    loss = backend.op("dfl_giou_distill")(s, t, reg_max, 1e-6)
    gout = randn(loss.shape, torch.float32, s.device, 8).to(loss.dtype)
    (grad,) = torch.autograd.grad(loss, s, gout)
    s64 = s.detach().double().requires_grad_()
    ref = reference.dfl_giou_distill(s64, t.double(), reg_max)
    (ref_grad,) = torch.autograd.grad(ref, s64, gout.double())
    tol = GRAD_TOL[torch.float64] if s.dtype == torch.float64 else LOSS_TOL
    torch.testing.assert_close(loss.double(), ref, **tol)
    torch.testing.assert_close(grad.double(), ref_grad, **GRAD_TOL[s.dtype])


# --------------------------------------------------------------------- BCDL ----


@pytest.mark.parametrize("dtype, hw", [(torch.float32, (4, 6)), (torch.bfloat16, (2, 8)), (torch.float16, (4, 4))])
@pytest.mark.parametrize("view", ["contiguous", "offset 1", "channel slice"])
def test_bcdl_locations_contiguous(backend, dtype, hw, view):
    """NCHW maps whose H·W is a multiple of the vector width (4 float32, 8 bf16), as they are,
    one element off their storage's alignment, and as a channel slice big[:, 1:81]."""
    backend.require(dtype)
    shape = (2, 80, *hw)
    if view == "channel slice":
        s, t = (randn((2, 83, *hw), dtype, backend.device, seed)[:, 1:81] for seed in (0, 1))
    else:
        s, t = (randn(shape, dtype, backend.device, seed) for seed in (0, 1))
        if view == "offset 1":
            s, t = offset_view(s, 1), offset_view(t, 1)
    check_bcdl(backend, s, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("classes", [4, 8, 80, 81, 1024])
def test_bcdl_channels_contiguous(backend, dtype, classes):
    backend.require(dtype)
    if backend.interpreted and classes == 1024:
        pytest.skip("1024 classes under the Triton interpreter take minutes; compiled Triton runs it")
    s, t = (randn((2, classes, 3, 5), dtype, backend.device, seed).contiguous(memory_format=torch.channels_last)
            for seed in (0, 1))
    check_bcdl(backend, s, t, beta=2.0)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_bcdl_misaligned_per_location_vectors(backend, layout):
    """The weight and the upstream gradient as buf[1:] views."""
    s, t = (randn((2, 16, 4, 8), torch.float32, backend.device, seed) for seed in (0, 1))
    if layout == "channels_last":
        s, t = (x.contiguous(memory_format=torch.channels_last) for x in (s, t))
    w = offset_view(torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(2)).to(backend.device), 1)
    gout = offset_view(randn((2, 4, 8), torch.float32, backend.device, 3), 1)
    check_bcdl(backend, s, t, w, gout)


@pytest.mark.parametrize("n", [1, 9, 29, 4099])
@pytest.mark.parametrize("layout", ["rows", "nchw"])
def test_bcdl_tail_sizes(backend, n, layout):
    if backend.interpreted and n == 4099:
        pytest.skip("4099 rows under the Triton interpreter are slow; compiled Triton runs them")
    if layout == "rows":
        s, t = (randn((n, 13), torch.float32, backend.device, seed) for seed in (0, 1))
    else:
        s, t = (randn((1, 13, 1, n), torch.float32, backend.device, seed) for seed in (0, 1))
    check_bcdl(backend, s, t)


# ---------------------------------------------------------------------- DFL ----


@pytest.mark.parametrize("offset_bytes", [0, 4, 8])
@pytest.mark.parametrize("reg_max", [15, 16, 23, 24])
def test_dfl_channels_last(backend, offset_bytes, reg_max):
    """channels_last regression maps 0, 4 and 8 bytes past their storage's start; reg_max
    on both sides of the 48 KB shared-memory tile switch (23 and 24)."""
    s, t = (randn((2, 4 * (reg_max + 1), 3, 5), torch.float32, backend.device, seed, scale=2.0)
            .contiguous(memory_format=torch.channels_last) for seed in (0, 1))
    s, t = offset_view(s, offset_bytes // 4), offset_view(t, offset_bytes // 4)
    check_dfl(backend, s, t, reg_max)


@pytest.mark.parametrize("reg_max", [11, 12])
def test_dfl_float64(backend, reg_max):
    backend.require(torch.float64)
    s, t = (randn((2, 4 * (reg_max + 1), 3, 5), torch.float64, backend.device, seed, scale=2.0)
            .contiguous(memory_format=torch.channels_last) for seed in (0, 1))
    check_dfl(backend, s, t, reg_max)


# --------------------------------------------------------------------- GIoU ----


def boxes(n, device, seed):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 10
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 10 + 0.1], 1).float().to(device)


@pytest.mark.parametrize("view", ["offset 1 element", "offset 1 box", "column-major"])
def test_giou_views(backend, view):
    p, t = boxes(37, backend.device, 0), boxes(37, backend.device, 1)
    if view == "offset 1 element":
        p, t = offset_view(p, 1), offset_view(t, 1)
    elif view == "offset 1 box":
        p, t = offset_view(p, 4), offset_view(t, 4)
    else:
        p, t = p.t().contiguous().t(), t.t().contiguous().t()
    g = randn((37,), torch.float32, backend.device, 2)
    loss = backend.op("paired_giou")(p, t, 1e-6)
    full = backend.op("_paired_giou_backward")(g, p, t, 1e-6, [True, True])
    p64, t64 = p.double().requires_grad_(), t.double().requires_grad_()
    ref = reference.paired_giou(p64, t64)
    ref_grads = torch.autograd.grad(ref, (p64, t64), g.double())
    torch.testing.assert_close(loss.double(), ref, **LOSS_TOL)
    for got, want in zip(full, ref_grads):
        torch.testing.assert_close(got.double(), want, **LOSS_TOL)
    for mask in ([True, False], [False, True]):
        part = backend.op("_paired_giou_backward")(g, p, t, 1e-6, mask)
        for wanted, got, whole in zip(mask, part, full):
            if wanted:
                assert torch.equal(got, whole)


# ------------------------------------------------------- devices and streams ----


@needs_cuda
@pytest.mark.parametrize("backend", CUDA_KERNEL_BACKENDS)
def test_non_default_stream(backend):
    s, t = (randn((2, 80, 8, 8), torch.float32, "cuda", seed) for seed in (0, 1))
    expected = backend.op("bin_cls_distill")(s, t, None, 1.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = backend.op("bin_cls_distill")(s, t, None, 1.0)
    torch.cuda.current_stream().wait_stream(stream)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
@pytest.mark.parametrize("backend", CUDA_KERNEL_BACKENDS)
def test_inputs_on_another_device(backend):
    s, t = (randn((2, 80, 8, 8), torch.float32, "cuda:1", seed) for seed in (0, 1))
    with torch.cuda.device(0):
        loss, _ = backend.op("bin_cls_distill")(s, t, None, 1.0)
    assert loss.device == s.device
    check_bcdl(backend, s, t)
