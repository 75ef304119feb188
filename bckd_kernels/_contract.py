"""What every bckd operator accepts and returns, written once for Python.

The fake (meta) kernels, the Triton operators and the references check their
arguments here, so that ``torch.compile``, meta tensors and every backend refuse
the same inputs with the same message; the C++ operators keep the same rules in
csrc/layout.h and csrc/ops_host.h. Every refusal is a ``ValueError`` (C++:
``TORCH_CHECK_VALUE``) that names the operator and the argument.

Inputs are per-location rows: ``[N, C]`` or a head map ``[B, C, H, W]`` (channels
in dimension 1), read in place whatever the strides. Per-location tensors
(weights, upstream gradients, losses) are ``[N]`` or ``[B, H, W]``.
"""

import math

import torch

# Largest reg_max of the fused DFL kernels (65 bins per edge).
MAX_REG_MAX = 64
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _dtype_names(dtypes):
    names = [str(d).replace("torch.", "") for d in dtypes]
    return ", ".join(names[:-1]) + " or " + names[-1]


def location_shape(x):
    """Shape of the per-location output of rows ``x``: ``[N]`` or ``[B, H, W]``."""
    return (x.shape[0],) if x.dim() == 2 else (x.shape[0], x.shape[2], x.shape[3])


def loss_dtype(x):
    """Per-location outputs are float32, float64 for float64 inputs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def beta_mode(beta):
    """The kernels' code path for |d|^β: 1 (β = 1), 2 (β = 2), 0 (any other β)."""
    return 1 if beta == 1.0 else 2 if beta == 2.0 else 0


def _fail(op, message):
    raise ValueError(f"{op}: {message}")


def check_rows(op, x, name, dtypes=FLOAT_DTYPES):
    if not isinstance(x, torch.Tensor):
        _fail(op, f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() not in (2, 4):
        _fail(op, f"{name} must be [N, C] or [B, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        _fail(op, f"{name} must be {_dtype_names(dtypes)}, got {x.dtype}")


def check_pair(op, s, s_name, t, t_name, dtypes=FLOAT_DTYPES):
    """A student/teacher (or pred/target) pair: same shape, dtype and device."""
    check_rows(op, s, s_name, dtypes)
    if not isinstance(t, torch.Tensor):
        _fail(op, f"{t_name} must be a tensor, got {type(t).__name__}")
    if t.shape != s.shape:
        _fail(op, f"{t_name} shape {tuple(t.shape)} must equal {s_name} shape {tuple(s.shape)}")
    if t.dtype != s.dtype:
        _fail(op, f"{t_name} dtype {t.dtype} must equal {s_name} dtype {s.dtype}")
    if t.device != s.device:
        _fail(op, f"{t_name} is on {t.device} but {s_name} is on {s.device}")


def check_per_location(op, v, name, like):
    """A weight or upstream gradient: one float (or bool) per location of ``like``."""
    if not isinstance(v, torch.Tensor):
        _fail(op, f"{name} must be a tensor, got {type(v).__name__}")
    shape = location_shape(like)
    if tuple(v.shape) != shape:
        _fail(op, f"{name} must have shape {shape} (one value per location), got {tuple(v.shape)}")
    if v.device != like.device:
        _fail(op, f"{name} is on {v.device} but the inputs are on {like.device}")
    if not (v.dtype.is_floating_point or v.dtype == torch.bool):
        _fail(op, f"{name} must be a floating point or bool tensor, got {v.dtype}")


def check_positive(op, value, name):
    """A finite, positive float (β, eps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(op, f"{name} must be a number, got {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        _fail(op, f"{name} must be finite and > 0, got {value}")


def check_reg_max(op, reg_max):
    if isinstance(reg_max, bool) or not isinstance(reg_max, int):
        _fail(op, f"reg_max must be an int, got {reg_max!r}")
    if not 1 <= reg_max <= MAX_REG_MAX:
        _fail(op, f"reg_max must be in [1, {MAX_REG_MAX}], got {reg_max}")


def check_bcdl(op, student, teacher, weight, beta, dtypes=FLOAT_DTYPES):
    check_pair(op, student, "student", teacher, "teacher", dtypes)
    if weight is not None:
        check_per_location(op, weight, "weight", student)
    check_positive(op, beta, "beta")


def check_boxes(op, pred, target, eps, dtypes=FLOAT_DTYPES):
    if isinstance(pred, torch.Tensor) and (pred.dim() != 2 or pred.shape[1] != 4):
        _fail(op, f"pred must be [N, 4] boxes (x1, y1, x2, y2), got shape {tuple(pred.shape)}")
    check_pair(op, pred, "pred", target, "target", dtypes)
    check_positive(op, eps, "eps")


def check_dfl(op, student_reg, teacher_reg, reg_max, eps, dtypes=FLOAT_DTYPES):
    check_pair(op, student_reg, "student_reg", teacher_reg, "teacher_reg", dtypes)
    check_reg_max(op, reg_max)
    channels = 4 * (reg_max + 1)
    if student_reg.shape[1] != channels:
        _fail(op, f"student_reg must have 4 * (reg_max + 1) = {channels} channels in dimension 1 "
                  f"for reg_max = {reg_max}, got shape {tuple(student_reg.shape)}")
    check_positive(op, eps, "eps")
