"""``nn.Module`` wrappers with the mmdetection loss call signature
``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``.
"""

from torch import nn

from . import functional as F

__all__ = ["BCDLLoss", "GIoULoss", "ILDLLoss"]


class _Loss(nn.Module):
    """A functional loss with its reduction, loss weight, backend and ``options`` (the
    loss's own keyword arguments, kept as attributes of the same names)."""

    def __init__(self, *, reduction="mean", loss_weight=1.0, backend="auto", **options):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f'reduction must be "none", "mean" or "sum", got {reduction!r}')
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.backend = backend
        self._options = tuple(options)
        for name, value in options.items():
            setattr(self, name, value)

    def _loss(self, fn, *tensors, avg_factor, reduction_override):
        """``fn(*tensors, ...)`` with this module's reduction, loss weight, backend and options."""
        reduction = reduction_override if reduction_override is not None else self.reduction
        options = {name: getattr(self, name) for name in self._options}
        return fn(*tensors, avg_factor=avg_factor, reduction=reduction, loss_weight=self.loss_weight,
                  backend=self.backend, **options)

    def extra_repr(self):
        options = "".join(f", {name}={getattr(self, name)!r}" for name in self._options)
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}, backend={self.backend!r}{options}"


class BCDLLoss(_Loss):
    """BCDL, ``|σ(zs) − σ(zt)|^β · BCE(zs, σ(zt))`` summed over classes.

    ``student`` / ``teacher``: ``[N, C]`` or ``[B, C, H, W]`` logits;
    ``weight``: per location (the valid mask), ``[N]`` / ``[B, H, W]``.
    """

    def __init__(self, *, beta=1.0, reduction="mean", loss_weight=1.0, backend="auto"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, backend=backend, beta=beta)

    def forward(self, student, teacher, weight=None, avg_factor=None, reduction_override=None):
        return self._loss(F.bcdl_loss, student, teacher, weight, avg_factor=avg_factor,
                          reduction_override=reduction_override)


class GIoULoss(_Loss):
    """``1 − GIoU`` of paired ``[N, 4]`` boxes (x1, y1, x2, y2); ``weight`` is ``[N]``."""

    def __init__(self, *, eps=1e-6, reduction="mean", loss_weight=1.0, backend="auto"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, backend=backend, eps=eps)

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return self._loss(F.giou_loss, pred, target, weight, avg_factor=avg_factor,
                          reduction_override=reduction_override)


class ILDLLoss(_Loss):
    """ILDL: ``1 − GIoU`` of the boxes decoded from GFocal regression logits.

    ``student_reg`` / ``teacher_reg``: ``[N, 4·(reg_max+1)]`` or
    ``[B, 4·(reg_max+1), H, W]``. ``weight`` is the per-location ω, ``[N]`` /
    ``[B, H, W]``: ``max_k |σ(zt) − σ(zs)|`` times the valid mask.

    Frameworks that hand a loss only recorded tensors (mmrazor's distillers)
    cannot pass ω; they pass the classification logits ``student_cls`` /
    ``teacher_cls`` (``[N, C]`` / ``[B, C, H, W]``) instead, and ω becomes
    ``weight · max_k |σ(teacher_cls) − σ(student_cls)|`` (``weight`` then
    being the valid mask or None). That reads the classification maps once
    more; :func:`bckd_kernels.bckd_loss` gets ω from the BCDL pass for free.
    """

    def __init__(self, *, reg_max=16, eps=1e-6, reduction="mean", loss_weight=4.0, backend="auto"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, backend=backend, reg_max=reg_max, eps=eps)

    def forward(
        self,
        student_reg,
        teacher_reg,
        weight=None,
        avg_factor=None,
        reduction_override=None,
        *,
        student_cls=None,
        teacher_cls=None,
    ):
        if (student_cls is None) != (teacher_cls is None):
            raise ValueError("student_cls and teacher_cls must be given together")
        if student_cls is not None:
            weight = F.ildl_weight(student_cls, teacher_cls, weight, backend=self.backend)
        return self._loss(F.ildl_loss, student_reg, teacher_reg, weight, avg_factor=avg_factor,
                          reduction_override=reduction_override)
