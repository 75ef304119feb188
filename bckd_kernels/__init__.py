"""Fused, autograd-ready BCKD distillation losses (ICCV 2023) for dense detectors.

Operators (C++ CPU and CUDA kernels, see csrc/):
    torch.ops.bckd.bin_cls_distill, torch.ops.bckd.paired_giou,
    torch.ops.bckd.dfl_giou_distill
Functional losses: bcdl_loss, giou_loss, ildl_loss, bckd_loss (one level), bckd_loss_levels;
    ildl_weight (ILDL's ω on its own); BACKENDS, the values of every ``backend`` argument.
Modules: BCDLLoss, GIoULoss, ILDLLoss.
References: bckd_kernels.reference.
Box decoding of GFocal heads: bckd_kernels.decode.
"""

from . import _ops, reference
from ._ops import HAS_EXTENSION
from .functional import BACKENDS, bckd_loss, bckd_loss_levels, bcdl_loss, giou_loss, ildl_loss, ildl_weight, reduce_loss
from .modules import BCDLLoss, GIoULoss, ILDLLoss

__all__ = [
    "HAS_EXTENSION",
    "BACKENDS",
    "reference",
    "bcdl_loss",
    "giou_loss",
    "ildl_loss",
    "ildl_weight",
    "bckd_loss",
    "bckd_loss_levels",
    "reduce_loss",
    "BCDLLoss",
    "GIoULoss",
    "ILDLLoss",
]
__version__ = "0.1.0"
