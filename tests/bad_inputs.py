"""Invalid arguments for every bckd operator, forward and backward, and a runner
that calls one implementation's operators on one device and prints one JSON line
per case.

test_bad_input.py runs each implementation in its own process, so that a crash
(a kernel reading past a buffer) fails that implementation's test and names the
case it died in, instead of ending the test run.

    python tests/bad_inputs.py IMPLEMENTATION DEVICE
    # extension cpu|cuda|meta (meta: the fake kernels), triton cpu|cuda (cpu: the interpreter), reference cpu
"""

import json
import os
import sys

import torch

# (case id, operator family, argument the error must name, builder). A builder
# takes (device, dtype) and returns the operator's arguments, forward form:
# bcdl (student, teacher, weight, beta), giou (pred, target, eps),
# dfl (student_reg, teacher_reg, reg_max, eps). Backward forms prepend a
# per-location upstream gradient (which the "grad" cases corrupt).


def _loc(x):
    return (x.shape[0],) if x.dim() == 2 else (x.shape[0], x.shape[2], x.shape[3])


def _bcdl(shape=(4, 80), teacher_shape=None, teacher_dtype=None, weight="ones", beta=1.0, student=None):
    def build(device, dtype):
        s = student(device, dtype) if student else torch.randn(shape, device=device, dtype=dtype)
        t = torch.ones(teacher_shape or s.shape, device=device, dtype=teacher_dtype or s.dtype)
        w = torch.ones(_loc(s), device=device) if weight == "ones" else weight(device) if weight else None
        return s, t, w, beta

    return build


def _giou(pred_shape=(4, 4), target_shape=None, target_dtype=None, eps=1e-6):
    def build(device, dtype):
        p = torch.rand(pred_shape, device=device, dtype=dtype)
        t = torch.rand(target_shape or pred_shape, device=device, dtype=target_dtype or dtype)
        return p, t, eps

    return build


def _dfl(channels=68, teacher_channels=None, reg_max=16, eps=1e-6, rows=3):
    def build(device, dtype):
        s = torch.randn(rows, channels, device=device, dtype=dtype)
        t = torch.randn(rows, teacher_channels or channels, device=device, dtype=dtype)
        return s, t, reg_max, eps

    return build


CASES = [
    ("bcdl-teacher-81-classes", "bcdl", "teacher", _bcdl(teacher_shape=(4, 81))),
    ("bcdl-teacher-half", "bcdl", "teacher", _bcdl(teacher_dtype=torch.float16)),
    ("bcdl-weight-5-for-4", "bcdl", "weight", _bcdl(weight=lambda d: torch.ones(5, device=d))),
    ("bcdl-weight-n-by-1", "bcdl", "weight", _bcdl(weight=lambda d: torch.ones(4, 1, device=d))),
    ("bcdl-weight-int64", "bcdl", "weight", _bcdl(weight=lambda d: torch.ones(4, dtype=torch.int64, device=d))),
    ("bcdl-weight-complex", "bcdl", "weight", _bcdl(weight=lambda d: torch.ones(4, dtype=torch.complex64, device=d))),
    ("bcdl-beta-0", "bcdl", "beta", _bcdl(beta=0.0)),
    ("bcdl-beta-negative", "bcdl", "beta", _bcdl(beta=-1.0)),
    ("bcdl-beta-inf", "bcdl", "beta", _bcdl(beta=float("inf"))),
    ("bcdl-beta-nan", "bcdl", "beta", _bcdl(beta=float("nan"))),
    ("bcdl-student-3d", "bcdl", "student", _bcdl(shape=(2, 80, 5), weight=None)),
    ("bcdl-student-1d", "bcdl", "student", _bcdl(shape=(5,), weight=None)),
    ("bcdl-teacher-double", "bcdl", "teacher", _bcdl(teacher_dtype=torch.float64)),
    ("bcdl-student-int", "bcdl", "student",
     _bcdl(student=lambda d, _: torch.ones(4, 80, dtype=torch.int32, device=d), weight=None)),
    ("bcdl-map-teacher-other-h", "bcdl", "teacher", _bcdl(shape=(2, 80, 5, 6), teacher_shape=(2, 80, 4, 6))),
    ("bcdl-map-weight-flat", "bcdl", "weight", _bcdl(shape=(2, 80, 5, 6), weight=lambda d: torch.ones(60, device=d))),
    ("giou-boxes-4x5", "giou", "pred", _giou(pred_shape=(4, 5))),
    ("giou-target-3-for-4", "giou", "target", _giou(target_shape=(3, 4))),
    ("giou-target-half", "giou", "target", _giou(target_dtype=torch.float16)),
    ("giou-boxes-int", "giou", "pred",
     lambda d, _: (torch.ones(3, 4, dtype=torch.int32, device=d), torch.ones(3, 4, dtype=torch.int32, device=d), 1e-6)),
    ("giou-eps-0", "giou", "eps", _giou(eps=0.0)),
    ("giou-eps-inf", "giou", "eps", _giou(eps=float("inf"))),
    ("giou-eps-nan", "giou", "eps", _giou(eps=float("nan"))),
    ("dfl-67-channels", "dfl", "student_reg", _dfl(channels=67)),
    ("dfl-20-channels", "dfl", "student_reg", _dfl(channels=20)),
    ("dfl-reg-max-64-over-8", "dfl", "student_reg", _dfl(channels=8, reg_max=64)),
    ("dfl-reg-max-0", "dfl", "reg_max", _dfl(channels=4, reg_max=0)),
    ("dfl-reg-max-65", "dfl", "reg_max", _dfl(channels=264, reg_max=65)),
    ("dfl-teacher-other-channels", "dfl", "teacher_reg", _dfl(teacher_channels=72)),
    ("dfl-teacher-67-channels", "dfl", "teacher_reg", _dfl(teacher_channels=67)),
    ("dfl-student-3d", "dfl", "student_reg",
     lambda d, t: (torch.rand(3, 68, 2, device=d, dtype=t), torch.rand(3, 68, 2, device=d, dtype=t), 16, 1e-6)),
    ("dfl-eps-inf", "dfl", "eps", _dfl(eps=float("inf"))),
]
# Upstream gradients of the wrong shape, for the backward ops.
GRAD_CASES = [
    ("bcdl-grad-5-for-4", "bcdl", "grad_loss", _bcdl()),
    ("giou-grad-5-for-4", "giou", "grad", _giou()),
    ("dfl-grad-5-for-3", "dfl", "grad", _dfl()),
]

