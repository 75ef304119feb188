"""Functional losses on top of the fused ops, reduced the mmdetection way.

Every function takes ``backend``:

- ``"auto"``: the extension's op for the inputs' device (C++ on CPU, CUDA on
  GPU), or the reference when the extension is missing;
- ``"cpu"`` / ``"cuda"``: the extension's op, whose inputs must be on that device;
- ``"triton"``: the Triton ops of :mod:`bckd_kernels.triton_ops` (CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``);
- ``"reference"``: :mod:`bckd_kernels.reference` (pure PyTorch autograd).

Reduction: ``"none"`` returns the per-location loss; ``"sum"`` its sum;
``"mean"`` its mean, or ``sum / (avg_factor + eps)`` when ``avg_factor`` is
given (``eps = finfo(float32).eps``, so the normaliser is the normaliser A of docs/method.md section 4).
``avg_factor`` may be a tensor: nothing here reads it back to the host.
"""

import torch

from . import _contract, _ops, reference

__all__ = ["bcdl_loss", "giou_loss", "ildl_loss", "bckd_loss", "BACKENDS"]

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_EPS = torch.finfo(torch.float32).eps


def _resolve(backend, x):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return "reference"
    if backend == "triton":
        _load_triton()
        return "triton"
    if backend == "auto":
        return "extension" if _ops.HAS_EXTENSION else "reference"
    if not _ops.HAS_EXTENSION:
        raise RuntimeError(f"backend={backend!r} needs the bckd extension, which failed to load: {_ops.LOAD_ERROR}")
    if x.device.type != backend:
        raise ValueError(f"backend={backend!r} but the inputs are on {x.device}")
    return "extension"


def _load_triton():
    try:
        from . import triton_ops  # noqa: F401  (defines torch.ops.bckd.*_triton)
    except ImportError as exc:
        raise RuntimeError(f'backend="triton" needs the triton package: {exc}') from exc


def reduce_loss(loss, avg_factor=None, reduction="mean"):
    """Reduces a per-location loss (mmdetection's ``weight_reduce_loss``).

    The mean of an empty loss is 0, not NaN.
    """
    if reduction == "none":
        return loss
    if reduction == "sum":
        if avg_factor is not None:
            raise ValueError('avg_factor can not be used with reduction="sum"')
        return loss.sum()
    if reduction != "mean":
        raise ValueError(f'reduction must be "none", "mean" or "sum", got {reduction!r}')
    if avg_factor is None:
        return loss.sum() / max(loss.numel(), 1)
    return loss.sum() / (avg_factor + _EPS)


def bcdl_loss(
    student,
    teacher,
    weight=None,
    *,
    beta=1.0,
    avg_factor=None,
    reduction="mean",
    loss_weight=1.0,
    return_max_abs_diff=False,
    backend="auto",
):
    """Binary classification distillation loss (BCDL, docs/method.md section 1).

    Args:
        student: classification logits, ``[N, C]`` (any strides) or a head map
            ``[B, C, H, W]`` read in place.
        teacher: teacher logits, same shape, dtype and device; no gradient.
        weight: per-location weight ``[N]`` / ``[B, H, W]`` (the valid mask).
        beta: exponent of the modulating factor ``|σ(zs) − σ(zt)|``.
        return_max_abs_diff: also return ``max_k |σ(zs) − σ(zt)|`` per location
            (float32, no gradient): the ILDL weight.

    Returns:
        The reduced loss times ``loss_weight``, and the per-location
        ``max_abs_diff`` when asked for.
    """
    kind = _resolve(backend, student)
    if kind == "reference":
        loss, mad = reference.bin_cls_distill(student, teacher, weight, beta)
    elif kind == "triton":
        loss, mad = torch.ops.bckd.bin_cls_distill_triton(student, teacher, weight, float(beta))
    else:
        loss, mad = torch.ops.bckd.bin_cls_distill(student, teacher, weight, float(beta))
    loss = loss_weight * reduce_loss(loss, avg_factor, reduction)
    return (loss, mad) if return_max_abs_diff else loss


