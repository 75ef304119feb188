import os
import subprocess
import sys

import pytest
import torch
from conftest import DTYPES, assert_matches, loc_shape, make

import bckd_kernels
from bckd_kernels import reference

pytestmark = pytest.mark.kernels


def run(fn, s, t, w, beta, gout):
    s = s.detach().requires_grad_()
    loss, mad = fn(s, t, w, beta)
    (grad,) = torch.autograd.grad(loss, s, gout.to(loss.dtype))
    return loss, mad, grad


def check_against_reference(op, s, t, w, beta, gout, dtype):
    loss, mad, grad = run(op, s, t, w, beta, gout)
    assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert mad.dtype == loss.dtype and grad.dtype == dtype and grad.shape == s.shape
    s64, t64 = s.double(), t.double()
    w64 = None if w is None else w.double()
    ref = run(reference.bin_cls_distill, s64, t64, w64, beta, gout)
    lowp = run(lambda *a: reference.bin_cls_distill(*a, upcast=False), s, t, None if w is None else w.to(dtype), beta, gout)
    for name, a, r, lp in zip(("loss", "max_abs_diff", "grad"), (loss, mad, grad), ref, lowp):
        assert_matches(a, r, lp, dtype, name)
    return loss, mad, grad


LAYOUTS = {
    "rows": (37, 13),
    "rows_transposed": (37, 13),
    "rows_strided": (37, 13),
    "nchw": (2, 11, 5, 7),
    "channels_last": (2, 11, 5, 7),
    "nchw_strided": (2, 11, 5, 7),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("beta", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_reference(backend, dtype, layout, beta, weighted):
    backend.require(dtype)
    s, t, w, gout = make(LAYOUTS[layout], layout, dtype, backend.device)
    w = w if weighted else None
    out = check_against_reference(backend.op("bin_cls_distill"), s, t, w, beta, gout, dtype)
    if backend.implementation == "triton" and bckd_kernels.HAS_EXTENSION:
        # The extension's kernels hold the maths of record (csrc/bckd_math.h). A float16 or
        # bfloat16 gradient may round one step apart.
        fused = run(torch.ops.bckd.bin_cls_distill, s, t, w, beta, gout)
        low = dtype != torch.float32
        for a, b, step in zip(out, fused, (1e-5, 1e-5, torch.finfo(dtype).eps if low else 1e-5)):
            torch.testing.assert_close(a, b, rtol=step, atol=1e-2 if low else 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "shape", [(1, 80), (50, 1), (19, 7), (1, 1), (1, 3, 1, 1), (3, 1, 2, 9), (1, 80, 3, 3), (2, 9, 1, 13)]
)
def test_awkward_shapes(backend, dtype, shape):
    layout = "rows" if len(shape) == 2 else "nchw"
    s, t, w, gout = make(shape, layout, dtype, backend.device, seed=1)
    check_against_reference(backend.op("bin_cls_distill"), s, t, w, 1.0, gout, dtype)


@pytest.mark.parametrize("shape", [(0, 80), (4, 0), (0, 80, 3, 3), (2, 80, 0, 5), (2, 0, 3, 3)])
def test_empty(backend, shape):
    s = torch.zeros(shape, device=backend.device, requires_grad=True)
    t = torch.zeros(shape, device=backend.device)
    loss, mad = backend.op("bin_cls_distill")(s, t, None, 1.0)
    assert loss.shape == loc_shape(s) and mad.shape == loc_shape(s)
    assert not loss.any() and not mad.any()
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert grad is not None and grad.shape == s.shape and not grad.any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_zero_gradient_where_scores_agree(backend, dtype):
    backend.require(dtype)
    s = torch.randn(64, 80, dtype=dtype, device=backend.device, requires_grad=True)
    loss, mad = backend.op("bin_cls_distill")(s, s.detach().clone(), None, 1.0)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(mad, torch.zeros_like(mad))
    assert torch.equal(grad, torch.zeros_like(grad))


@pytest.mark.parametrize("dtype", DTYPES)
def test_extreme_logits(backend, dtype):
    backend.require(dtype)
    device = backend.device
    vals = torch.tensor([-1e4, -100.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0, 1e4], dtype=torch.float64)
    s = vals.repeat_interleave(len(vals)).reshape(-1, 1).repeat(1, 3).to(dtype).to(device)
    t = vals.repeat(len(vals)).reshape(-1, 1).repeat(1, 3).to(dtype).to(device)
    gout = torch.full((s.shape[0],), 0.5, dtype=torch.float64, device=device)
    loss, mad, grad = run(backend.op("bin_cls_distill"), s, t, None, 1.0, gout)
    assert torch.isfinite(loss).all() and torch.isfinite(mad).all() and torch.isfinite(grad).all()
    ref = run(reference.bin_cls_distill, s.double(), t.double(), None, 1.0, gout)
    torch.testing.assert_close(loss.double(), ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mad.double(), ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), ref[2], rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("beta", [1.0, 2.0, 1.5])
@pytest.mark.parametrize("layout", ["rows", "nchw_strided"])
def test_gradcheck(backend, beta, layout):
    backend.require(torch.float64)
    shape = (6, 5) if layout == "rows" else (2, 5, 3, 2)
    s, t, w, _ = make(shape, layout, torch.float64, backend.device, scale=2.0)
    s.requires_grad_()
    op = backend.op("bin_cls_distill")
    assert torch.autograd.gradcheck(lambda x: op(x, t, w, beta)[0], (s,))


def test_opcheck(backend):
    s, t, w, gout = make((2, 11, 5, 7), "nchw", torch.float32, backend.device)
    s.requires_grad_()
    op, tests = backend.op("bin_cls_distill"), backend.opcheck_tests
    torch.library.opcheck(op, (s, t, w, 1.0), test_utils=tests)
    torch.library.opcheck(op, (s, t, None, 2.0), test_utils=tests)
    torch.library.opcheck(backend.op("_bin_cls_distill_backward"), (gout.float(), s.detach(), t, w, 1.0),
                          test_utils=tests)


def test_compile_fullgraph(backend):
    backend.require_compiler()
    s, t, w, _ = make((2, 11, 5, 7), "nchw", torch.float32, backend.device)

    def f(s, t, w):
        loss, mad = bckd_kernels.bcdl_loss(s, t, w, avg_factor=torch.tensor(3.0), return_max_abs_diff=True,
                                           backend=backend.functional)
        return loss, mad

    compiled = torch.compile(f, fullgraph=True, backend="inductor" if backend.device == "cuda" else "aot_eager")
    s1, s2 = s.clone().requires_grad_(), s.clone().requires_grad_()
    l1, m1 = f(s1, t, w)
    l2, m2 = compiled(s2, t, w)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(m1, m2)
    l1.backward()
    l2.backward()
    torch.testing.assert_close(s1.grad, s2.grad)


@pytest.mark.parametrize("layout, shape", [("rows", (4099, 80)), ("nchw", (2, 80, 37, 41)), ("nchw", (4, 80, 100, 140))])
def test_deterministic(backend, layout, shape):
    if backend.interpreted:
        pytest.skip("the Triton interpreter runs one program instance after another: there is no race to test")
    s, t, w, gout = make(shape, layout, torch.float32, backend.device)
    op = backend.op("bin_cls_distill")
    a = run(op, s, t, w, 1.0, gout)
    b = run(op, s, t, w, 1.0, gout)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_saves_only_inputs(backend):
    s, t, w, gout = make((2, 11, 5, 7), "nchw", torch.float32, backend.device)
    s.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x) or x, lambda x: x):
        loss, _ = backend.op("bin_cls_distill")(s, t, w, 1.0)
    ptrs = {s.data_ptr(), t.data_ptr(), w.data_ptr()}
    assert saved and all(x.data_ptr() in ptrs for x in saved)


