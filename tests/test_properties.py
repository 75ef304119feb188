"""Property tests: random shapes, memory layouts, dtypes and values, non-finite
ones included, on the C++ and Triton operators against the float64 reference.
Per location: the loss is finite exactly where the reference's is, equal to it
within the dtype's tolerance where finite, and so is the gradient wherever the
location's inputs are finite."""

import math

import pytest
import torch
from conftest import HAS_CUDA, as_layout, assert_matches, loc_shape

import bckd_kernels
from bckd_kernels import reference

hypothesis = pytest.importorskip("hypothesis")
pytest.importorskip("triton")
import bckd_kernels.triton  # noqa: E402,F401
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = [pytest.mark.kernels,
              pytest.mark.skipif(not bckd_kernels.HAS_EXTENSION, reason="the bckd extension did not load")]
DEVICE = "cuda" if HAS_CUDA else "cpu"
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
EXTREMES = [math.nan, math.inf, -math.inf, 0.0, 40.0, -40.0]
BACKENDS = {
    "bcdl": (torch.ops.bckd.bin_cls_distill, torch.ops.bckd.bin_cls_distill_triton),
    "dfl": (torch.ops.bckd.dfl_giou_distill, torch.ops.bckd.dfl_giou_distill_triton),
}


@st.composite
def rows(draw, channels):
    """(student, teacher) of one random layout and dtype, a few special values."""
    layout = draw(st.sampled_from(["nc", "nc_t", "nc_strided", "nchw", "nchw_last", "nchw_strided"]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    if layout.startswith("nc_") or layout == "nc":
        shape = (draw(st.integers(1, 24)), channels)
    else:
        shape = (draw(st.integers(1, 2)), channels, draw(st.integers(1, 4)), draw(st.integers(1, 5)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    pair = [torch.randn(shape, generator=g, dtype=torch.float64) * 3 for _ in range(2)]
    for _ in range(draw(st.integers(0, 3))):
        which, index, value = draw(st.integers(0, 1)), draw(st.integers(0, pair[0].numel() - 1)), draw(st.sampled_from(EXTREMES))
        pair[which].view(-1)[index] = value
    return [as_layout(x.to(dtype).to(DEVICE), layout) for x in pair]


def _run(fn, s, t, args, gout, **kw):
    """(outputs..., gradient of the first output to s under gout)."""
    s = s.detach().requires_grad_()
    out = fn(s, t, *args, **kw)
    out = out if isinstance(out, tuple) else (out,)
    (g,) = torch.autograd.grad(out[0], s, gout.to(out[0].dtype))
    return (*out, g)


def check(op, ref_fn, s, t, *args):
    dtype = s.dtype
    loc = loc_shape(s)
    gout = torch.linspace(-1, 1, math.prod(loc), dtype=torch.float64, device=s.device).reshape(loc)
    *out, g = _run(op, s, t, args, gout)
    *ref, rg = _run(ref_fn, s.double(), t.double(), args, gout)
    *lowp, lg = _run(ref_fn, s, t, args, gout, upcast=False)
    for name, a, r, lp in zip(("loss", "max_abs_diff"), out, ref, lowp):
        assert torch.equal(a.isfinite().cpu(), r.isfinite().cpu()), f"{name}: finite at other locations"
        finite = r.isfinite()
        assert_matches(a[finite], r[finite], lp[finite], dtype, name)
    ok = (s.isfinite().all(1) & t.isfinite().all(1)).to(s.device)  # locations whose inputs are all finite
    g, rg, lg = (x.movedim(1, -1)[ok] for x in (g, rg, lg))
    assert g.isfinite().all(), "gradient: non-finite where every input is finite"
    assert_matches(g, rg, lg, dtype, "gradient")


@pytest.mark.parametrize("backend", [0, 1], ids=["extension", "triton"])
@SETTINGS
@given(data=st.data())
def test_bin_cls_distill_matches_reference(backend, data):
    s, t = data.draw(rows(data.draw(st.integers(1, 40))))
    beta = data.draw(st.sampled_from([1.0, 2.0, 1.5, 0.5]))
    check(BACKENDS["bcdl"][backend], reference.bin_cls_distill, s, t, None, beta)


@pytest.mark.parametrize("backend", [0, 1], ids=["extension", "triton"])
@SETTINGS
@given(data=st.data())
def test_dfl_giou_distill_matches_reference(backend, data):
    reg_max = data.draw(st.sampled_from([1, 7, 15, 16, 40]))
    s, t = data.draw(rows(4 * (reg_max + 1)))
    check(BACKENDS["dfl"][backend], reference.dfl_giou_distill, s, t, reg_max, 1e-6)
