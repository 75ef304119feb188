"""Fused, autograd-ready BCKD distillation losses (ICCV 2023) for dense detectors.

Operators (C++ CPU and CUDA kernels, see csrc/):
    torch.ops.bckd.bin_cls_distill, torch.ops.bckd.paired_giou,
    torch.ops.bckd.dfl_giou_distill
Functional losses: bin_cls_distill, giou_loss, loc_distill, bckd_loss.
Modules: BinaryClsDistillLoss, GIoULoss, LocDistillLoss.
References: bckd_kernels.reference.
"""

from . import _ops, reference
from ._ops import HAS_COMPILED
from .functional import bckd_loss, bin_cls_distill, giou_loss, loc_distill, reduce_loss
from .modules import BinaryClsDistillLoss, GIoULoss, LocDistillLoss

__all__ = [
    "HAS_COMPILED",
    "reference",
    "bin_cls_distill",
    "giou_loss",
    "loc_distill",
    "bckd_loss",
    "reduce_loss",
    "BinaryClsDistillLoss",
    "GIoULoss",
    "LocDistillLoss",
]
__version__ = "0.1.0"