def _weighted(op, loss, weight):
    """The per-location loss times a weight of exactly its shape (no broadcasting:
    an [N, 1] weight would silently make an [N, N] loss)."""
    if weight is None:
        return loss
    if not isinstance(weight, torch.Tensor) or tuple(weight.shape) != tuple(loss.shape):
        shape = tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
        raise ValueError(f"{op}: weight must have shape {tuple(loss.shape)} (one value per location), got {shape}")
    return loss * weight


def giou_loss(
    pred, target, weight=None, *, avg_factor=None, reduction="mean", loss_weight=1.0, eps=1e-6, backend="auto"
):
    """``1 − GIoU`` of paired boxes ``[N, 4]`` (x1, y1, x2, y2), the conventions of docs/method.md section 2.

    Gradients flow to both ``pred`` and ``target`` when they require them.
    ``weight`` is per box, ``[N]``.
    """
    kind = _resolve(backend, pred)
    if kind == "reference":
        loss = reference.paired_giou(pred, target, eps)
    elif kind == "triton":
        loss = torch.ops.bckd.paired_giou_triton(pred, target, float(eps))
    else:
        loss = torch.ops.bckd.paired_giou(pred, target, float(eps))
    return loss_weight * reduce_loss(_weighted("giou_loss", loss, weight), avg_factor, reduction)


def ildl_loss(
    student_reg,
    teacher_reg,
    weight=None,
    *,
    reg_max=16,
    avg_factor=None,
    reduction="mean",
    loss_weight=4.0,
    eps=1e-6,
    backend="auto",
):
    """IoU-based localization distillation (ILDL, docs/method.md section 2).

    Args:
        student_reg: GFocal regression logits ``[N, 4·(reg_max+1)]`` or
            ``[B, 4·(reg_max+1), H, W]``, decoded in the kernel.
        teacher_reg: the teacher's, same shape; no gradient.
        weight: per-location ω, ``[N]`` / ``[B, H, W]``: the ``max_abs_diff``
            of :func:`bcdl_loss` times the valid mask.
    """
    _contract.check_reg_max("ildl_loss", reg_max)
    kind = _resolve(backend, student_reg)
    if kind == "reference":
        loss = reference.dfl_giou_distill(student_reg, teacher_reg, reg_max, eps)
    elif kind == "triton":
        loss = torch.ops.bckd.dfl_giou_distill_triton(student_reg, teacher_reg, reg_max, float(eps))
    else:
        loss = torch.ops.bckd.dfl_giou_distill(student_reg, teacher_reg, reg_max, float(eps))
    return loss_weight * reduce_loss(_weighted("ildl_loss", loss, weight), avg_factor, reduction)


def bckd_loss(
    student_cls,
    teacher_cls,
    student_reg,
    teacher_reg,
    valid=None,
    *,
    avg_factor=None,
    beta=1.0,
    cls_weight=1.0,
    loc_weight=4.0,
    reg_max=16,
    backend="auto",
):
    """Both BCKD losses of one FPN level, as the training loop calls them.

    ``valid`` is the per-location mask (1 inside the image, 0 on padding).
    The ILDL weight is ``valid · max_k |σ(zt) − σ(zs)|`` from the BCDL kernel,
    so the classification maps are read once.

    Returns:
        ``{"loss_bcdl": ..., "loss_ildl": ...}``.
    """
    for name, x in (("student_reg", student_reg), ("teacher_reg", teacher_reg)):
        _contract.check_rows("bckd_loss", x, name)
        if _contract.location_shape(x) != _contract.location_shape(student_cls):
            raise ValueError(f"bckd_loss: {name} has locations {_contract.location_shape(x)} but student_cls has "
                             f"{_contract.location_shape(student_cls)}: both maps must come from the same level")
    loss_bcdl, mad = bcdl_loss(
        student_cls,
        teacher_cls,
        valid,
        beta=beta,
        avg_factor=avg_factor,
        loss_weight=cls_weight,
        return_max_abs_diff=True,
        backend=backend,
    )
    omega = mad if valid is None else mad * valid
    loss_ildl = ildl_loss(
        student_reg, teacher_reg, omega, reg_max=reg_max, avg_factor=avg_factor, loss_weight=loc_weight, backend=backend
    )
    return {"loss_bcdl": loss_bcdl, "loss_ildl": loss_ildl}