# The processor's best build of ATen's CPU kernels (unless ATEN_CPU_CAPABILITY lowers it).
CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability()


@pytest.mark.skipif(CPU_CAPABILITY not in ("AVX2", "AVX512"),
                    reason=f"the processor has no AVX2 (its build: {CPU_CAPABILITY}): every build would run the "
                           "default one, compared with itself")
def test_baseline_cpu_kernels_match_vectorised():
    """The kernels built for any CPU (ATEN_CPU_CAPABILITY=default) agree with the AVX2 build,
    on NCHW and channels_last maps, and the AVX-512 build gives the AVX2 build's bits (lane
    for lane the same operations). A processor without AVX-512 runs its best build for both."""
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
        "cl = lambda x: x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()\n"
        "s2, rs2 = cl(s), cl(rs)\n"
        "l2, m2 = torch.ops.bckd.bin_cls_distill(s2, t.contiguous(memory_format=torch.channels_last), None, 1.0)\n"
        "l2.sum().backward()\n"
        "d2 = torch.ops.bckd.dfl_giou_distill(rs2, cl(torch.randn(3, 68, 11, 13, generator=g)), 16, 1e-6)\n"
        "d2.sum().backward()\n"
        "torch.save([l, m, s.grad, d, rs.grad, l2, m2, s2.grad, d2, rs2.grad], __import__('sys').argv[1])\n"
    )
    outs = []
    for cap in ("default", "avx2", "avx512"):
        path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"bckd_cap_{cap}_{os.getpid()}.pt")
        env = dict(os.environ, ATEN_CPU_CAPABILITY=cap)
        subprocess.run([sys.executable, "-c", code, path], check=True, env=env)
        outs.append(torch.load(path))
        os.remove(path)
    for a, b in zip(outs[0], outs[1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[1], outs[2]):
        assert torch.equal(a, b)


def test_offsets_beyond_int32(backend):
    """Rows 2^31 elements apart: offsets need 64 bits. torch.empty only reserves
    the storage; the pages of the two rows are the only ones touched."""
    if backend.interpreted:
        pytest.skip("the Triton interpreter copies each argument's whole storage (4 GiB here)")
    device = backend.device
    big_s = torch.empty(2**31 + 160, dtype=torch.bfloat16, device=device)
    big_t = torch.empty(2**31 + 160, dtype=torch.bfloat16, device=device)
    s = big_s.as_strided((2, 80), (2**31, 1))
    t = big_t.as_strided((2, 80), (2**31, 1))
    g = torch.Generator().manual_seed(0)
    s.copy_(torch.randn(2, 80, generator=g).to(device))
    t.copy_(torch.randn(2, 80, generator=g).to(device))
    loss, mad = backend.op("bin_cls_distill")(s, t, None, 1.0)
    ref_loss, ref_mad = reference.bin_cls_distill(s.double(), t.double())
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mad.double(), ref_mad, rtol=1e-5, atol=1e-6)