FORWARD = {"bcdl": "bin_cls_distill", "giou": "paired_giou", "dfl": "dfl_giou_distill"}


def _ops(implementation):
    """{family: (forward, backward or None)} of one implementation."""
    ops = torch.ops.bckd
    if implementation == "reference":
        from bckd_kernels import reference

        return {f: (getattr(reference, name), None) for f, name in FORWARD.items()}
    if implementation == "triton":
        import bckd_kernels.triton  # noqa: F401  (registers the *_triton ops)

        return {f: (getattr(ops, name + "_triton"), getattr(ops, f"_{name}_backward_triton"))
                for f, name in FORWARD.items()}
    return {f: (getattr(ops, name), getattr(ops, f"_{name}_backward")) for f, name in FORWARD.items()}


def calls(implementation, device):
    """(case id, argument name, zero-argument call) for every case of an implementation."""
    # Triton takes no float64; float32 exercises the checks of every implementation.
    dtype = torch.float32
    ops = _ops(implementation)
    out = []
    for case, family, arg, build in CASES:
        forward, backward = ops[family]
        out.append((case, arg, lambda f=forward, b=build: f(*b(device, dtype))))
        if backward is not None:
            out.append((case + "-backward", arg, lambda f=backward, b=build: f(_grad_for(b(device, dtype)), *b(device, dtype))))
    for case, family, arg, build in GRAD_CASES:
        backward = ops[family][1]
        if backward is not None:
            out.append((case, arg, lambda f=backward, b=build: f(torch.ones(5, device=device), *b(device, dtype))))
    return out


def _grad_for(args):
    """A valid upstream gradient for the (possibly invalid) first argument."""
    x = args[0]
    if x.dim() in (2, 4):
        return torch.ones(_loc(x), device=x.device)
    return torch.ones(x.shape[0], device=x.device)


def run(implementation, device):
    if implementation == "triton" and device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import bckd_kernels  # noqa: F401  (loads the extension's operators)

    for case, arg, call in calls(implementation, device):
        print(json.dumps({"case": case, "arg": arg, "started": True}), flush=True)
        try:
            call()
            result = {"case": case, "arg": arg, "raised": None, "message": ""}
        except Exception as exc:  # the test judges the type and the message
            result = {"case": case, "arg": arg, "raised": type(exc).__name__, "message": str(exc).splitlines()[0]}
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    run(*sys.argv[1:3])
