"""Functional losses on top of the fused ops, reduced the mmdetection way.

Every function takes ``backend``:

- ``"auto"``: the extension's op (C++ on CPU, CUDA on GPU), or the reference
  when the extension is missing. No GPU has timed the current kernels against
  Triton yet; until a measurement says otherwise, ``"auto"`` never picks Triton;
- ``"cpu"`` / ``"cuda"``: the extension's op, whose inputs must be on that device;
- ``"triton"``: the Triton ops of :mod:`bckd_kernels.triton` (CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``);
- ``"reference"``: :mod:`bckd_kernels.reference` (pure PyTorch autograd).

Reduction: ``"none"`` returns the per-location loss; ``"sum"`` its sum;
``"mean"`` its mean, or ``sum / (avg_factor + eps)`` when ``avg_factor`` is
given (``eps = finfo(float32).eps``, so the normaliser is the normaliser A of docs/method.md section 4).
``avg_factor`` may be a tensor: nothing here reads it back to the host.
"""

from typing import Callable, NamedTuple

import torch

from . import _contract, _ops, reference

__all__ = ["bcdl_loss", "giou_loss", "ildl_loss", "ildl_weight", "bckd_loss", "bckd_loss_levels", "BACKENDS", "LOSSES"]

BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")
_EPS = torch.finfo(torch.float32).eps


class _Implementations(NamedTuple):
    """What runs one op, for each implementation a backend resolves to."""

    reference: Callable  # bckd_kernels.reference
    extension: str  # torch.ops.bckd.<name>: the C++ or CUDA kernel, as the tensors' device key picks
    triton: str  # torch.ops.bckd.<name>, defined by the Triton package


_OPS = {
    "bin_cls_distill": _Implementations(reference.bin_cls_distill, "bin_cls_distill", "bin_cls_distill_triton"),
    "paired_giou": _Implementations(reference.paired_giou, "paired_giou", "paired_giou_triton"),
    "dfl_giou_distill": _Implementations(reference.dfl_giou_distill, "dfl_giou_distill", "dfl_giou_distill_triton"),
}


def _implementation(backend, x):
    """The implementation ``backend`` runs for inputs like ``x``: "reference", "extension" or "triton"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend in ("reference", "triton"):
        return backend
    if backend == "auto":
        if _ops.HAS_EXTENSION:
            return "extension"
        _ops.warn_fallback()
        return "reference"
    if not _ops.HAS_EXTENSION:
        raise RuntimeError(f"backend={backend!r} needs the bckd extension, which failed to load: {_ops.LOAD_ERROR}")
    if x.device.type != backend:
        raise ValueError(f"backend={backend!r} but the inputs are on {x.device}")
    return "extension"


def _op(name, backend, x):
    """The function that computes op ``name`` on ``backend`` for inputs like ``x``."""
    implementation = _implementation(backend, x)
    impl = getattr(_OPS[name], implementation)
    if implementation == "reference":
        return impl
    if implementation == "triton":
        _load_triton()
    return getattr(torch.ops.bckd, impl)


def _load_triton():
    try:
        from . import triton  # noqa: F401  (defines torch.ops.bckd.*_triton)
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
    loss, mad = _op("bin_cls_distill", backend, student)(student, teacher, weight, float(beta))
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
    loss = _op("paired_giou", backend, pred)(pred, target, float(eps))
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
    loss = _op("dfl_giou_distill", backend, student_reg)(student_reg, teacher_reg, reg_max, float(eps))
    return loss_weight * reduce_loss(_weighted("ildl_loss", loss, weight), avg_factor, reduction)


def _omega(max_abs_diff, valid):
    """ILDL's per-location weight ω = valid · max_k |σ(zt) − σ(zs)| (docs/method.md section 2)."""
    return max_abs_diff if valid is None else max_abs_diff * valid


def ildl_weight(student_cls, teacher_cls, valid=None, *, backend="auto"):
    """ILDL's weight ω from the classification logits alone, without gradient.

    For callers that compute ILDL apart from BCDL (a loss that receives only recorded
    tensors): this reads the classification maps once more, where :func:`bckd_loss`
    takes ω from its BCDL pass. ``valid``: the per-location mask, or None.
    """
    _, mad = _op("bin_cls_distill", backend, student_cls)(student_cls.detach(), teacher_cls.detach(), None, 1.0)
    return _omega(mad, valid)


LOSSES = ("bcdl", "ildl")


