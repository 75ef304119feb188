"""Triton kernels of the three losses, exposed as custom ops so that
``torch.compile`` traces into them (``torch.library.triton_op`` + ``wrap_triton``).

They compute what the C++/CUDA operators compute (csrc/bckd_math.h is the
maths of record, written out again here in Triton): float32 accumulation,
64-bit offsets, head maps ``[B, C, H, W]`` read in place through their strides,
deterministic reductions (``tl.sum``/``tl.max`` over a tile, no atomics).
Inputs are float32, float16 or bfloat16.

Operators (autograd registered, gradients to the student / to both boxes):
    torch.ops.bckd.bin_cls_distill_triton(student, teacher, weight, beta)
    torch.ops.bckd.paired_giou_triton(pred, target, eps)
    torch.ops.bckd.dfl_giou_distill_triton(student_reg, teacher_reg, reg_max, eps)

On a GPU, block sizes and warps are autotuned over a few configurations; under
``TRITON_INTERPRET=1`` (CPU tensors, the test suite) one large block keeps the
number of program instances small.

Import this module after deciding on TRITON_INTERPRET: Triton reads it when the
kernels are defined.
"""

import contextlib
import os
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from . import _contract
from ._ops import bcdl_autograd, dfl_autograd, giou_autograd, no_double_backward

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_REG_MAX = _contract.MAX_REG_MAX


def _configs(blocks, interpret_block, maxnreg=None):
    """Autotune configurations (BLOCK_L, num_warps). maxnreg lifts ptxas's own
    register target where it chose too few and spilled (the DFL kernels at 8 warps
    on sm_90: 32 registers and spills without it, 40 and none with it)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_L": interpret_block}, num_warps=4)]
    return [triton.Config({"BLOCK_L": b}, num_warps=w, maxnreg=maxnreg) for b, w in blocks]


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


@triton.jit
def _dmin(a, b):
    """∂ min(a, b)/∂a, ties split evenly."""
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def _min(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max_nan(a, b):
    """Combine function of a max reduction that keeps NaN (tl.max drops it)."""
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _giou_loss(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps):
    iw = _min(px2, tx2) - _max(px1, tx1)
    ih = _min(py2, ty2) - _max(py1, ty1)
    inter = _max(iw, 0.0) * _max(ih, 0.0)
    uni = _max((px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter, eps)
    ew = _max(px2, tx2) - _min(px1, tx1)
    eh = _max(py2, ty2) - _min(py1, ty1)
    enc = _max(_max(ew, 0.0) * _max(eh, 0.0), eps)
    return 1.0 - inter / uni + (enc - uni) / enc


@triton.jit
def _giou_grad(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps, g):
    """g · ∂(1 − GIoU)/∂ of the 8 coordinates (see csrc/bckd_math.h)."""
    iw = _min(px2, tx2) - _max(px1, tx1)
    ih = _min(py2, ty2) - _max(py1, ty1)
    iwc = _max(iw, 0.0)
    ihc = _max(ih, 0.0)
    inter = iwc * ihc
    pw = px2 - px1
    ph = py2 - py1
    tw = tx2 - tx1
    th = ty2 - ty1
    uraw = pw * ph + tw * th - inter
    uni = _max(uraw, eps)
    ew = _max(px2, tx2) - _min(px1, tx1)
    eh = _max(py2, ty2) - _min(py1, ty1)
    ewc = _max(ew, 0.0)
    ehc = _max(eh, 0.0)
    eraw = ewc * ehc
    enc = _max(eraw, eps)
    g_u = tl.where(uraw > eps, g * (inter / uni / uni - 1.0 / enc), 0.0)
    g_i = -g / uni - g_u
    g_e = tl.where(eraw > eps, g * (uni / enc / enc), 0.0)
    g_iw = tl.where(iw > 0, g_i * ihc, 0.0)
    g_ih = tl.where(ih > 0, g_i * iwc, 0.0)
    g_ew = tl.where(ew > 0, g_e * ehc, 0.0)
    g_eh = tl.where(eh > 0, g_e * ewc, 0.0)
    gp0 = -g_iw * _dmin(tx1, px1) - g_ew * _dmin(px1, tx1) - g_u * ph
    gp1 = -g_ih * _dmin(ty1, py1) - g_eh * _dmin(py1, ty1) - g_u * pw
    gp2 = g_iw * _dmin(px2, tx2) + g_ew * _dmin(tx2, px2) + g_u * ph
    gp3 = g_ih * _dmin(py2, ty2) + g_eh * _dmin(ty2, py2) + g_u * pw
    gt0 = -g_iw * _dmin(px1, tx1) - g_ew * _dmin(tx1, px1) - g_u * th
    gt1 = -g_ih * _dmin(py1, ty1) - g_eh * _dmin(ty1, py1) - g_u * tw
    gt2 = g_iw * _dmin(tx2, px2) + g_ew * _dmin(px2, tx2) + g_u * th
    gt3 = g_ih * _dmin(ty2, py2) + g_eh * _dmin(py2, ty2) + g_u * tw
    return gp0, gp1, gp2, gp3, gt0, gt1, gt2, gt3


@triton.jit
def _locations(BLOCK_L: tl.constexpr, n_loc, H, W):
    """This program's locations and their (b, h, w), 64-bit."""
    loc = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    w = loc % W
    row = loc // W
    return loc, loc < n_loc, row // H, row % H, w


