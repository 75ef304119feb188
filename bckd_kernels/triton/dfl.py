"""DFL decode + GIoU (ILDL, localization distillation) in Triton: the bins'
softmax integral, the two kernels and the ops ``bckd::dfl_giou_distill_triton``
and ``bckd::_dfl_giou_distill_backward_triton`` with their autograd. The GIoU
maths is giou.py's."""

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import _contract
from .common import (CHANNELS, LOCATIONS, STRIDED, autotune, bucket, channel_count, channel_stride, device_guard, grid,
                     per_location, plan, program_locations, register_autograd, row_offsets)
from .giou import giou_grad, giou_loss

# -------------------------------------------------------------- kernels ----


@triton.jit
def _edge_start(e, nbins, ACCESS: tl.constexpr, VEC: tl.constexpr):
    """First channel read for edge e: its first bin's, rounded down to a multiple
    of VEC where channels are contiguous (edges of 17 bins start at channels
    0, 17, 34, 51, which a 16-byte access cannot start from)."""
    if ACCESS == CHANNELS:
        return (e * nbins) // VEC * VEC
    else:
        return e * nbins


@triton.jit
def _decode_edge(ptr, row, col, e, nbins, n_ch, lmask, ACCESS: tl.constexpr, VEC: tl.constexpr, NB: tl.constexpr):
    """Softmax integral of edge e for a block of locations: (max, sum, dist).

    The bins are read NB lanes at a time with a running max (an online softmax),
    so that a tile never holds more than NB lanes per location whatever reg_max
    is: wider tiles run out of registers. Lanes before the edge's first bin
    (up to VEC − 1, from _edge_start) and after its last are read where they
    are in the row and left out of the sums.

    While every bin read so far is −inf the running max is −inf, and
    exp(−inf − (−inf)) would be NaN and poison every later chunk: 0 is
    subtracted instead (flash-attention's guard), which leaves the sums at 0
    until a finite bin comes. An edge whose bins are all −inf still ends with
    s = 0 and dist = NaN, as softmax gives; +inf or NaN bins give NaN."""
    start = _edge_start(e, nbins, ACCESS, VEC)
    lo = e * nbins - start
    mx = tl.full(lmask.shape, float("-inf"), tl.float32)
    s = tl.zeros(lmask.shape, tl.float32)
    sj = tl.zeros(lmask.shape, tl.float32)
    for j0 in range(0, lo + nbins, NB):
        lane = j0 + tl.arange(0, NB)
        j = lane - lo
        jm = (j >= 0) & (j < nbins)
        ch = (start + lane).to(tl.int64)
        if ACCESS == CHANNELS:
            m = lmask[:, None] & (ch < n_ch)[None, :]
        else:
            m = lmask[:, None] & jm[None, :]
        r = tl.load(ptr + row[:, None] + ch[None, :] * col, mask=m, other=0.0)
        r = tl.where(jm[None, :], r.to(tl.float32), float("-inf"))
        new_mx = tl.maximum(mx, tl.max(r, axis=1))
        sub = tl.where(new_mx == float("-inf"), 0.0, new_mx)
        scale = tl.exp(mx - sub)
        ex = tl.where(jm[None, :], tl.exp(r - sub[:, None]), 0.0)
        s = s * scale + tl.sum(ex, axis=1)
        sj = sj * scale + tl.sum(ex * j[None, :].to(tl.float32), axis=1)
        mx = new_mx
    return mx, s, sj / s


@triton.jit
def _decode_box(ptr, row, col, nbins, n_ch, lmask, ACCESS: tl.constexpr, VEC: tl.constexpr, NB: tl.constexpr):
    """The four edges' distances (left, top, right, bottom) for a block of
    locations."""
    _, _, l = _decode_edge(ptr, row, col, 0, nbins, n_ch, lmask, ACCESS, VEC, NB)
    _, _, t = _decode_edge(ptr, row, col, 1, nbins, n_ch, lmask, ACCESS, VEC, NB)
    _, _, r = _decode_edge(ptr, row, col, 2, nbins, n_ch, lmask, ACCESS, VEC, NB)
    _, _, b = _decode_edge(ptr, row, col, 3, nbins, n_ch, lmask, ACCESS, VEC, NB)
    return l, t, r, b


