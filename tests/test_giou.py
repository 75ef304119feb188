import pytest
import torch
import torchvision
from conftest import DEVICES, DTYPES, as_layout, assert_matches

from bckd_kernels import reference

giou = torch.ops.bckd.paired_giou
dfl = torch.ops.bckd.dfl_giou_distill


def random_boxes(n, generator, scale=10.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale + 0.1
    return torch.cat([xy, xy + wh], dim=1)


def box_pairs(n=97, seed=0):
    """Overlapping, disjoint, nested and equal pairs, plus exact ties of coordinates."""
    g = torch.Generator().manual_seed(seed)
    p, t = random_boxes(n, g), random_boxes(n, g)
    t[::7] = p[::7]
    t[1::5, 0::2] += (p[1::5, 0] - t[1::5, 0]).unsqueeze(1)  # same x1
    t[2::6, 1::2] += (p[2::6, 3] - t[2::6, 3]).unsqueeze(1)  # same y2
    return p, t


def grads(fn, p, t, gout, **kw):
    p = p.detach().requires_grad_()
    t = t.detach().requires_grad_()
    loss = fn(p, t, **kw)
    gp, gt = torch.autograd.grad(loss, (p, t), gout.to(loss.dtype))
    return loss, gp, gt


# ---------------------------------------------------------------- paired ----


@pytest.mark.parametrize("device", DEVICES)
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
def test_hand_computed(device, pred, target, expected):
    p = torch.tensor([pred], device=device)
    t = torch.tensor([target], device=device)
    assert giou(p, t).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nc", "nc_t", "nc_strided"])
def test_paired_matches_reference(device, dtype, layout):
    p, t = box_pairs()
    p, t = as_layout(p.to(dtype).to(device), layout), as_layout(t.to(dtype).to(device), layout)
    gout = torch.randn(p.shape[0], dtype=torch.float64, device=device)
    out = grads(giou, p, t, gout)
    ref = grads(reference.paired_giou, p.double(), t.double(), gout)
    lowp = grads(lambda a, b: reference.paired_giou(a, b, upcast=False), p, t, gout)
    for name, a, r, lp in zip(("loss", "grad_pred", "grad_target"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_area_and_inverted_boxes(device):
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
    loss, gp, gt = grads(giou, p, t, gout)
    assert torch.isfinite(loss).all() and torch.isfinite(gp).all() and torch.isfinite(gt).all()
    # Two equal points or segments: I = 0 and U = E = eps, so the loss is 1.
    assert loss[0].item() == 1.0 and loss[1].item() == 1.0
    ref = grads(reference.paired_giou, p, t, gout)
    for a, r in zip((loss, gp, gt), ref):
        torch.testing.assert_close(a, r)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_stays_local(device):
    p, t = box_pairs(16)
    p, t = p.to(device), t.to(device)
    p[3, 1] = float("nan")
    t[9, 2] = float("inf")
    gout = torch.ones(16, dtype=torch.float64, device=device)
    loss, gp, gt = grads(giou, p, t, gout)
    ok = torch.ones(16, dtype=torch.bool, device=device)
    ok[[3, 9]] = False
    assert torch.isfinite(loss[ok]).all() and torch.isfinite(gp[ok]).all() and torch.isfinite(gt[ok]).all()
    assert not torch.isfinite(loss[3])
    ref = grads(reference.paired_giou, p[ok], t[ok], gout[ok])
    torch.testing.assert_close(loss[ok], ref[0])
    torch.testing.assert_close(gp[ok], ref[1])


def test_equals_torchvision_where_eps_does_not_bite():
    """torchvision adds eps to the union and the enclosure, docs/method.md clamps them to
    eps: the two agree to O(eps / area) on boxes of non-negligible area, and
    differ only where the union or the enclosure is below eps (degenerate
    boxes), where torchvision divides by (area + eps) and this op by eps."""
    p, t = box_pairs(200, seed=3)
    ours = giou(p, t)
    tv = torchvision.ops.generalized_box_iou_loss(p, t, reduction="none", eps=1e-7)
    torch.testing.assert_close(ours, tv, rtol=0, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_paired_gradcheck(device):
    p, t = box_pairs(12, seed=5)
    p, t = p.to(device).requires_grad_(), t.to(device).requires_grad_()
    # Exact coordinate ties are kinks of min/max: keep gradcheck off them.
    p = (p + 0.01 * torch.arange(48, dtype=torch.float64, device=device).reshape(12, 4)).detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: giou(a, b, 1e-6), (p, t))


# ------------------------------------------------------------------- DFL ----


def make_reg(shape, dtype, device, layout, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    n = (shape[0],) if len(shape) == 2 else (shape[0], shape[2], shape[3])
    gout = torch.randn(n, generator=g, dtype=torch.float64)
    return as_layout(s.to(device), layout), as_layout(t.to(device), layout), gout.to(device)


def dfl_grads(fn, s, t, gout, reg_max):
    s = s.detach().requires_grad_()
    loss = fn(s, t, reg_max, 1e-6)
    (g,) = torch.autograd.grad(loss, s, gout.to(loss.dtype))
    return loss, g


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "layout, shape, reg_max",
    [
        ("nc", (29, 68), 16),
        ("nc_t", (29, 68), 16),
        ("nc_strided", (29, 32), 7),
        ("nchw", (2, 68, 5, 7), 16),
        ("nchw_last", (2, 68, 5, 7), 16),
        ("nchw_strided", (2, 68, 3, 5), 16),
    ],
)
def test_dfl_matches_reference(device, dtype, layout, shape, reg_max):
    s, t, gout = make_reg(shape, dtype, device, layout)
    out = dfl_grads(dfl, s, t, gout, reg_max)
    ref = dfl_grads(reference.dfl_giou_distill, s.double(), t.double(), gout, reg_max)
    lowp = dfl_grads(lambda *a: reference.dfl_giou_distill(*a, upcast=False), s, t, gout, reg_max)
    assert out[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out[1].dtype == dtype and out[1].shape == s.shape
    for name, a, r, lp in zip(("loss", "grad"), out, ref, lowp):
        assert_matches(a, r, lp, dtype, name)


@pytest.mark.parametrize("device", DEVICES)
def test_dfl_equals_paired_giou_on_decoded_boxes(device):
    s, t, _ = make_reg((2, 68, 6, 5), torch.float64, device, "nchw", seed=2)
    fused = dfl(s, t, 16, 1e-6).reshape(-1)
    rows = lambda x: x.movedim(1, -1).reshape(-1, 68)  # noqa: E731
    points = torch.rand(fused.shape[0], 2, dtype=torch.float64, device=device) * 100
    boxes_s = reference.distance_to_box(points, reference.dfl_decode(rows(s)))
    boxes_t = reference.distance_to_box(points, reference.dfl_decode(rows(t)))
    torch.testing.assert_close(fused, giou(boxes_s, boxes_t), rtol=0, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, reg_max", [((5, 20), 4), ((1, 68, 2, 3), 16)])
def test_dfl_gradcheck(device, shape, reg_max):
    s, t, _ = make_reg(shape, torch.float64, device, "nc" if len(shape) == 2 else "nchw", seed=4)
    s.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: dfl(x, t, reg_max, 1e-6), (s,))


@pytest.mark.parametrize("device", DEVICES)
def test_dfl_identical_inputs(device):
    s, _, _ = make_reg((3, 68, 4, 4), torch.float32, device, "nchw")
    s.requires_grad_()
    loss = dfl(s, s.detach(), 16, 1e-6)
    assert loss.abs().max().item() < 1e-6
    (g,) = torch.autograd.grad(loss.sum(), s)
    assert g.abs().max().item() < 1e-6


# ----------------------------------------------------------------- both ----

OPS = {
    "paired_giou": lambda device: (giou, box_pairs(11)[0].float().to(device), box_pairs(11)[1].float().to(device), ()),
    "dfl_giou_distill": lambda device: (dfl, *make_reg((2, 68, 3, 4), torch.float32, device, "nchw")[:2], (16, 1e-6)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_empty(device, name):
    fn, a, b, extra = OPS[name](device)
    a, b = a[:0].requires_grad_(), b[:0]
    loss = fn(a, b, *extra)
    assert loss.numel() == 0
    (g,) = torch.autograd.grad(loss.sum(), a)
    assert g is not None and g.shape == a.shape
    assert torch.ops.bckd.paired_giou(torch.zeros(0, 4, device=device), torch.zeros(0, 4, device=device)).shape == (0,)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    p, t = (x.float().to(device) for x in box_pairs(11))
    torch.library.opcheck(giou, (p.requires_grad_(), t.requires_grad_(), 1e-6))
    g = torch.randn(11, device=device)
    torch.library.opcheck(torch.ops.bckd._paired_giou_backward, (g, p.detach(), t.detach(), 1e-6))
    s, rt, gout = make_reg((2, 68, 3, 4), torch.float32, device, "nchw")
    torch.library.opcheck(dfl, (s.requires_grad_(), rt, 16, 1e-6))
    torch.library.opcheck(torch.ops.bckd._dfl_giou_distill_backward, (gout.float(), s.detach(), rt, 16, 1e-6))


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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(OPS))
def test_compile_fullgraph(device, name):
    fn, a, b, extra = OPS[name](device)
    f = lambda x, y: fn(x, y, *extra).sum()  # noqa: E731
    compiled = torch.compile(f, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    a1, a2 = a.clone().requires_grad_(), a.clone().requires_grad_()
    f(a1, b).backward()
    out = compiled(a2, b)
    out.backward()
    torch.testing.assert_close(out, f(a, b))
    torch.testing.assert_close(a1.grad, a2.grad)


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic(device):
    s, t, gout = make_reg((2, 68, 31, 33), torch.float32, device, "nchw")
    assert all(torch.equal(x, y) for x, y in zip(dfl_grads(dfl, s, t, gout, 16), dfl_grads(dfl, s, t, gout, 16)))
    p, q = (x.float().to(device) for x in box_pairs(5000))
    g = torch.randn(5000, device=device)
    assert all(torch.equal(x, y) for x, y in zip(grads(giou, p, q, g), grads(giou, p, q, g)))