# ----------------------------------------------------------------- BCDL ----


@triton.autotune(configs=_configs([(32, 4), (64, 4)], 64), key=["n_loc", "C", "MODE"])
@triton.jit
def _bcdl_fwd_kernel(zs_ptr, zt_ptr, w_ptr, loss_ptr, mad_ptr, n_loc, C, H, W,
                     s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc, beta,
                     HAS_W: tl.constexpr, MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    loc, lmask, b, h, w = _locations(BLOCK_L, n_loc, H, W)
    s_off = b * s_sb + h * s_sh + w * s_sw
    t_off = b * t_sb + h * t_sh + w * t_sw
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    mx = tl.zeros([BLOCK_L], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        k = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        m = lmask[:, None] & (k < C)[None, :]
        zs = tl.load(zs_ptr + s_off[:, None] + k[None, :] * s_sc, mask=m, other=0.0).to(tl.float32)
        zt = tl.load(zt_ptr + t_off[:, None] + k[None, :] * t_sc, mask=m, other=0.0).to(tl.float32)
        d, pp, bce = _bcdl_pieces(zs, zt, MODE)
        mod, dmod = _modulator(d, beta, MODE)
        acc += tl.sum(tl.where(m, mod * bce, 0.0), axis=1)
        mx = _max(mx, tl.reduce(tl.where(m, tl.abs(d), 0.0), 1, _max_nan))
    if HAS_W:
        acc = acc * tl.load(w_ptr + loc, mask=lmask, other=0.0)
    tl.store(loss_ptr + loc, acc, mask=lmask)
    tl.store(mad_ptr + loc, mx, mask=lmask)


@triton.autotune(configs=_configs([(32, 4), (64, 4)], 64), key=["n_loc", "C", "MODE"])
@triton.jit
def _bcdl_bwd_kernel(zs_ptr, zt_ptr, coef_ptr, g_ptr, n_loc, C, H, W,
                     s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc, g_sb, g_sh, g_sw, g_sc, beta,
                     MODE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    loc, lmask, b, h, w = _locations(BLOCK_L, n_loc, H, W)
    s_off = b * s_sb + h * s_sh + w * s_sw
    t_off = b * t_sb + h * t_sh + w * t_sw
    g_off = b * g_sb + h * g_sh + w * g_sw
    coef = tl.load(coef_ptr + loc, mask=lmask, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        k = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
        m = lmask[:, None] & (k < C)[None, :]
        zs = tl.load(zs_ptr + s_off[:, None] + k[None, :] * s_sc, mask=m, other=0.0).to(tl.float32)
        zt = tl.load(zt_ptr + t_off[:, None] + k[None, :] * t_sc, mask=m, other=0.0).to(tl.float32)
        d, pp, bce = _bcdl_pieces(zs, zt, MODE)
        mod, dmod = _modulator(d, beta, MODE)
        grad = (mod * d + dmod * pp * bce) * coef[:, None]
        tl.store(g_ptr + g_off[:, None] + k[None, :] * g_sc, grad.to(g_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------- GIoU ----


@triton.jit
def _load_box(ptr, n, s0, s1, mask):
    x1 = tl.load(ptr + n * s0, mask=mask, other=0.0).to(tl.float32)
    y1 = tl.load(ptr + n * s0 + s1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(ptr + n * s0 + 2 * s1, mask=mask, other=0.0).to(tl.float32)
    y2 = tl.load(ptr + n * s0 + 3 * s1, mask=mask, other=0.0).to(tl.float32)
    return x1, y1, x2, y2


@triton.jit
def _store_box(ptr, n, s0, s1, mask, x1, y1, x2, y2):
    ty = ptr.dtype.element_ty
    tl.store(ptr + n * s0, x1.to(ty), mask=mask)
    tl.store(ptr + n * s0 + s1, y1.to(ty), mask=mask)
    tl.store(ptr + n * s0 + 2 * s1, x2.to(ty), mask=mask)
    tl.store(ptr + n * s0 + 3 * s1, y2.to(ty), mask=mask)


@triton.autotune(configs=_configs([(128, 4), (256, 4), (512, 8), (1024, 8)], 256), key=["n_loc"])
@triton.jit
def _giou_fwd_kernel(p_ptr, t_ptr, loss_ptr, n_loc, p_s0, p_s1, t_s0, t_s1, eps, BLOCK_L: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    mask = n < n_loc
    px1, py1, px2, py2 = _load_box(p_ptr, n, p_s0, p_s1, mask)
    tx1, ty1, tx2, ty2 = _load_box(t_ptr, n, t_s0, t_s1, mask)
    tl.store(loss_ptr + n, _giou_loss(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps), mask=mask)


@triton.autotune(configs=_configs([(128, 4), (256, 4), (512, 8), (1024, 8)], 256), key=["n_loc"])
@triton.jit
def _giou_bwd_kernel(p_ptr, t_ptr, coef_ptr, gp_ptr, gt_ptr, n_loc, p_s0, p_s1, t_s0, t_s1, gp_s0, gp_s1, gt_s0, gt_s1,
                     eps, BLOCK_L: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    mask = n < n_loc
    px1, py1, px2, py2 = _load_box(p_ptr, n, p_s0, p_s1, mask)
    tx1, ty1, tx2, ty2 = _load_box(t_ptr, n, t_s0, t_s1, mask)
    coef = tl.load(coef_ptr + n, mask=mask, other=0.0)
    gp0, gp1, gp2, gp3, gt0, gt1, gt2, gt3 = _giou_grad(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps, coef)
    _store_box(gp_ptr, n, gp_s0, gp_s1, mask, gp0, gp1, gp2, gp3)
    _store_box(gt_ptr, n, gt_s0, gt_s1, mask, gt0, gt1, gt2, gt3)


# ------------------------------------------------------ DFL decode + GIoU ----


@triton.jit
def _decode_edge(ptr, off, e, nbins, sc, lmask, NB: tl.constexpr):
    """Softmax integral of edge e for a block of locations: (max, sum, dist).

    The bins are read NB at a time with a running max (an online softmax), so
    that a tile never holds more than NB bins per location whatever reg_max is:
    wider tiles run out of registers. With nbins ≤ NB it is one plain pass."""
    mx = tl.full(lmask.shape, float("-inf"), tl.float32)
    s = tl.zeros(lmask.shape, tl.float32)
    sj = tl.zeros(lmask.shape, tl.float32)
    for j0 in range(0, nbins, NB):
        j = j0 + tl.arange(0, NB)
        jm = j < nbins
        cols = (e * nbins + j).to(tl.int64)
        r = tl.load(ptr + off[:, None] + cols[None, :] * sc, mask=lmask[:, None] & jm[None, :], other=0.0)
        r = tl.where(jm[None, :], r.to(tl.float32), float("-inf"))
        new_mx = tl.maximum(mx, tl.max(r, axis=1))
        scale = tl.exp(mx - new_mx)
        ex = tl.where(jm[None, :], tl.exp(r - new_mx[:, None]), 0.0)
        s = s * scale + tl.sum(ex, axis=1)
        sj = sj * scale + tl.sum(ex * j[None, :].to(tl.float32), axis=1)
        mx = new_mx
    return mx, s, sj / s


@triton.autotune(configs=_configs([(16, 8)], 64, maxnreg=128), key=["n_loc", "nbins"])
@triton.jit
def _dfl_fwd_kernel(rs_ptr, rt_ptr, loss_ptr, n_loc, nbins, H, W, s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc,
                    eps, NB: tl.constexpr, BLOCK_L: tl.constexpr):
    loc, lmask, b, h, w = _locations(BLOCK_L, n_loc, H, W)
    s_off = b * s_sb + h * s_sh + w * s_sw
    t_off = b * t_sb + h * t_sh + w * t_sw
    _, _, sl = _decode_edge(rs_ptr, s_off, 0, nbins, s_sc, lmask, NB)
    _, _, st = _decode_edge(rs_ptr, s_off, 1, nbins, s_sc, lmask, NB)
    _, _, sr = _decode_edge(rs_ptr, s_off, 2, nbins, s_sc, lmask, NB)
    _, _, sb = _decode_edge(rs_ptr, s_off, 3, nbins, s_sc, lmask, NB)
    _, _, tl_ = _decode_edge(rt_ptr, t_off, 0, nbins, t_sc, lmask, NB)
    _, _, tt = _decode_edge(rt_ptr, t_off, 1, nbins, t_sc, lmask, NB)
    _, _, tr = _decode_edge(rt_ptr, t_off, 2, nbins, t_sc, lmask, NB)
    _, _, tb = _decode_edge(rt_ptr, t_off, 3, nbins, t_sc, lmask, NB)
    loss = _giou_loss(-sl, -st, sr, sb, -tl_, -tt, tr, tb, eps)
    tl.store(loss_ptr + loc, loss, mask=lmask)


@triton.jit
def _edge_grad(ptr, g_ptr, off, g_off, e, nbins, sc, g_sc, lmask, mx, s, dist, gd, NB: tl.constexpr):
    """Writes gd · P_j · (j − dist) for the bins of edge e, NB bins at a time."""
    for j0 in range(0, nbins, NB):
        j = j0 + tl.arange(0, NB)
        m = lmask[:, None] & (j < nbins)[None, :]
        cols = (e * nbins + j).to(tl.int64)
        r = tl.load(ptr + off[:, None] + cols[None, :] * sc, mask=m, other=0.0).to(tl.float32)
        prob = tl.exp(r - mx[:, None]) / s[:, None]
        grad = gd[:, None] * prob * (j[None, :].to(tl.float32) - dist[:, None])
        tl.store(g_ptr + g_off[:, None] + cols[None, :] * g_sc, grad.to(g_ptr.dtype.element_ty), mask=m)


@triton.autotune(configs=_configs([(16, 8)], 64, maxnreg=128), key=["n_loc", "nbins"])
@triton.jit
def _dfl_bwd_kernel(rs_ptr, rt_ptr, coef_ptr, g_ptr, n_loc, nbins, H, W, s_sb, s_sh, s_sw, s_sc,
                    t_sb, t_sh, t_sw, t_sc, g_sb, g_sh, g_sw, g_sc, eps, NB: tl.constexpr, BLOCK_L: tl.constexpr):
    loc, lmask, b, h, w = _locations(BLOCK_L, n_loc, H, W)
    s_off = b * s_sb + h * s_sh + w * s_sw
    t_off = b * t_sb + h * t_sh + w * t_sw
    g_off = b * g_sb + h * g_sh + w * g_sw
    m0, s0, sl = _decode_edge(rs_ptr, s_off, 0, nbins, s_sc, lmask, NB)
    m1, s1, st = _decode_edge(rs_ptr, s_off, 1, nbins, s_sc, lmask, NB)
    m2, s2, sr = _decode_edge(rs_ptr, s_off, 2, nbins, s_sc, lmask, NB)
    m3, s3, sb = _decode_edge(rs_ptr, s_off, 3, nbins, s_sc, lmask, NB)
    _, _, tl_ = _decode_edge(rt_ptr, t_off, 0, nbins, t_sc, lmask, NB)
    _, _, tt = _decode_edge(rt_ptr, t_off, 1, nbins, t_sc, lmask, NB)
    _, _, tr = _decode_edge(rt_ptr, t_off, 2, nbins, t_sc, lmask, NB)
    _, _, tb = _decode_edge(rt_ptr, t_off, 3, nbins, t_sc, lmask, NB)
    coef = tl.load(coef_ptr + loc, mask=lmask, other=0.0)
    g0, g1, g2, g3, _, _, _, _ = _giou_grad(-sl, -st, sr, sb, -tl_, -tt, tr, tb, eps, coef)
    # box = (−l, −t, r, b)
    _edge_grad(rs_ptr, g_ptr, s_off, g_off, 0, nbins, s_sc, g_sc, lmask, m0, s0, sl, -g0, NB)
    _edge_grad(rs_ptr, g_ptr, s_off, g_off, 1, nbins, s_sc, g_sc, lmask, m1, s1, st, -g1, NB)
    _edge_grad(rs_ptr, g_ptr, s_off, g_off, 2, nbins, s_sc, g_sc, lmask, m2, s2, sr, g2, NB)
    _edge_grad(rs_ptr, g_ptr, s_off, g_off, 3, nbins, s_sc, g_sc, lmask, m3, s3, sb, g3, NB)


# ------------------------------------------------------------ host side ----


def _per_location(op, v, name, like):
    """A checked per-location tensor as the contiguous float32 vector the kernels read."""
    _contract.check_per_location(op, v, name, like)
    return v.to(torch.float32).contiguous()


def _device_guard(x):
    """Launches on the inputs' GPU, not the current one (inductor's generated
    code guards the device itself when compiling)."""
    if x.is_cuda and not torch.compiler.is_compiling():
        return torch.cuda.device(x.device)
    return contextlib.nullcontext()


def _layouts(*xs):
    """(B, H, W) and (sb, sh, sw, sc) per tensor, H merged into W when every tensor allows
    it (the rule of csrc/layout.h)."""
    x0 = xs[0]
    if x0.dim() == 2:
        return (1, 1, x0.shape[0]), [(0, 0, x.stride(0), x.stride(1)) for x in xs]
    b, _, h, w = x0.shape
    merge = all(h == 1 or w == 1 or x.stride(2) == w * x.stride(3) for x in xs)
    if merge:
        inner = [x.stride(2) if w == 1 else x.stride(3) for x in xs]
        return (b, 1, h * w), [(x.stride(0), 0, s, x.stride(1)) for x, s in zip(xs, inner)]
    return (b, h, w), [(x.stride(0), x.stride(2), x.stride(3), x.stride(1)) for x in xs]


def _block_c(c):
    """Classes per step of the BCDL kernels' class loop."""
    return min(triton.next_power_of_2(max(c, 1)), 16)


def _bins_block(nbins):
    """The DFL kernels' tile width over one edge's bins: all of them up to 32,
    32 at a time beyond."""
    return min(triton.next_power_of_2(nbins), 32)


def _grid(n):
    return lambda meta: (triton.cdiv(n, meta["BLOCK_L"]),)


@triton_op("bckd::bin_cls_distill_triton", mutates_args=())
def bin_cls_distill_triton(student: Tensor, teacher: Tensor, weight: Optional[Tensor], beta: float) -> tuple[Tensor, Tensor]:
    op = "bin_cls_distill_triton"
    _contract.check_bcdl(op, student, teacher, weight, beta, _contract.TRITON_DTYPES)
    w = None if weight is None else _per_location(op, weight, "weight", student)
    loss = student.new_empty(_contract.location_shape(student), dtype=torch.float32)
    mad = torch.empty_like(loss)
    (B, H, W), (ls, lt) = _layouts(student, teacher)
    n, c = B * H * W, student.shape[1]
    if n > 0:
        with _device_guard(student):
            wrap_triton(_bcdl_fwd_kernel)[_grid(n)](
                student, teacher, w if w is not None else loss, loss, mad, n, c, H, W, *ls, *lt, float(beta),
                HAS_W=w is not None, MODE=_contract.beta_mode(beta), BLOCK_C=_block_c(c),
            )
    return loss, mad


@triton_op("bckd::_bin_cls_distill_backward_triton", mutates_args=())
def _bin_cls_distill_backward_triton(
    grad_loss: Tensor, student: Tensor, teacher: Tensor, weight: Optional[Tensor], beta: float
) -> Tensor:
    op = "_bin_cls_distill_backward_triton"
    _contract.check_bcdl(op, student, teacher, weight, beta, _contract.TRITON_DTYPES)
    coef = _per_location(op, grad_loss, "grad_loss", student)
    if weight is not None:
        coef = coef * weight.to(torch.float32)
    grad = torch.empty_like(student)
    (B, H, W), (ls, lt, lg) = _layouts(student, teacher, grad)
    n, c = B * H * W, student.shape[1]
    if grad.numel() > 0:
        with _device_guard(student):
            wrap_triton(_bcdl_bwd_kernel)[_grid(n)](
                student, teacher, coef, grad, n, c, H, W, *ls, *lt, *lg, float(beta),
                MODE=_contract.beta_mode(beta), BLOCK_C=_block_c(c),
            )
    return grad


@triton_op("bckd::paired_giou_triton", mutates_args=())
def paired_giou_triton(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    _contract.check_boxes("paired_giou_triton", pred, target, eps, _contract.TRITON_DTYPES)
    n = pred.shape[0]
    loss = pred.new_empty((n,), dtype=torch.float32)
    if n > 0:
        with _device_guard(pred):
            wrap_triton(_giou_fwd_kernel)[_grid(n)](pred, target, loss, n, *pred.stride(), *target.stride(), float(eps))
    return loss


@triton_op("bckd::_paired_giou_backward_triton", mutates_args=())
def _paired_giou_backward_triton(grad: Tensor, pred: Tensor, target: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    op = "_paired_giou_backward_triton"
    _contract.check_boxes(op, pred, target, eps, _contract.TRITON_DTYPES)
    coef = _per_location(op, grad, "grad", pred)
    grad_pred, grad_target = torch.empty_like(pred), torch.empty_like(target)
    n = pred.shape[0]
    if n > 0:
        with _device_guard(pred):
            wrap_triton(_giou_bwd_kernel)[_grid(n)](
                pred, target, coef, grad_pred, grad_target, n, *pred.stride(), *target.stride(),
                *grad_pred.stride(), *grad_target.stride(), float(eps),
            )
    return grad_pred, grad_target


@triton_op("bckd::dfl_giou_distill_triton", mutates_args=())
def dfl_giou_distill_triton(student_reg: Tensor, teacher_reg: Tensor, reg_max: int = 16, eps: float = 1e-6) -> Tensor:
    _contract.check_dfl("dfl_giou_distill_triton", student_reg, teacher_reg, reg_max, eps, _contract.TRITON_DTYPES)
    loss = student_reg.new_empty(_contract.location_shape(student_reg), dtype=torch.float32)
    (B, H, W), (ls, lt) = _layouts(student_reg, teacher_reg)
    n = B * H * W
    if n > 0:
        with _device_guard(student_reg):
            wrap_triton(_dfl_fwd_kernel)[_grid(n)](
                student_reg, teacher_reg, loss, n, reg_max + 1, H, W, *ls, *lt, float(eps),
                NB=_bins_block(reg_max + 1),
            )
    return loss


@triton_op("bckd::_dfl_giou_distill_backward_triton", mutates_args=())
def _dfl_giou_distill_backward_triton(
    grad: Tensor, student_reg: Tensor, teacher_reg: Tensor, reg_max: int, eps: float
) -> Tensor:
    op = "_dfl_giou_distill_backward_triton"
    _contract.check_dfl(op, student_reg, teacher_reg, reg_max, eps, _contract.TRITON_DTYPES)
    coef = _per_location(op, grad, "grad", student_reg)
    grad_student = torch.empty_like(student_reg)
    (B, H, W), (ls, lt, lg) = _layouts(student_reg, teacher_reg, grad_student)
    n = B * H * W
    if grad_student.numel() > 0:
        with _device_guard(student_reg):
            wrap_triton(_dfl_bwd_kernel)[_grid(n)](
                student_reg, teacher_reg, coef, grad_student, n, reg_max + 1, H, W, *ls, *lt, *lg, float(eps),
                NB=_bins_block(reg_max + 1),
            )
    return grad_student


# -------------------------------------------------------------- autograd ----

_ops = torch.ops.bckd
for _name, _op, (_backward, _setup), _backward_op in (
    ("bin_cls_distill_triton", bin_cls_distill_triton,
     bcdl_autograd(_ops._bin_cls_distill_backward_triton, _ops.bin_cls_distill_triton), _bin_cls_distill_backward_triton),
    ("paired_giou_triton", paired_giou_triton, giou_autograd(_ops._paired_giou_backward_triton),
     _paired_giou_backward_triton),
    ("dfl_giou_distill_triton", dfl_giou_distill_triton, dfl_autograd(_ops._dfl_giou_distill_backward_triton),
     _dfl_giou_distill_backward_triton),
):
    _op.register_autograd(_backward, setup_context=_setup)
    _no_double, _no_setup = no_double_backward(_name)
    _backward_op.register_autograd(_no_double, setup_context=_no_setup)
