import subprocess
import sys

import pytest
import torch
from conftest import DEVICES, ROOT, needs_cuda

import bckd_kernels
from bckd_kernels import functional as F
from bckd_kernels import reference

pytestmark = pytest.mark.kernels


def maps(device, seed=0, b=2, h=6, w=5):
    g = torch.Generator().manual_seed(seed)
    cls_s = torch.randn(b, 7, h, w, generator=g).to(device)
    cls_t = torch.randn(b, 7, h, w, generator=g).to(device)
    reg_s = torch.randn(b, 68, h, w, generator=g).to(device)
    reg_t = torch.randn(b, 68, h, w, generator=g).to(device)
    valid = (torch.rand(b, h, w, generator=g) > 0.2).to(device)
    return cls_s, cls_t, reg_s, reg_t, valid


@pytest.mark.parametrize("device", DEVICES)
def test_reductions(device):
    s, t, *_ = maps(device)
    per_loc, _ = torch.ops.bckd.bin_cls_distill(s, t, None, 1.0)
    af = torch.tensor(3.0, device=device)
    torch.testing.assert_close(bckd_kernels.bcdl_loss(s, t, reduction="none"), per_loc)
    torch.testing.assert_close(bckd_kernels.bcdl_loss(s, t, reduction="sum"), per_loc.sum())
    torch.testing.assert_close(bckd_kernels.bcdl_loss(s, t), per_loc.mean())
    torch.testing.assert_close(
        bckd_kernels.bcdl_loss(s, t, avg_factor=af, loss_weight=2.0),
        2.0 * per_loc.sum() / (3.0 + torch.finfo(torch.float32).eps),
    )
    with pytest.raises(ValueError, match="avg_factor can not be used"):
        bckd_kernels.bcdl_loss(s, t, reduction="sum", avg_factor=af)
    with pytest.raises(ValueError, match="reduction must be"):
        bckd_kernels.bcdl_loss(s, t, reduction="avg")


@pytest.mark.parametrize("device", DEVICES)
def test_empty_mean_is_zero(device):
    s = torch.zeros(0, 80, device=device, requires_grad=True)
    loss = bckd_kernels.bcdl_loss(s, torch.zeros(0, 80, device=device))
    assert loss.item() == 0.0
    loss.backward()
    assert s.grad is not None and s.grad.shape == s.shape


@pytest.mark.parametrize("device", DEVICES)
def test_extension_equals_reference_backend(device):
    s, t, rs, rt, valid = maps(device)
    out = {}
    for backend in ("auto", "reference"):
        leaves = [s.clone().requires_grad_(), rs.clone().requires_grad_()]
        losses = bckd_kernels.bckd_loss(leaves[0], t, leaves[1], rt, valid, avg_factor=torch.tensor(4.0), backend=backend)
        sum(losses.values()).backward()
        out[backend] = [losses["loss_bcdl"], losses["loss_ildl"], leaves[0].grad, leaves[1].grad]
    for a, b in zip(out["auto"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


def test_bckd_loss_is_both_losses():
    s, t, rs, rt, valid = maps("cpu", seed=1)
    af = torch.tensor(5.0)
    got = bckd_kernels.bckd_loss(s, t, rs, rt, valid, avg_factor=af)
    loss, mad = reference.bin_cls_distill(s, t, valid.float())
    omega = mad * valid
    ildl = reference.dfl_giou_distill(rs, rt) * omega
    eps = torch.finfo(torch.float32).eps
    torch.testing.assert_close(got["loss_bcdl"], loss.sum() / (5.0 + eps), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(got["loss_ildl"], 4.0 * ildl.sum() / (5.0 + eps), rtol=2e-5, atol=1e-6)


def test_bckd_loss_levels_is_the_gated_sum_of_levels():
    levels = [maps("cpu", seed=s, h=6 - s, w=5 - s) for s in range(3)]
    s, t, rs, rt, valid = (list(x) for x in zip(*levels))
    s = [x.requires_grad_() for x in s]
    af = torch.tensor(5.0)
    got = bckd_kernels.bckd_loss_levels(s, t, rs, rt, valid, avg_factor=af, pos_per_level=torch.tensor([3, 0, 1]))
    per_level = [bckd_kernels.bckd_loss(*level, avg_factor=af) for level in levels]
    for name in ("loss_bcdl", "loss_ildl"):
        torch.testing.assert_close(got[name], per_level[0][name] + per_level[2][name])
    ildl = bckd_kernels.bckd_loss_levels(s, t, rs, rt, valid, avg_factor=af, losses=("ildl",))
    assert set(ildl) == {"loss_ildl"} and not ildl["loss_ildl"].requires_grad
    torch.testing.assert_close(ildl["loss_ildl"], sum(out["loss_ildl"] for out in per_level))
    with pytest.raises(ValueError, match="losses must name"):
        bckd_kernels.bckd_loss_levels(s, t, rs, rt, valid, losses=("kd",))


def test_modules():
    s, t, rs, rt, valid = maps("cpu", seed=2)
    cls = bckd_kernels.BCDLLoss(beta=2.0, loss_weight=0.5)
    torch.testing.assert_close(cls(s, t, valid), bckd_kernels.bcdl_loss(s, t, valid, beta=2.0, loss_weight=0.5))
    assert cls(s, t, reduction_override="none").shape == (2, 6, 5)
    loc = bckd_kernels.ILDLLoss()
    torch.testing.assert_close(loc(rs, rt, valid, avg_factor=3.0), F.ildl_loss(rs, rt, valid, avg_factor=3.0))
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0]])
    giou = bckd_kernels.GIoULoss(reduction="sum", loss_weight=2.0)
    assert giou(boxes, target).item() == pytest.approx(1.5)
    assert giou(boxes, target, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0)
    assert "loss_weight=2.0" in repr(giou)
    with pytest.raises(ValueError, match="reduction must be"):
        bckd_kernels.GIoULoss(reduction="avg")


