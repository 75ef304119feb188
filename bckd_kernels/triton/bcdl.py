"""BCDL (binary classification distillation) in Triton: its maths, its two
kernels and the ops ``bckd::bin_cls_distill_triton`` and
``bckd::_bin_cls_distill_backward_triton`` with their autograd."""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import _contract
from .common import (LOCATIONS, STRIDED, autotune, bucket, channel_count, channel_stride, device_guard, grid, max_nan,
                     per_location, plan, program_locations, register_autograd, row_offsets)

# ---------------------------------------------------------------- maths ----


@triton.jit
def _sigmoid(z):
    """σ(z) and e = exp(−|z|), from one exp."""
    e = tl.exp(-tl.abs(z))
    r = 1.0 / (1.0 + e)
    return tl.where(z >= 0, r, e * r), e, r


@triton.jit
def _log1p_unit(e):
    """log1p(e) for e in [0, 1]: 2·atanh(e / (2 + e)), series in t² (t ≤ 1/3)."""
    t = e / (2.0 + e)
    u = t * t
    s = 1.0 / 13.0
    s = s * u + 1.0 / 11.0
    s = s * u + 1.0 / 9.0
    s = s * u + 1.0 / 7.0
    s = s * u + 1.0 / 5.0
    s = s * u + 1.0 / 3.0
    s = s * u + 1.0
    return 2.0 * t * s


@triton.jit
def _one_minus_exp_neg_small(a):
    """1 − e^(−a) for 0 ≤ a < 0.35: its Taylor series to a⁸."""
    r = 1.0 - a * (1.0 / 8.0)
    r = 1.0 - a * (1.0 / 7.0) * r
    r = 1.0 - a * (1.0 / 6.0) * r
    r = 1.0 - a * (1.0 / 5.0) * r
    r = 1.0 - a * (1.0 / 4.0) * r
    r = 1.0 - a * (1.0 / 3.0) * r
    r = 1.0 - a * (1.0 / 2.0) * r
    return a * r


@triton.jit
def _bcdl_pieces(zs, zt, MODE: tl.constexpr):
    """d = σ(zs) − σ(zt), p(1 − p) and BCE(zs, σ(zt)). For a general β (MODE 0)
    d is computed without cancelling when zs ≈ zt: d = p(1−q)(1 − e^(−δ)) for
    δ = zs − zt ≥ 0 and −q(1−p)(1 − e^δ) otherwise (docs/method.md section 1)."""
    p, es, rs = _sigmoid(zs)
    q, et, rt = _sigmoid(zt)
    softplus = tl.maximum(zs, 0.0) + _log1p_unit(es)
    d = p - q
    if MODE == 0:
        delta = zs - zt
        a = tl.abs(delta)
        one_minus_p = tl.where(zs >= 0, es * rs, rs)
        one_minus_q = tl.where(zt >= 0, et * rt, rt)
        scale = tl.where(delta >= 0, p * one_minus_q, -q * one_minus_p)
        d = tl.where(a < 0.35, scale * _one_minus_exp_neg_small(a), d)
    return d, es * rs * rs, softplus - q * zs


@triton.jit
def _modulator(d, beta, MODE: tl.constexpr):
    """|d|^β and its derivative in d (0 at d = 0)."""
    ad = tl.abs(d)
    if MODE == 1:
        mod = ad
        dmod = tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0))
    elif MODE == 2:
        mod = d * d
        dmod = 2.0 * d
    else:
        mod = tl.where(ad > 0, tl.exp(beta * tl.log(tl.where(ad > 0, ad, 1.0))), 0.0)
        dmod = tl.where(d != 0, beta * mod / tl.where(d != 0, d, 1.0), 0.0)
    return mod, dmod


# -------------------------------------------------------------- kernels ----


