"""Loads the extension's operators (the C++ and CUDA kernels) and registers their fake kernels.

The schemas, the CPU/CUDA kernels and the autograd of the extension's operators
come from ``bckd_kernels._C`` (csrc/; autograd in csrc/autograd.cpp). If it
cannot be loaded, ``HAS_EXTENSION`` is False and the functional API falls back to
the pure-PyTorch reference; the first loss that does so warns why (once), so that
a user of the Triton backend alone is not warned about an extension it never
calls. The Triton
operators (bckd_kernels/triton/) register their own autograd and do not need
this module.
"""

import warnings

import torch

from . import _contract

HAS_EXTENSION = False
LOAD_ERROR = None

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.bckd.*)

    HAS_EXTENSION = True
except (ImportError, OSError) as exc:
    LOAD_ERROR = exc
_warned = False


def warn_fallback():
    """Warns, once, that the extension did not load and the reference runs instead."""
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            f"bckd_kernels: the bckd extension could not be loaded ({LOAD_ERROR}); using the pure-PyTorch "
            "reference instead. Build it with `pip install -e . --no-build-isolation`.",
            RuntimeWarning,
            stacklevel=4,
        )


def _new_per_location(x):
    return x.new_empty(_contract.location_shape(x), dtype=_contract.loss_dtype(x))


def _register():
    lib = "bckd::"

    # ------------------------------------------------------------- fakes ----
    # The same checks as the kernels, so torch.compile and meta tensors refuse
    # what the kernels refuse.
    @torch.library.register_fake(lib + "bin_cls_distill")
    def _(student, teacher, weight, beta):
        _contract.check_bcdl("bin_cls_distill", student, teacher, weight, beta)
        return _new_per_location(student), _new_per_location(student)

    @torch.library.register_fake(lib + "_bin_cls_distill_backward")
    def _(grad_loss, student, teacher, weight, beta):
        _contract.check_bcdl("_bin_cls_distill_backward", student, teacher, weight, beta)
        _contract.check_per_location("_bin_cls_distill_backward", grad_loss, "grad_loss", student)
        return torch.empty_like(student)

    @torch.library.register_fake(lib + "paired_giou")
    def _(pred, target, eps=1e-6):
        _contract.check_boxes("paired_giou", pred, target, eps)
        return _new_per_location(pred)

    @torch.library.register_fake(lib + "_paired_giou_backward")
    def _(grad, pred, target, eps, output_mask=(True, True)):
        _contract.check_boxes("_paired_giou_backward", pred, target, eps)
        _contract.check_per_location("_paired_giou_backward", grad, "grad", pred)
        return (torch.empty_like(pred) if output_mask[0] else None,
                torch.empty_like(target) if output_mask[1] else None)

    @torch.library.register_fake(lib + "dfl_giou_distill")
    def _(student_reg, teacher_reg, reg_max=16, eps=1e-6):
        _contract.check_dfl("dfl_giou_distill", student_reg, teacher_reg, reg_max, eps)
        return _new_per_location(student_reg)

    @torch.library.register_fake(lib + "_dfl_giou_distill_backward")
    def _(grad, student_reg, teacher_reg, reg_max, eps):
        _contract.check_dfl("_dfl_giou_distill_backward", student_reg, teacher_reg, reg_max, eps)
        _contract.check_per_location("_dfl_giou_distill_backward", grad, "grad", student_reg)
        return torch.empty_like(student_reg)


if HAS_EXTENSION:
    _register()
