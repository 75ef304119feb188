import os

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; it must be on
    # before any module defining @triton.jit kernels is imported.
    os.environ.setdefault("TRITON_INTERPRET", "1")

import bckd_kernels  # noqa: E402

HAS_CUDA = torch.cuda.is_available()

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU"))]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]

# Floor of the error allowed against the float64 reference, relative to the
# largest reference value; the rest of the budget is twice plain PyTorch's
# own error at the same precision (the flash-attention rule).
FLOOR = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def assert_matches(actual, ref64, ref_lowp, dtype, what=""):
    """|actual − ref64| ≤ 2·|ref_lowp − ref64| + floor, in the max norm.

    Where plain PyTorch at low precision overflows (float16 box areas above
    65504) its error is unbounded and bounds nothing: those entries leave the
    low-precision error out, and the kernel, which accumulates in float32, is
    held to the floor there."""
    assert actual.shape == ref64.shape, (what, actual.shape, ref64.shape)
    actual = actual.double()
    ref64 = ref64.double()
    if not actual.numel():
        return
    err = (actual - ref64).abs().max().item()
    lowp_err = (ref_lowp.double() - ref64).abs()
    base = lowp_err[lowp_err.isfinite()].max().item() if lowp_err.isfinite().any() else 0.0
    scale = max(ref64.abs().max().item(), 1.0)
    bound = 2 * base + FLOOR[dtype] * scale
    assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (torch's own error {base:.3g})"


def as_layout(x, layout):
    """Returns x (same values) in the given memory layout.

    nc / nchw: contiguous; *_strided: a non-contiguous view of a larger
    buffer; nchw_last: channels-last; nc_t: column-major.
    """
    if layout in ("nc", "nchw"):
        return x.contiguous()
    if layout == "nc_t":
        return x.t().contiguous().t()
    if layout == "nchw_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout in ("nc_strided", "nchw_strided"):
        pad = list(x.shape)
        pad[-1] = pad[-1] * 2 + 1
        big = torch.zeros(pad, dtype=x.dtype, device=x.device)
        big[..., 1::2][..., : x.shape[-1]] = x
        return big[..., 1::2][..., : x.shape[-1]]
    raise ValueError(layout)