@triton.jit
def _class_tile(zs_ptr, zt_ptr, s_row, t_row, s_col, t_col, c0, n_c, lmask, beta, MODE: tl.constexpr,
                BLOCK_C: tl.constexpr):
    """Classes c0 to c0 + BLOCK_C − 1 of a block of locations: their channels k,
    the tile's mask, and per element d, p(1 − p), the BCE and |d|^β with its
    derivative (_bcdl_pieces, _modulator)."""
    k = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
    m = lmask[:, None] & (k < n_c)[None, :]
    zs = tl.load(zs_ptr + s_row[:, None] + k[None, :] * s_col, mask=m, other=0.0).to(tl.float32)
    zt = tl.load(zt_ptr + t_row[:, None] + k[None, :] * t_col, mask=m, other=0.0).to(tl.float32)
    d, pp, bce = _bcdl_pieces(zs, zt, MODE)
    mod, dmod = _modulator(d, beta, MODE)
    return k, m, d, pp, bce, mod, dmod


@autotune("bcdl", "C", "MODE", reduces=True)
@triton.jit
def _bcdl_fwd_kernel(zs_ptr, zt_ptr, w_ptr, loss_ptr, mad_ptr, n_bucket, C, HW, W,
                     s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc, beta,
                     HAS_W: tl.constexpr, MODE: tl.constexpr, ACCESS: tl.constexpr, VEC: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    b, hw, loc, lmask = program_locations(HW, ACCESS, VEC, BLOCK_L)
    s_row = row_offsets(b, hw, W, s_sb, s_sh, s_sw, ACCESS, VEC)
    t_row = row_offsets(b, hw, W, t_sb, t_sh, t_sw, ACCESS, VEC)
    s_col = channel_stride(s_sc, ACCESS, VEC)
    t_col = channel_stride(t_sc, ACCESS, VEC)
    n_c = channel_count(C, ACCESS, VEC)
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    mx = tl.zeros([BLOCK_L], dtype=tl.float32)
    for c0 in range(0, n_c, BLOCK_C):
        k, m, d, pp, bce, mod, dmod = _class_tile(zs_ptr, zt_ptr, s_row, t_row, s_col, t_col, c0, n_c, lmask, beta,
                                                   MODE, BLOCK_C)
        acc += tl.sum(tl.where(m, mod * bce, 0.0), axis=1)
        mx = max_nan(mx, tl.reduce(tl.where(m, tl.abs(d), 0.0), 1, max_nan))
    if HAS_W:
        acc = acc * tl.load(w_ptr + loc, mask=lmask, other=0.0)
    tl.store(loss_ptr + loc, acc, mask=lmask)
    tl.store(mad_ptr + loc, mx, mask=lmask)


@autotune("bcdl", "C", "MODE")
@triton.jit
def _bcdl_bwd_kernel(zs_ptr, zt_ptr, gl_ptr, w_ptr, g_ptr, n_bucket, C, HW, W,
                     s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc, g_sb, g_sh, g_sw, g_sc, beta,
                     HAS_W: tl.constexpr, MODE: tl.constexpr, ACCESS: tl.constexpr, VEC: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    # The forward's reads and tile, plus one per-location scale (upstream
    # gradient times weight, multiplied here rather than in a pass of its own)
    # and one store of the gradient in the student's layout.
    b, hw, loc, lmask = program_locations(HW, ACCESS, VEC, BLOCK_L)
    s_row = row_offsets(b, hw, W, s_sb, s_sh, s_sw, ACCESS, VEC)
    t_row = row_offsets(b, hw, W, t_sb, t_sh, t_sw, ACCESS, VEC)
    g_row = row_offsets(b, hw, W, g_sb, g_sh, g_sw, ACCESS, VEC)
    s_col = channel_stride(s_sc, ACCESS, VEC)
    t_col = channel_stride(t_sc, ACCESS, VEC)
    g_col = channel_stride(g_sc, ACCESS, VEC)
    n_c = channel_count(C, ACCESS, VEC)
    coef = tl.load(gl_ptr + loc, mask=lmask, other=0.0)
    if HAS_W:
        coef = coef * tl.load(w_ptr + loc, mask=lmask, other=0.0)
    for c0 in range(0, n_c, BLOCK_C):
        k, m, d, pp, bce, mod, dmod = _class_tile(zs_ptr, zt_ptr, s_row, t_row, s_col, t_col, c0, n_c, lmask, beta,
                                                   MODE, BLOCK_C)
        grad = (mod * d + dmod * pp * bce) * coef[:, None]
        tl.store(g_ptr + g_row[:, None] + k[None, :] * g_col, grad.to(g_ptr.dtype.element_ty), mask=m)


# ------------------------------------------------------------ host side ----


def block_c(c, access=STRIDED, vec=1):
    """Classes per step of the BCDL kernels' class loop: 16, or with locations
    contiguous in the forward, where a thread holds the tile's classes for vec
    locations (common.IN_THREAD), 4 (2 with vectors of 8): 16 values at most, which
    wider tiles exceed, spilling registers (benchmarks/triton_compile.py)."""
    most = min(4, 16 // vec) if access == LOCATIONS else 16
    return min(triton.next_power_of_2(max(c, 1)), most)


@triton_op("bckd::bin_cls_distill_triton", mutates_args=())
def bin_cls_distill_triton(student: Tensor, teacher: Tensor, weight: Optional[Tensor], beta: float) -> tuple[Tensor, Tensor]:
    op = "bin_cls_distill_triton"
    _contract.check_bcdl(op, student, teacher, weight, beta, _contract.TRITON_DTYPES)
    w = None if weight is None else per_location(op, weight, "weight", student)
    loss = student.new_empty(_contract.location_shape(student), dtype=torch.float32)
    mad = torch.empty_like(loss)
    c = student.shape[1]
    if loss.numel() > 0:
        p = plan(student, teacher, channels=c)
        with device_guard(student):
            wrap_triton(_bcdl_fwd_kernel)[grid(p.images, p.HW)](
                student, teacher, w if w is not None else loss, loss, mad, bucket(loss.numel()), p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], float(beta),
                HAS_W=w is not None, MODE=_contract.beta_mode(beta), ACCESS=p.access, VEC=p.vec,
                BLOCK_C=block_c(c, p.access, p.vec),
            )
    return loss, mad


@triton_op("bckd::_bin_cls_distill_backward_triton", mutates_args=())
def _bin_cls_distill_backward_triton(
    grad_loss: Tensor, student: Tensor, teacher: Tensor, weight: Optional[Tensor], beta: float
) -> Tensor:
    op = "_bin_cls_distill_backward_triton"
    _contract.check_bcdl(op, student, teacher, weight, beta, _contract.TRITON_DTYPES)
    gl = per_location(op, grad_loss, "grad_loss", student)
    w = None if weight is None else per_location(op, weight, "weight", student)
    grad = torch.empty_like(student)
    c = student.shape[1]
    if grad.numel() > 0:
        p = plan(student, teacher, grad, channels=c)
        with device_guard(student):
            wrap_triton(_bcdl_bwd_kernel)[grid(p.images, p.HW)](
                student, teacher, gl, w if w is not None else gl, grad, bucket(gl.numel()), p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], *p.strides[2], float(beta),
                HAS_W=w is not None, MODE=_contract.beta_mode(beta), ACCESS=p.access, VEC=p.vec,
                BLOCK_C=block_c(c),  # no reduction: the same tile in every pattern
            )
    return grad


# ------------------------------------------------------------- autograd ----


def _autograd(backward_op, forward_op):
    """Gradients to the student and to the weight; the teacher is a constant and
    max_abs_diff has none. The weight's gradient, the unweighted loss times the
    upstream gradient, costs one more forward pass, taken only when asked for."""

    def setup(ctx, inputs, output):
        student, teacher, weight, beta = inputs
        ctx.save_for_backward(student, teacher, weight)
        ctx.beta = beta
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_loss, grad_max_abs_diff):
        student, teacher, weight = ctx.saved_tensors
        grad = backward_op(grad_loss, student, teacher, weight, ctx.beta) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[2]:
            unweighted, _ = forward_op(student.detach(), teacher, None, ctx.beta)
            grad_weight = (grad_loss * unweighted).to(weight.dtype)
        return grad, None, grad_weight, None

    return backward, setup


register_autograd("bin_cls_distill_triton", bin_cls_distill_triton, _bin_cls_distill_backward_triton,
                  _autograd(torch.ops.bckd._bin_cls_distill_backward_triton, torch.ops.bckd.bin_cls_distill_triton))
