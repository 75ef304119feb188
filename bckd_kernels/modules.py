"""``nn.Module`` wrappers with the mmdetection loss call signature
``forward(pred, target, weight=None, avg_factor=None, reduction_override=None)``.
"""

from torch import nn

from . import functional as F

__all__ = ["BinaryClsDistillLoss", "GIoULoss", "LocDistillLoss"]


class _Loss(nn.Module):
    def __init__(self, *, reduction="mean", loss_weight=1.0, backend="auto"):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f'reduction must be "none", "mean" or "sum", got {reduction!r}')
        self.reduction = reduction
        self.loss_weight = loss_weight
        self.backend = backend

    def _reduction(self, reduction_override):
        return reduction_override if reduction_override is not None else self.reduction

    def extra_repr(self):
        return f"reduction={self.reduction!r}, loss_weight={self.loss_weight}, backend={self.backend!r}"


class BinaryClsDistillLoss(_Loss):
    """BCDL (SPEC section 1). ``weight`` is per location (the valid mask)."""

    def __init__(self, *, beta=1.0, reduction="mean", loss_weight=1.0, backend="auto"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, backend=backend)
        self.beta = beta

    def forward(self, student, teacher, weight=None, avg_factor=None, reduction_override=None):
        return F.bin_cls_distill(
            student,
            teacher,
            weight,
            beta=self.beta,
            avg_factor=avg_factor,
            reduction=self._reduction(reduction_override),
            loss_weight=self.loss_weight,
            backend=self.backend,
        )


class GIoULoss(_Loss):
    """``1 − GIoU`` of paired boxes with SPEC's clamps."""

    def __init__(self, *, eps=1e-6, reduction="mean", loss_weight=1.0, backend="auto"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, backend=backend)
        self.eps = eps

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        return F.giou_loss(
            pred,
            target,
            weight,
            avg_factor=avg_factor,
            reduction=self._reduction(reduction_override),
            loss_weight=self.loss_weight,
            eps=self.eps,
            backend=self.backend,
        )


class LocDistillLoss(_Loss):
    """ILDL (SPEC section 2) on GFocal regression logits; ``weight`` is ω."""

    def __init__(self, *, reg_max=16, eps=1e-6, reduction="mean", loss_weight=4.0, backend="auto"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, backend=backend)
        self.reg_max = reg_max
        self.eps = eps

    def forward(self, student_reg, teacher_reg, weight=None, avg_factor=None, reduction_override=None):
        return F.loc_distill(
            student_reg,
            teacher_reg,
            weight,
            reg_max=self.reg_max,
            avg_factor=avg_factor,
            reduction=self._reduction(reduction_override),
            loss_weight=self.loss_weight,
            eps=self.eps,
            backend=self.backend,
        )
