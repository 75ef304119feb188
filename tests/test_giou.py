import pytest
import torch
import torchvision
from conftest import DEVICES, DTYPES, as_layout, assert_compiles, assert_matches, box_pairs, make_reg, needs_extension

from bckd_kernels import reference

pytestmark = pytest.mark.kernels


def grads(fn, p, t, gout, **kw):
    p = p.detach().requires_grad_()
    t = t.detach().requires_grad_()
    loss = fn(p, t, **kw)
    gp, gt = torch.autograd.grad(loss, (p, t), gout.to(loss.dtype))
    return loss, gp, gt


# ---------------------------------------------------------------- paired ----


@pytest.mark.parametrize(
    "pred, target, expected",
    [
        ([0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], 0.0),  # identical
        ([1.0, 1.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], 0.75),  # quarter-size box inside
        ([0.0, 0.0, 1.0, 1.0], [1.0, 0.0, 2.0, 1.0], 1.0),  # touching along an edge
        ([0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 2.0, 2.0], 1.5),  # meeting at one corner
        ([0.0, 0.0, 1.0, 1.0], [3.0, 0.0, 4.0, 1.0], 1.5),  # apart: I = 0, U = 2, E = 4
    ],
)
def test_hand_computed(backend, pred, target, expected):
    p = torch.tensor([pred], device=backend.device)
    t = torch.tensor([target], device=backend.device)
    assert backend.op("paired_giou")(p, t).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["rows", "rows_transposed", "rows_strided"])