@autotune("dfl", "nbins", reduces=True)
@triton.jit
def _dfl_fwd_kernel(rs_ptr, rt_ptr, loss_ptr, n_bucket, nbins, n_ch, HW, W, s_sb, s_sh, s_sw, s_sc,
                    t_sb, t_sh, t_sw, t_sc, eps, ACCESS: tl.constexpr, VEC: tl.constexpr, NB: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    b, hw, loc, lmask = program_locations(HW, ACCESS, VEC, BLOCK_L)
    s_row = row_offsets(b, hw, W, s_sb, s_sh, s_sw, ACCESS, VEC)
    t_row = row_offsets(b, hw, W, t_sb, t_sh, t_sw, ACCESS, VEC)
    s_col = channel_stride(s_sc, ACCESS, VEC)
    t_col = channel_stride(t_sc, ACCESS, VEC)
    n_c = channel_count(n_ch, ACCESS, VEC)
    sl, st, sr, sb = _decode_box(rs_ptr, s_row, s_col, nbins, n_c, lmask, ACCESS, VEC, NB)
    tl_, tt, tr, tb = _decode_box(rt_ptr, t_row, t_col, nbins, n_c, lmask, ACCESS, VEC, NB)
    loss = giou_loss(-sl, -st, sr, sb, -tl_, -tt, tr, tb, eps)
    tl.store(loss_ptr + loc, loss, mask=lmask)


@triton.jit
def _edge_grad(ptr, g_ptr, row, g_row, col, g_col, e, nbins, lmask, mx, s, dist, gd, NB: tl.constexpr):
    """Writes gd · P_j · (j − dist) for the bins of edge e, NB bins at a time
    (locations or any strides: the edge's bins are channels e·nbins + j)."""
    for j0 in range(0, nbins, NB):
        j = j0 + tl.arange(0, NB)
        m = lmask[:, None] & (j < nbins)[None, :]
        ch = (e * nbins + j).to(tl.int64)
        r = tl.load(ptr + row[:, None] + ch[None, :] * col, mask=m, other=0.0).to(tl.float32)
        prob = tl.exp(r - mx[:, None]) / s[:, None]
        grad = gd[:, None] * prob * (j[None, :].to(tl.float32) - dist[:, None])
        tl.store(g_ptr + g_row[:, None] + ch[None, :] * g_col, grad.to(g_ptr.dtype.element_ty), mask=m)


@triton.jit
def _pick(e, v0, v1, v2, v3):
    """Per channel, the value of its edge e (0-3) from four per-location vectors."""
    return tl.where(e == 0, v0[:, None], tl.where(e == 1, v1[:, None], tl.where(e == 2, v2[:, None], v3[:, None])))


@triton.jit
def _row_grad(ptr, g_ptr, row, g_row, nbins, n_ch, lmask, m0, m1, m2, m3, s0, s1, s2, s3, d0, d1, d2, d3,
              gd0, gd1, gd2, gd3, NB: tl.constexpr):
    """Writes gd · P_j · (j − dist) for a location's whole row of 4·nbins
    contiguous channels, NB at a time, each channel with its own edge's
    statistics: aligned, vector-wide stores across the edges' boundaries."""
    for c0 in range(0, n_ch, NB):
        ch = c0 + tl.arange(0, NB).to(tl.int64)
        e = (ch >= nbins).to(tl.int32) + (ch >= 2 * nbins).to(tl.int32) + (ch >= 3 * nbins).to(tl.int32)
        j = (ch - e * nbins).to(tl.float32)
        e = e[None, :]
        m = lmask[:, None] & (ch < n_ch)[None, :]
        r = tl.load(ptr + row[:, None] + ch[None, :], mask=m, other=0.0).to(tl.float32)
        prob = tl.exp(r - _pick(e, m0, m1, m2, m3)) / _pick(e, s0, s1, s2, s3)
        grad = _pick(e, gd0, gd1, gd2, gd3) * prob * (j[None, :] - _pick(e, d0, d1, d2, d3))
        tl.store(g_ptr + g_row[:, None] + ch[None, :], grad.to(g_ptr.dtype.element_ty), mask=m)


@autotune("dfl", "nbins", reduces=True)
@triton.jit
def _dfl_bwd_kernel(rs_ptr, rt_ptr, coef_ptr, g_ptr, n_bucket, nbins, n_ch, HW, W, s_sb, s_sh, s_sw, s_sc,
                    t_sb, t_sh, t_sw, t_sc, g_sb, g_sh, g_sw, g_sc, eps, ACCESS: tl.constexpr, VEC: tl.constexpr,
                    NB: tl.constexpr, BLOCK_L: tl.constexpr):
    # The forward's reads, then the student's bins once more (from cache: this
    # program read them just before) to write their gradient in its layout.
    b, hw, loc, lmask = program_locations(HW, ACCESS, VEC, BLOCK_L)
    s_row = row_offsets(b, hw, W, s_sb, s_sh, s_sw, ACCESS, VEC)
    t_row = row_offsets(b, hw, W, t_sb, t_sh, t_sw, ACCESS, VEC)
    g_row = row_offsets(b, hw, W, g_sb, g_sh, g_sw, ACCESS, VEC)
    s_col = channel_stride(s_sc, ACCESS, VEC)
    t_col = channel_stride(t_sc, ACCESS, VEC)
    g_col = channel_stride(g_sc, ACCESS, VEC)
    n_c = channel_count(n_ch, ACCESS, VEC)
    m0, s0, sl = _decode_edge(rs_ptr, s_row, s_col, 0, nbins, n_c, lmask, ACCESS, VEC, NB)
    m1, s1, st = _decode_edge(rs_ptr, s_row, s_col, 1, nbins, n_c, lmask, ACCESS, VEC, NB)
    m2, s2, sr = _decode_edge(rs_ptr, s_row, s_col, 2, nbins, n_c, lmask, ACCESS, VEC, NB)
    m3, s3, sb = _decode_edge(rs_ptr, s_row, s_col, 3, nbins, n_c, lmask, ACCESS, VEC, NB)
    tl_, tt, tr, tb = _decode_box(rt_ptr, t_row, t_col, nbins, n_c, lmask, ACCESS, VEC, NB)
    coef = tl.load(coef_ptr + loc, mask=lmask, other=0.0)
    g0, g1, g2, g3, _, _, _, _ = giou_grad(-sl, -st, sr, sb, -tl_, -tt, tr, tb, eps, coef)
    # box = (−l, −t, r, b)
    if ACCESS == CHANNELS:
        _row_grad(rs_ptr, g_ptr, s_row, g_row, nbins, n_c, lmask, m0, m1, m2, m3, s0, s1, s2, s3, sl, st, sr, sb,
                  -g0, -g1, g2, g3, NB)
    else:
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 0, nbins, lmask, m0, s0, sl, -g0, NB)
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 1, nbins, lmask, m1, s1, st, -g1, NB)
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 2, nbins, lmask, m2, s2, sr, g2, NB)
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 3, nbins, lmask, m3, s3, sb, g3, NB)