def test_loc_module_weights_from_cls_maps():
    s, t, rs, rt, valid = maps("cpu", seed=3)
    s.requires_grad_()
    rs.requires_grad_()
    af = torch.tensor(6.0)
    loc = bckd_kernels.ILDLLoss(loss_weight=2.0)
    got = loc(rs, rt, valid, avg_factor=af, student_cls=s, teacher_cls=t)
    want = bckd_kernels.bckd_loss(s, t, rs, rt, valid, avg_factor=af, loc_weight=2.0)["loss_ildl"]
    torch.testing.assert_close(got, want)
    got.backward()
    assert s.grad is None and rs.grad is not None
    unmasked = loc(rs, rt, student_cls=s, teacher_cls=t, reduction_override="none")
    _, mad = bckd_kernels.bcdl_loss(s, t, return_max_abs_diff=True)
    torch.testing.assert_close(unmasked, 2.0 * mad * reference.dfl_giou_distill(rs, rt), rtol=2e-5, atol=1e-6)
    with pytest.raises(ValueError, match="given together"):
        loc(rs, rt, student_cls=s)


def test_backend_argument():
    s, t, *_ = maps("cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        bckd_kernels.bcdl_loss(s, t, backend="tpu")
    with pytest.raises(ValueError, match="inputs are on cpu"):
        bckd_kernels.bcdl_loss(s, t, backend="cuda")
    torch.testing.assert_close(
        bckd_kernels.bcdl_loss(s, t, backend="cpu"), bckd_kernels.bcdl_loss(s, t, backend="reference")
    )


def test_falls_back_without_the_extension():
    """Without the extension, importing warns nothing; the first loss that falls back to
    the reference warns once."""
    code = (
        "import sys, warnings, torch\n"
        "sys.modules['bckd_kernels._C'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import bckd_kernels\n"
        "assert not bckd_kernels.HAS_EXTENSION and not w, w\n"
        "s = torch.randn(4, 5, requires_grad=True)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    bckd_kernels.bcdl_loss(s, torch.randn(4, 5)).backward()\n"
        "    bckd_kernels.bcdl_loss(s, torch.randn(4, 5))\n"
        "assert [str(x.message).count('bckd extension could not be loaded') for x in w] == [1], w\n"
        "assert s.grad is not None\n"
        "print('fallback ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout


def test_setup_without_torch_explains():
    out = subprocess.run([sys.executable, "-S", "setup.py", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode != 0
    assert "PyTorch is not installed" in out.stderr and "Traceback" not in out.stderr


@needs_cuda
def test_no_host_sync_on_cuda():
    s, t, rs, rt, valid = maps("cuda")
    s.requires_grad_()
    rs.requires_grad_()
    af = torch.tensor(4.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = bckd_kernels.bckd_loss(s, t, rs, rt, valid, avg_factor=af)
        sum(losses.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