def test_paired_matches_reference(backend, dtype, layout):
    backend.require(dtype)
    device = backend.device
    p, t = box_pairs()
    p, t = as_layout(p.to(dtype).to(device), layout), as_layout(t.to(dtype).to(device), layout)
    gout = torch.randn(p.shape[0], dtype=torch.float64, device=device)
    out = grads(backend.op("paired_giou"), p, t, gout)
    ref = grads(reference.paired_giou, p.double(), t.double(), gout)
    lowp = grads(lambda a, b: reference.paired_giou(a, b, upcast=False), p, t, gout)
    for name, a, r, lp in zip(("loss", "grad_pred", "grad_target"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


def test_zero_area_and_inverted_boxes(backend):
    backend.require(torch.float64)
    device = backend.device
    p = torch.tensor(
        [[1, 1, 1, 1], [0, 0, 0, 5], [2, 2, 0, 0], [2, 2, 0, 0], [0, 0, 4, 4], [5, 5, 1, 1]],
        dtype=torch.float64,
        device=device,
    )
    t = torch.tensor(
        [[1, 1, 1, 1], [0, 0, 0, 5], [0, 0, 2, 2], [2, 2, 0, 0], [3, 3, 1, 1], [0, 0, 2, 2]],
        dtype=torch.float64,
        device=device,
    )
    gout = torch.ones(len(p), dtype=torch.float64, device=device)
    loss, gp, gt = grads(backend.op("paired_giou"), p, t, gout)
    assert torch.isfinite(loss).all() and torch.isfinite(gp).all() and torch.isfinite(gt).all()
    # Two equal points or segments: I = 0 and U = E = eps, so the loss is 1.
    assert loss[0].item() == 1.0 and loss[1].item() == 1.0
    ref = grads(reference.paired_giou, p, t, gout)
    for a, r in zip((loss, gp, gt), ref):
        torch.testing.assert_close(a, r)


def test_nonfinite_stays_local(backend):
    backend.require(torch.float64)
    device = backend.device
    p, t = box_pairs(16)
    p, t = p.to(device), t.to(device)
    p[3, 1] = float("nan")
    t[9, 2] = float("inf")
    gout = torch.ones(16, dtype=torch.float64, device=device)
    loss, gp, gt = grads(backend.op("paired_giou"), p, t, gout)
    ok = torch.ones(16, dtype=torch.bool, device=device)
    ok[[3, 9]] = False
    assert torch.isfinite(loss[ok]).all() and torch.isfinite(gp[ok]).all() and torch.isfinite(gt[ok]).all()
    assert not torch.isfinite(loss[3])
    ref = grads(reference.paired_giou, p[ok], t[ok], gout[ok])
    torch.testing.assert_close(loss[ok], ref[0])
    torch.testing.assert_close(gp[ok], ref[1])


@needs_extension
def test_equals_torchvision_where_eps_does_not_bite():
    """torchvision adds eps to the union and the enclosure, docs/method.md clamps them to
    eps: the two agree to O(eps / area) on boxes of non-negligible area, and
    differ only where the union or the enclosure is below eps (degenerate
    boxes), where torchvision divides by (area + eps) and this op by eps."""
    p, t = box_pairs(200, seed=3)
    ours = torch.ops.bckd.paired_giou(p, t)
    tv = torchvision.ops.generalized_box_iou_loss(p, t, reduction="none", eps=1e-7)
    torch.testing.assert_close(ours, tv, rtol=0, atol=1e-6)


def test_paired_gradcheck(backend):
    backend.require(torch.float64)
    device = backend.device
    giou = backend.op("paired_giou")
    p, t = box_pairs(12, seed=5)
    p, t = p.to(device).requires_grad_(), t.to(device).requires_grad_()
    # Exact coordinate ties are kinks of min/max: keep gradcheck off them.
    p = (p + 0.01 * torch.arange(48, dtype=torch.float64, device=device).reshape(12, 4)).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: giou(a, b, 1e-6), (p, t))


# ------------------------------------------------------------------- DFL ----


def dfl_grads(fn, s, t, gout, reg_max):
    s = s.detach().requires_grad_()
    loss = fn(s, t, reg_max, 1e-6)
    (g,) = torch.autograd.grad(loss, s, gout.to(loss.dtype))
    return loss, g


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "layout, shape, reg_max",
    [
        ("rows", (29, 68), 16),
        ("rows_transposed", (29, 68), 16),
        ("rows_strided", (29, 32), 7),
        ("rows", (9, 164), 40),
        ("nchw", (2, 68, 5, 7), 16),
        ("channels_last", (2, 68, 5, 7), 16),
        ("nchw_strided", (2, 68, 3, 5), 16),
    ],
)
def test_dfl_matches_reference(backend, dtype, layout, shape, reg_max):
    backend.require(dtype)
    s, t, gout = make_reg(shape, layout, dtype, backend.device)
    out = dfl_grads(backend.op("dfl_giou_distill"), s, t, gout, reg_max)
    ref = dfl_grads(reference.dfl_giou_distill, s.double(), t.double(), gout, reg_max)
    lowp = dfl_grads(lambda *a: reference.dfl_giou_distill(*a, upcast=False), s, t, gout, reg_max)
    assert out[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out[1].dtype == dtype and out[1].shape == s.shape
    for name, a, r, lp in zip(("loss", "grad"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


def test_dfl_equals_paired_giou_on_decoded_boxes(backend):
    backend.require(torch.float64)
    device = backend.device
    s, t, _ = make_reg((2, 68, 6, 5), "nchw", torch.float64, device, seed=2)
    fused = backend.op("dfl_giou_distill")(s, t, 16, 1e-6).reshape(-1)
    rows = lambda x: x.movedim(1, -1).reshape(-1, 68)  # noqa: E731
    points = torch.rand(fused.shape[0], 2, dtype=torch.float64, device=device) * 100
    boxes_s = reference.distance_to_box(points, reference.dfl_decode(rows(s)))
    boxes_t = reference.distance_to_box(points, reference.dfl_decode(rows(t)))
    torch.testing.assert_close(fused, backend.op("paired_giou")(boxes_s, boxes_t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape, reg_max", [((5, 20), 4), ((1, 68, 2, 3), 16)])
def test_dfl_gradcheck(backend, shape, reg_max):
    backend.require(torch.float64)
    s, t, _ = make_reg(shape, "rows" if len(shape) == 2 else "nchw", torch.float64, backend.device, seed=4)
    s.requires_grad_()
    dfl = backend.op("dfl_giou_distill")
    assert torch.autograd.gradcheck(lambda x: dfl(x, t, reg_max, 1e-6), (s,))


def test_dfl_identical_inputs(backend):
    s, _, _ = make_reg((3, 68, 4, 4), "nchw", torch.float32, backend.device)
    s.requires_grad_()
    loss = backend.op("dfl_giou_distill")(s, s.detach(), 16, 1e-6)
    assert loss.abs().max().item() < 1e-6
    (g,) = torch.autograd.grad(loss.sum(), s)
    assert g.abs().max().item() < 1e-6


# ----------------------------------------------------------------- both ----

INPUTS = {
    "paired_giou": lambda device: (*(x.float().to(device) for x in box_pairs(11)), ()),
    "dfl_giou_distill": lambda device: (*make_reg((2, 68, 3, 4), "nchw", torch.float32, device)[:2], (16, 1e-6)),
}


@pytest.mark.parametrize("name", list(INPUTS))
def test_empty(backend, name):
    device = backend.device
    fn = backend.op(name)
    a, b, extra = INPUTS[name](device)
    a, b = a[:0].requires_grad_(), b[:0]
    loss = fn(a, b, *extra)
    assert loss.numel() == 0
    (g,) = torch.autograd.grad(loss.sum(), a)
    assert g is not None and g.shape == a.shape
    giou = backend.op("paired_giou")
    assert giou(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)).shape == (0,)


def test_opcheck(backend):
    device, tests = backend.device, backend.opcheck_tests
    p, t = (x.float().to(device) for x in box_pairs(11))
    torch.library.opcheck(backend.op("paired_giou"), (p.requires_grad_(), t.requires_grad_(), 1e-6), test_utils=tests)
    g = torch.randn(11, device=device)
    torch.library.opcheck(backend.op("_paired_giou_backward"), (g, p.detach(), t.detach(), 1e-6), test_utils=tests)
    s, rt, gout = make_reg((2, 68, 3, 4), "nchw", torch.float32, device)
    torch.library.opcheck(backend.op("dfl_giou_distill"), (s.requires_grad_(), rt, 16, 1e-6), test_utils=tests)
    torch.library.opcheck(backend.op("_dfl_giou_distill_backward"), (gout.float(), s.detach(), rt, 16, 1e-6),
                          test_utils=tests)


@needs_extension
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mask", [(True, False), (False, True)])
def test_backward_computes_only_the_gradients_asked_for(device, mask):
    p, t = (x.float().to(device) for x in box_pairs(11))
    g = torch.randn(11, device=device)
    backward = torch.ops.bckd._paired_giou_backward
    torch.library.opcheck(backward, (g, p, t, 1e-6, list(mask)))
    for wanted, got, full in zip(mask, backward(g, p, t, 1e-6, list(mask)), backward(g, p, t, 1e-6)):
        if wanted:
            torch.testing.assert_close(got, full, rtol=0, atol=0)
        else:
            assert got is None


@pytest.mark.parametrize("name", list(INPUTS))
def test_compile_fullgraph(backend, name):
    backend.require_compiler()
    fn = backend.op(name)
    a, b, extra = INPUTS[name](backend.device)
    assert_compiles(lambda x, y: fn(x, y, *extra).sum(), a, b)


def test_deterministic(backend):
    if backend.interpreted:
        pytest.skip("the Triton interpreter runs one program instance after another: there is no race to test")
    device = backend.device
    giou, dfl = backend.op("paired_giou"), backend.op("dfl_giou_distill")
    s, t, gout = make_reg((2, 68, 31, 33), "nchw", torch.float32, device)
    assert all(torch.equal(x, y) for x, y in zip(dfl_grads(dfl, s, t, gout, 16), dfl_grads(dfl, s, t, gout, 16)))
    p, q = (x.float().to(device) for x in box_pairs(5000))
    g = torch.randn(5000, device=device)
    assert all(torch.equal(x, y) for x, y in zip(grads(giou, p, q, g), grads(giou, p, q, g)))