# ------------------------------------------------------------ host side ----
#
# The DFL kernels hold about 16 float32 values per location between their
# passes; a thread holding 8 locations (16-byte vectors of a 16-bit type along
# the locations) runs out of registers and spills, so 16-bit maps are read 4
# values (8 bytes) at a time.
DFL_VECTOR_BYTES = {4: 16, 2: 8}


def bins_block(nbins, access=STRIDED, vec=1):
    """The DFL kernels' tile width over one edge's lanes: all of them up to 32,
    32 at a time beyond. With channels contiguous an edge's lanes start up to
    vec − 1 before its first bin (_edge_start). With locations contiguous a
    thread holds the whole tile for vec locations (common.IN_THREAD): at most 8
    bins, and 16 values."""
    if access == LOCATIONS:
        return min(triton.next_power_of_2(nbins), 8, max(16 // vec, 1))
    lead = max((e * nbins) % vec for e in range(4)) if access == CHANNELS else 0
    return min(triton.next_power_of_2(nbins + lead), 32)


@triton_op("bckd::dfl_giou_distill_triton", mutates_args=())
def dfl_giou_distill_triton(student_reg: Tensor, teacher_reg: Tensor, reg_max: int = 16, eps: float = 1e-6) -> Tensor:
    _contract.check_dfl("dfl_giou_distill_triton", student_reg, teacher_reg, reg_max, eps, _contract.TRITON_DTYPES)
    loss = student_reg.new_empty(_contract.location_shape(student_reg), dtype=torch.float32)
    nbins = reg_max + 1
    if loss.numel() > 0:
        p = plan(student_reg, teacher_reg, channels=4 * nbins, most_bytes=DFL_VECTOR_BYTES[student_reg.element_size()])
        with device_guard(student_reg):
            wrap_triton(_dfl_fwd_kernel)[grid(p.images, p.HW)](
                student_reg, teacher_reg, loss, bucket(loss.numel()), nbins, p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], float(eps),
                ACCESS=p.access, VEC=p.vec, NB=bins_block(nbins, p.access, p.vec),
            )
    return loss


@triton_op("bckd::_dfl_giou_distill_backward_triton", mutates_args=())
def _dfl_giou_distill_backward_triton(
    grad: Tensor, student_reg: Tensor, teacher_reg: Tensor, reg_max: int, eps: float
) -> Tensor:
    op = "_dfl_giou_distill_backward_triton"
    _contract.check_dfl(op, student_reg, teacher_reg, reg_max, eps, _contract.TRITON_DTYPES)
    coef = per_location(op, grad, "grad", student_reg)
    grad_student = torch.empty_like(student_reg)
    nbins = reg_max + 1
    if grad_student.numel() > 0:
        p = plan(student_reg, teacher_reg, grad_student, channels=4 * nbins,
                 most_bytes=DFL_VECTOR_BYTES[student_reg.element_size()])
        with device_guard(student_reg):
            wrap_triton(_dfl_bwd_kernel)[grid(p.images, p.HW)](
                student_reg, teacher_reg, coef, grad_student, bucket(coef.numel()), nbins, p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], *p.strides[2], float(eps),
                ACCESS=p.access, VEC=p.vec, NB=bins_block(nbins, p.access, p.vec),
            )
    return grad_student


# ------------------------------------------------------------- autograd ----


def _autograd(backward_op):
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


register_autograd("dfl_giou_distill_triton", dfl_giou_distill_triton, _dfl_giou_distill_backward_triton,
                  _autograd(torch.ops.bckd._dfl_giou_distill_backward_triton))