def _check_level(op, student_cls, student_reg, teacher_reg):
    for name, x in (("student_reg", student_reg), ("teacher_reg", teacher_reg)):
        _contract.check_rows(op, x, name)
        if _contract.location_shape(x) != _contract.location_shape(student_cls):
            raise ValueError(f"{op}: {name} has locations {_contract.location_shape(x)} but student_cls has "
                             f"{_contract.location_shape(student_cls)}: both maps must come from the same level")


def _level_losses(student_cls, teacher_cls, student_reg, teacher_reg, valid, losses, *, avg_factor, beta,
                  cls_weight, loc_weight, reg_max, backend):
    """The ``losses`` of one level. ILDL's weight ω comes from the BCDL pass, which
    runs on a detached student when BCDL itself is not asked for."""
    student = student_cls if "bcdl" in losses else student_cls.detach()
    loss_bcdl, mad = bcdl_loss(student, teacher_cls, valid, beta=beta, avg_factor=avg_factor, loss_weight=cls_weight,
                               return_max_abs_diff=True, backend=backend)
    out = {"loss_bcdl": loss_bcdl} if "bcdl" in losses else {}
    if "ildl" in losses:
        out["loss_ildl"] = ildl_loss(student_reg, teacher_reg, _omega(mad, valid), reg_max=reg_max, avg_factor=avg_factor,
                                     loss_weight=loc_weight, backend=backend)
    return out


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
    """Both BCKD losses of one FPN level (:func:`bckd_loss_levels` sums them over levels).

    ``valid`` is the per-location mask (1 inside the image, 0 on padding).
    The ILDL weight is ``valid · max_k |σ(zt) − σ(zs)|`` from the BCDL kernel,
    so the classification maps are read once.

    Returns:
        ``{"loss_bcdl": ..., "loss_ildl": ...}``.
    """
    _check_level("bckd_loss", student_cls, student_reg, teacher_reg)
    return _level_losses(student_cls, teacher_cls, student_reg, teacher_reg, valid, LOSSES, avg_factor=avg_factor,
                         beta=beta, cls_weight=cls_weight, loc_weight=loc_weight, reg_max=reg_max, backend=backend)


def bckd_loss_levels(student_cls, teacher_cls, student_reg, teacher_reg, valid=None, *, avg_factor=None,
                     pos_per_level=None, losses=LOSSES, beta=1.0, cls_weight=1.0, loc_weight=4.0, reg_max=16,
                     backend="auto"):
    """BCDL and/or ILDL summed over FPN levels, as the training loop calls them.

    Args:
        student_cls, teacher_cls: per-level class logits, lists of ``[B, C, H_l, W_l]``.
        student_reg, teacher_reg: per-level regression logits, lists of
            ``[B, 4·(reg_max+1), H_l, W_l]``.
        valid: per-level masks ``[B, H_l, W_l]`` (1 inside the image, 0 on
            padding), a list, or None for all valid.
        avg_factor: the normaliser of every level's losses.
        pos_per_level: ``[L]`` positives per level; a level without any is
            multiplied by 0 (on the device: no host synchronisation). None: every
            level counts.
        losses: the losses to return, ``"bcdl"`` and/or ``"ildl"``. ILDL alone
            still runs BCDL's kernel, for ω, on the detached student maps.
        beta, cls_weight, loc_weight, reg_max, backend: as in :func:`bckd_loss`.

    Returns:
        ``{"loss_bcdl": ..., "loss_ildl": ...}``, the ones asked for.
    """
    levels = len(student_cls)
    if not losses or any(name not in LOSSES for name in losses):
        raise ValueError(f"bckd_loss_levels: losses must name some of {LOSSES}, got {losses!r}")
    valid = [None] * levels if valid is None else valid
    if not len(teacher_cls) == len(student_reg) == len(teacher_reg) == len(valid) == levels:
        raise ValueError(f"bckd_loss_levels: {levels} student_cls levels, {len(teacher_cls)} teacher_cls, "
                         f"{len(student_reg)} student_reg, {len(teacher_reg)} teacher_reg, {len(valid)} valid")
    gate = None if pos_per_level is None else (pos_per_level > 0).to(student_cls[0].dtype)  # [L]
    per_level = []
    for level in range(levels):
        _check_level("bckd_loss_levels", student_cls[level], student_reg[level], teacher_reg[level])
        out = _level_losses(student_cls[level], teacher_cls[level], student_reg[level], teacher_reg[level],
                            valid[level], losses, avg_factor=avg_factor, beta=beta, cls_weight=cls_weight,
                            loc_weight=loc_weight, reg_max=reg_max, backend=backend)
        per_level.append(out if gate is None else {k: gate[level] * v for k, v in out.items()})
    return {f"loss_{name}": sum(out[f"loss_{name}"] for out in per_level) for name in LOSSES if name in losses}
