"""Loads the compiled operators and registers their fake kernels and autograd.

The schemas and the CPU/CUDA kernels come from ``bckd_kernels._C``
(csrc/). If it cannot be loaded, ``HAS_COMPILED`` is False, a warning says
why (once), and the functional API falls back to the pure-PyTorch reference.
"""

import warnings

import torch

HAS_COMPILED = False
LOAD_ERROR = None

try:
    from . import _C  # noqa: F401  (loading it registers torch.ops.bckd.*)

    HAS_COMPILED = True
except (ImportError, OSError) as exc:
    LOAD_ERROR = exc
    warnings.warn(
        f"bckd_kernels: the compiled kernels could not be loaded ({exc}); using the pure-PyTorch "
        "reference instead. Build them with `pip install -e . --no-build-isolation`.",
        RuntimeWarning,
        stacklevel=2,
    )


def _location_shape(x):
    return (x.shape[0],) if x.dim() == 2 else (x.shape[0], x.shape[2], x.shape[3])


def _loss_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _new_per_location(x):
    return x.new_empty(_location_shape(x), dtype=_loss_dtype(x))


def _register():
    lib = "bckd::"

    # ------------------------------------------------------------- fakes ----
    @torch.library.register_fake(lib + "bin_cls_distill")
    def _(student, teacher, weight, beta):
        return _new_per_location(student), _new_per_location(student)

    @torch.library.register_fake(lib + "_bin_cls_distill_backward")
    def _(grad_loss, student, teacher, weight, beta):
        return torch.empty_like(student)

    @torch.library.register_fake(lib + "paired_giou")
    def _(pred, target, eps=1e-6):
        return _new_per_location(pred)

    @torch.library.register_fake(lib + "_paired_giou_backward")
    def _(grad, pred, target, eps):
        return torch.empty_like(pred), torch.empty_like(target)

    @torch.library.register_fake(lib + "dfl_giou_distill")
    def _(student_reg, teacher_reg, reg_max=16, eps=1e-6):
        return _new_per_location(student_reg)

    @torch.library.register_fake(lib + "_dfl_giou_distill_backward")
    def _(grad, student_reg, teacher_reg, reg_max, eps):
        return torch.empty_like(student_reg)

    for name, autograd in (("bin_cls_distill", bcdl_autograd), ("paired_giou", giou_autograd),
                           ("dfl_giou_distill", dfl_autograd)):
        backward, setup = autograd(getattr(torch.ops.bckd, f"_{name}_backward"))
        torch.library.register_autograd(lib + name, backward, setup_context=setup)


# Autograd of the three losses, given their backward ops (C++/CUDA here, Triton in
# triton_ops.py): (backward, setup_context) for torch.library.register_autograd.


def bcdl_autograd(backward_op):
    """Gradient to the student only; max_abs_diff has none."""

    def setup(ctx, inputs, output):
        student, teacher, weight, beta = inputs
        ctx.save_for_backward(student, teacher, weight)
        ctx.beta = beta
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_loss, grad_max_abs_diff):
        student, teacher, weight = ctx.saved_tensors
        grad = backward_op(grad_loss, student, teacher, weight, ctx.beta) if ctx.needs_input_grad[0] else None
        return grad, None, None, None

    return backward, setup


def giou_autograd(backward_op):
    """Gradients to the boxes that need them."""

    def setup(ctx, inputs, output):
        pred, target, eps = inputs
        ctx.save_for_backward(pred, target)
        ctx.eps = eps

    def backward(ctx, grad):
        pred, target = ctx.saved_tensors
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, None
        grad_pred, grad_target = backward_op(grad, pred, target, ctx.eps)
        return (
            grad_pred if ctx.needs_input_grad[0] else None,
            grad_target if ctx.needs_input_grad[1] else None,
            None,
        )

    return backward, setup


def dfl_autograd(backward_op):
    """Gradient to the student's regression logits only."""

    def setup(ctx, inputs, output):
        student_reg, teacher_reg, reg_max, eps = inputs
        ctx.save_for_backward(student_reg, teacher_reg)
        ctx.reg_max = reg_max
        ctx.eps = eps

    def backward(ctx, grad):
        student_reg, teacher_reg = ctx.saved_tensors
        g = None
        if ctx.needs_input_grad[0]:
            g = backward_op(grad, student_reg, teacher_reg, ctx.reg_max, ctx.eps)
        return g, None, None, None

    return backward, setup


if HAS_COMPILED:
    _register()
