"""Readable pure-PyTorch references of every bckd op, written from docs/method.md.

Tests, benchmarks and the fallback (when the extension is missing) all
use these functions; nothing re-implements them elsewhere. Autograd through
them gives the gradients the fused kernels must match.

Layouts: per-location rows are either ``[N, C]`` or a head map
``[B, C, H, W]`` (channel dimension 1); per-location results are ``[N]`` or
``[B, H, W]``.

Box decoding (``dfl_decode``, ``distance_to_box``) is :mod:`bckd_kernels.decode`'s,
re-exported here for the tests that decode boxes beside the references.

``upcast=True`` (default) computes in float32 at least, as the kernels do
(float64 inputs stay float64); ``upcast=False`` computes in the input dtype,
which measures what plain PyTorch loses at low precision.
"""

import torch
import torch.nn.functional as F

from . import _contract
from .decode import dfl_decode, distance_to_box

__all__ = ["bin_cls_distill", "paired_giou", "dfl_decode", "dfl_giou_distill", "distance_to_box"]


def _compute_dtype(x, upcast):
    return torch.promote_types(x.dtype, torch.float32) if upcast else x.dtype


def _rows(x):
    """[N, C] -> [N, C]; [B, C, H, W] -> [B, H, W, C] (a view)."""
    if x.dim() == 2:
        return x
    if x.dim() == 4:
        return x.movedim(1, -1)
    raise ValueError(f"expected [N, C] or [B, C, H, W], got shape {tuple(x.shape)}")


def bin_cls_distill(student, teacher, weight=None, beta=1.0, *, upcast=True):
    """Binary classification distillation loss (docs/method.md section 1), per location.

    Args:
        student: logits ``[N, C]`` or ``[B, C, H, W]``.
        teacher: logits of the same shape; treated as a constant.
        weight: optional per-location weight, ``[N]`` or ``[B, H, W]``.
        beta: exponent of the modulating factor ``|σ(zs) − σ(zt)|``.

    Returns:
        ``(loss, max_abs_diff)``, both per location, float32 (float64 for
        float64 inputs): ``w · Σ_k |σ(zs) − σ(zt)|^β · BCE(zs, σ(zt))`` and
        ``max_k |σ(zs) − σ(zt)|`` (no gradient).
    """
    _contract.check_bcdl("bin_cls_distill", student, teacher, weight, beta)
    dtype = _compute_dtype(student, upcast)
    zs = _rows(student).to(dtype)  # [..., C]
    zt = _rows(teacher).detach().to(dtype)
    p = zs.sigmoid()
    q = zt.sigmoid()
    d = p - q
    bce = F.binary_cross_entropy_with_logits(zs, q, reduction="none")
    loss = (d.abs().pow(beta) * bce).sum(-1)  # [...]
    if weight is not None:
        loss = loss * weight.to(dtype)
    if zs.shape[-1] == 0:
        max_abs_diff = zs.new_zeros(zs.shape[:-1])
    else:
        max_abs_diff = d.detach().abs().amax(-1)
    out = _contract.loss_dtype(student)
    return loss.to(out), max_abs_diff.to(out)


def _clamp_min(x, lo):
    """max(x, lo) with no gradient at the bound itself and NaN kept, on every
    device (torch.clamp's gradient at the bound has differed between devices)."""
    return torch.where(x <= lo, torch.full_like(x, lo), x)


def paired_giou(pred, target, eps=1e-6, *, upcast=True):
    """``1 − GIoU`` of paired boxes (docs/method.md section 2 conventions), ``[N, 4]`` -> ``[N]``.

    Boxes are ``(x1, y1, x2, y2)``. Union and enclosing area are clamped to
    ``eps`` (not shifted by it); areas are not clamped, so an inverted box has
    a negative area and an empty intersection.
    """
    _contract.check_boxes("paired_giou", pred, target, eps)
    dtype = _compute_dtype(pred, upcast)
    px1, py1, px2, py2 = pred.to(dtype).unbind(-1)
    tx1, ty1, tx2, ty2 = target.to(dtype).unbind(-1)
    iw = _clamp_min(torch.minimum(px2, tx2) - torch.maximum(px1, tx1), 0)
    ih = _clamp_min(torch.minimum(py2, ty2) - torch.maximum(py1, ty1), 0)
    inter = iw * ih
    union = _clamp_min((px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter, eps)
    ew = _clamp_min(torch.maximum(px2, tx2) - torch.minimum(px1, tx1), 0)
    eh = _clamp_min(torch.maximum(py2, ty2) - torch.minimum(py1, ty1), 0)
    enclose = _clamp_min(ew * eh, eps)
    loss = 1 - inter / union + (enclose - union) / enclose
    return loss.to(_contract.loss_dtype(pred))


def dfl_giou_distill(student_reg, teacher_reg, reg_max=16, eps=1e-6, *, upcast=True):
    """ILDL per location: ``1 − GIoU`` of the student's and the teacher's boxes.

    Both are decoded from ``[N, 4 * (reg_max + 1)]`` or
    ``[B, 4 * (reg_max + 1), H, W]`` regression logits and share the location's
    anchor point, taken as the origin. The teacher is a constant.
    Returns ``[N]`` or ``[B, H, W]``.
    """
    _contract.check_dfl("dfl_giou_distill", student_reg, teacher_reg, reg_max, eps)
    dtype = _compute_dtype(student_reg, upcast)
    rs = _rows(student_reg).to(dtype)
    rt = _rows(teacher_reg).detach().to(dtype)
    shape = rs.shape[:-1]
    ds = dfl_decode(rs.reshape(-1, rs.shape[-1]), reg_max)
    dt = dfl_decode(rt.reshape(-1, rt.shape[-1]), reg_max)
    origin = ds.new_zeros(ds.shape[0], 2)
    loss = paired_giou(distance_to_box(origin, ds), distance_to_box(origin, dt), eps, upcast=upcast)
    return loss.reshape(shape).to(_contract.loss_dtype(student_reg))
