"""Triton kernels of the three losses, exposed as custom ops so that
``torch.compile`` traces into them (``torch.library.triton_op`` + ``wrap_triton``).

They compute what the C++/CUDA operators compute (csrc/bckd_math.h is the
maths of record, written out again here in Triton): float32 accumulation,
64-bit offsets, head maps ``[B, C, H, W]`` read in place through their strides,
deterministic reductions (``tl.sum``/``tl.max`` over a tile, no atomics).
Inputs are float32, float16 or bfloat16. Each call picks the tile's contiguous
dimension from the strides (locations for NCHW maps, channels for
channels_last maps and contiguous rows: the access patterns of common.py), so
that forward and backward read and write with coalesced vector accesses in
both layouts; benchmarks/triton_compile.py checks the compiled code for it.

Operators (autograd registered, gradients to the student / to both boxes), one
module each with its kernels:
    torch.ops.bckd.bin_cls_distill_triton(student, teacher, weight, beta)        bcdl.py
    torch.ops.bckd.paired_giou_triton(pred, target, eps)                         giou.py
    torch.ops.bckd.dfl_giou_distill_triton(student_reg, teacher_reg, reg_max, eps)  dfl.py

On a GPU, block sizes and warps are autotuned over a few configurations
(common.PRESETS), keyed by the location count's power of two (a new
feature-map size reuses its bucket's choice instead of timing every
configuration again); under ``TRITON_INTERPRET=1`` (CPU tensors, the test
suite) one large block keeps the number of program instances small. The
autotuner's choice, which depends on timing, never changes the bits of a
result: the kernels that reduce over a tile of channels tune only among
configurations that reduce in one order (see common.IN_THREAD;
benchmarks/triton_compile.py --check verifies it in the compiled code), so the
results are the same in every process.

This package needs neither the compiled extension nor its loader
(bckd_kernels._ops). Import it after deciding on TRITON_INTERPRET: Triton
reads it when the kernels are defined.
"""

from .bcdl import bin_cls_distill_triton
from .dfl import dfl_giou_distill_triton
from .giou import paired_giou_triton

__all__ = ["bin_cls_distill_triton", "paired_giou_triton", "dfl_giou_distill_triton"]
