"""Triton kernels of the three losses, exposed as custom ops so that
``torch.compile`` traces into them (``torch.library.triton_op`` + ``wrap_triton``).

They compute what the C++/CUDA operators compute (csrc/bckd_math.h is the
maths of record, written out again here in Triton): float32 accumulation,
64-bit offsets, head maps ``[B, C, H, W]`` read in place through their strides,
deterministic reductions (``tl.sum``/``tl.max`` over a tile, no atomics).
Inputs are float32, float16 or bfloat16. Each call picks the tile's contiguous
dimension from the strides (locations for NCHW maps, channels for
channels_last maps and contiguous rows, see "access" below), so that forward
and backward read and write with coalesced vector accesses in both layouts;
benchmarks/triton_compile.py checks the compiled code for it.

Operators (autograd registered, gradients to the student / to both boxes):
    torch.ops.bckd.bin_cls_distill_triton(student, teacher, weight, beta)
    torch.ops.bckd.paired_giou_triton(pred, target, eps)
    torch.ops.bckd.dfl_giou_distill_triton(student_reg, teacher_reg, reg_max, eps)

On a GPU, block sizes and warps are autotuned over a few configurations, keyed
by the location count's power of two (a new feature-map size reuses its
bucket's choice instead of timing every configuration again); under
``TRITON_INTERPRET=1`` (CPU tensors, the test suite) one large block keeps the
number of program instances small. The autotuner's choice, which depends on
timing, never changes the bits of a result: the kernels that reduce over a tile
of channels tune only among configurations that reduce in one order (see
_IN_THREAD; benchmarks/triton_compile.py --check verifies it in the compiled
code), so the results are the same in every process.

Import this module after deciding on TRITON_INTERPRET: Triton reads it when the
kernels are defined.
"""

import contextlib
import math
import os
from typing import NamedTuple, Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from . import _contract
from ._ops import bcdl_autograd, dfl_autograd, no_double_backward

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_REG_MAX = _contract.MAX_REG_MAX


def _configs(blocks, interpret_block, maxnreg=None):
    """Autotune configurations (BLOCK_L, num_warps). maxnreg lifts ptxas's own
    register target where it chose too few and spilled (the DFL kernels on sm_90
    spill without it)."""
    if INTERPRET:
        return [triton.Config({"BLOCK_L": interpret_block}, num_warps=4)]
    return [triton.Config({"BLOCK_L": b}, num_warps=w, maxnreg=maxnreg) for b, w in blocks]


# Reductions over a tile's channels (the BCDL forward's sum and max over a
# class tile, the DFL decode's over a tile of bins) add in an order set by how
# the compiler spreads the tile over registers, lanes and warps, which it
# derives from BLOCK_L and num_warps. Two configurations that spread the
# channels differently give different bits, and the autotuner, which picks by
# timing, may pick either in another process. So a reducing kernel tunes only
# among configurations that spread the channels alike, per access pattern:
#   2, 0  channels fastest: the compiler gives the channel axis its threads
#         first, the same for every BLOCK_L, as long as each thread's vector
#         (sizePerThread) is the same: the configurations that give each thread
#         VEC to 2·VEC elements (1 to 4 without vectors), or one if none does;
#         element by element (0) one configuration always, as triton 3.6 spreads
#         the channels differently for BLOCK_L 16 and 32 there;
#   1     locations fastest: the lanes and warps go to the locations first, so
#         the channels stay within one thread only when BLOCK_L = VEC · 32 ·
#         num_warps (each thread holds one vector of locations and the tile's
#         channels; the channel tile is made narrow for it, _block_c,
#         _bins_block): those configurations (_IN_THREAD) and no others.
# benchmarks/triton_compile.py --check compares the layouts of every reduction
# across the configurations kept for each pattern and fails if they differ.
_IN_THREAD = [(v * 32 * w, w) for w in (2, 4) for v in (1, 2, 4, 8)]


def _per_thread(c, lanes, kwargs):
    """Elements of a tile per thread under configuration c."""
    return c.kwargs["BLOCK_L"] * lanes(kwargs) / (32 * c.num_warps)


def _vector_fit(lanes, blocks, reduces):
    """An early_config_prune keeping the configurations of ``blocks`` whose tile
    gives each thread VEC to 2·VEC elements of a load (1 to 4 without vectors):
    fewer would shorten the vector accesses (the compiler spreads a tile over
    all threads first), more only adds registers. ``lanes(kwargs)`` is the
    tile's width beside BLOCK_L. A kernel that ``reduces`` over the tile's
    channels keeps, with locations contiguous, the _IN_THREAD configurations
    instead, and where no configuration fits, one (see above)."""
    tiled = set(blocks)

    def prune(configs, named_args, **kwargs):
        vec = kwargs.get("VEC", 1)
        if reduces and kwargs.get("LAYOUT") == 1:
            fit = [c for c in configs if c.kwargs["BLOCK_L"] == vec * 32 * c.num_warps]
            return fit or configs[:1]  # the interpreter's one configuration
        pool = [c for c in configs if (c.kwargs["BLOCK_L"], c.num_warps) in tiled] or configs
        most = 2 * vec if vec > 1 else 4
        fit = [c for c in pool if vec <= _per_thread(c, lanes, kwargs) <= most]
        if not reduces:
            return fit or pool
        if fit and kwargs.get("LAYOUT") == 2:
            return fit
        # Element by element (LAYOUT 0), triton 3.6 spreads the channels over 2 lanes
        # at BLOCK_L 16 and over 1 at 32, with one sizePerThread: one configuration.
        return [min(fit or pool, key=lambda c: abs(math.log2(_per_thread(c, lanes, kwargs) / vec)))]

    return prune


def _autotune(blocks, interpret_block, key, lanes, maxnreg=None, reduces=False):
    """triton.autotune over ``blocks`` (BLOCK_L, num_warps), plus the _IN_THREAD
    configurations for a kernel that ``reduces`` over its channels."""
    every = list(blocks) + ([b for b in _IN_THREAD if b not in blocks] if reduces else [])
    return triton.autotune(configs=_configs(every, interpret_block, maxnreg), key=key,
                           prune_configs_by={"early_config_prune": _vector_fit(lanes, blocks, reduces)})


def _class_lanes(kwargs):
    return kwargs["BLOCK_C"]


def _bin_lanes(kwargs):
    return kwargs["NB"]


def _box_lanes(kwargs):
    return 4 if kwargs["LAYOUT"] == 2 else 1


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


# ----------------------------------------------------------- access ----
#
# Each operator picks one of three access patterns per call, from the strides
# (_plan, the constexpr LAYOUT):
#   1  locations contiguous (NCHW maps, column-major [N, C]): a tile's
#      contiguous dimension is the locations; each access reads VEC
#      neighbouring locations of one channel;
#   2  channels contiguous (channels_last maps, contiguous [N, C]): a tile's
#      contiguous dimension is the channels; each access reads VEC channels of
#      one location;
#   0  any other strides: the same maths, element by element.
# The sizes and strides a vector access steps over are passed divided by VEC
# and multiplied back here (_units), so that the compiler knows they are
# multiples of VEC: it specialises integer arguments only for 1 and for
# multiples of 16, which a map of 100 x 167 locations or a row of 68 channels
# is not. VEC is the widest such multiple up to 16 bytes; with pointers aligned
# to 16 bytes (Triton checks that itself) loads and stores are then VEC wide.
# Programs never straddle two images, so that a tile of locations is one run
# of memory.


@triton.jit
def _units(x, VEC: tl.constexpr):
    """x · VEC as int64, for a size or stride passed in units of VEC."""
    return x * tl.full((), VEC, tl.int64)


@triton.jit
def _program_locations(HW, LAYOUT: tl.constexpr, VEC: tl.constexpr, BLOCK_L: tl.constexpr):
    """This program's image b, its locations hw within the image, their index in
    the per-location tensors and their mask (64-bit)."""
    if LAYOUT == 1:
        n_hw = _units(HW, VEC)
    else:
        n_hw = _units(HW, 1)
    blocks = tl.cdiv(n_hw, BLOCK_L)
    pid = tl.program_id(0).to(tl.int64)
    b = pid // blocks
    hw = (pid - b * blocks) * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    return b, hw, b * n_hw + hw, hw < n_hw


@triton.jit
def _row_offsets(b, hw, W, sb, sh, sw, LAYOUT: tl.constexpr, VEC: tl.constexpr):
    """Offset of each location's channel 0."""
    if LAYOUT == 1:
        return b * _units(sb, VEC) + hw
    elif LAYOUT == 2:
        return b * _units(sb, VEC) + hw * _units(sw, VEC)
    else:
        return b * sb + (hw // W) * sh + (hw % W) * sw


@triton.jit
def _channel_stride(sc, LAYOUT: tl.constexpr, VEC: tl.constexpr):
    if LAYOUT == 1:
        return _units(sc, VEC)
    elif LAYOUT == 2:
        return 1
    else:
        return _units(sc, 1)


@triton.jit
def _channel_count(C, LAYOUT: tl.constexpr, VEC: tl.constexpr):
    if LAYOUT == 2:
        return _units(C, VEC)
    else:
        return _units(C, 1)


# ----------------------------------------------------------------- BCDL ----


@_autotune([(32, 4), (64, 4), (128, 4)], 64, ["n_bucket", "C", "MODE", "LAYOUT", "VEC"], _class_lanes, reduces=True)
@triton.jit
def _bcdl_fwd_kernel(zs_ptr, zt_ptr, w_ptr, loss_ptr, mad_ptr, n_bucket, C, HW, W,
                     s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc, beta,
                     HAS_W: tl.constexpr, MODE: tl.constexpr, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    b, hw, loc, lmask = _program_locations(HW, LAYOUT, VEC, BLOCK_L)
    s_row = _row_offsets(b, hw, W, s_sb, s_sh, s_sw, LAYOUT, VEC)
    t_row = _row_offsets(b, hw, W, t_sb, t_sh, t_sw, LAYOUT, VEC)
    s_col = _channel_stride(s_sc, LAYOUT, VEC)
    t_col = _channel_stride(t_sc, LAYOUT, VEC)
    n_c = _channel_count(C, LAYOUT, VEC)
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    mx = tl.zeros([BLOCK_L], dtype=tl.float32)
    for c0 in range(0, n_c, BLOCK_C):
        k = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        m = lmask[:, None] & (k < n_c)[None, :]
        zs = tl.load(zs_ptr + s_row[:, None] + k[None, :] * s_col, mask=m, other=0.0).to(tl.float32)
        zt = tl.load(zt_ptr + t_row[:, None] + k[None, :] * t_col, mask=m, other=0.0).to(tl.float32)
        d, pp, bce = _bcdl_pieces(zs, zt, MODE)
        mod, dmod = _modulator(d, beta, MODE)
        acc += tl.sum(tl.where(m, mod * bce, 0.0), axis=1)
        mx = _max(mx, tl.reduce(tl.where(m, tl.abs(d), 0.0), 1, _max_nan))
    if HAS_W:
        acc = acc * tl.load(w_ptr + loc, mask=lmask, other=0.0)
    tl.store(loss_ptr + loc, acc, mask=lmask)
    tl.store(mad_ptr + loc, mx, mask=lmask)


@_autotune([(32, 4), (64, 4), (128, 4)], 64, ["n_bucket", "C", "MODE", "LAYOUT", "VEC"], _class_lanes)
@triton.jit
def _bcdl_bwd_kernel(zs_ptr, zt_ptr, gl_ptr, w_ptr, g_ptr, n_bucket, C, HW, W,
                     s_sb, s_sh, s_sw, s_sc, t_sb, t_sh, t_sw, t_sc, g_sb, g_sh, g_sw, g_sc, beta,
                     HAS_W: tl.constexpr, MODE: tl.constexpr, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                     BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    # The forward's reads and tile, plus one per-location scale (upstream
    # gradient times weight, multiplied here rather than in a pass of its own)
    # and one store of the gradient in the student's layout.
    b, hw, loc, lmask = _program_locations(HW, LAYOUT, VEC, BLOCK_L)
    s_row = _row_offsets(b, hw, W, s_sb, s_sh, s_sw, LAYOUT, VEC)
    t_row = _row_offsets(b, hw, W, t_sb, t_sh, t_sw, LAYOUT, VEC)
    g_row = _row_offsets(b, hw, W, g_sb, g_sh, g_sw, LAYOUT, VEC)
    s_col = _channel_stride(s_sc, LAYOUT, VEC)
    t_col = _channel_stride(t_sc, LAYOUT, VEC)
    g_col = _channel_stride(g_sc, LAYOUT, VEC)
    n_c = _channel_count(C, LAYOUT, VEC)
    coef = tl.load(gl_ptr + loc, mask=lmask, other=0.0)
    if HAS_W:
        coef = coef * tl.load(w_ptr + loc, mask=lmask, other=0.0)
    for c0 in range(0, n_c, BLOCK_C):
        k = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        m = lmask[:, None] & (k < n_c)[None, :]
        zs = tl.load(zs_ptr + s_row[:, None] + k[None, :] * s_col, mask=m, other=0.0).to(tl.float32)
        zt = tl.load(zt_ptr + t_row[:, None] + k[None, :] * t_col, mask=m, other=0.0).to(tl.float32)
        d, pp, bce = _bcdl_pieces(zs, zt, MODE)
        mod, dmod = _modulator(d, beta, MODE)
        grad = (mod * d + dmod * pp * bce) * coef[:, None]
        tl.store(g_ptr + g_row[:, None] + k[None, :] * g_col, grad.to(g_ptr.dtype.element_ty), mask=m)


# ----------------------------------------------------------------- GIoU ----
#
# Boxes [N, 4]. LAYOUT 2 (rows of 4 packed one after another, the usual case):
# a program's boxes are one run of 4·BLOCK_L values, read and written as such
# (16-byte accesses, 2 boxes per access in 16-bit types) and split into
# coordinates in registers. LAYOUT 1 (column-major boxes): one run of BLOCK_L
# values per coordinate. n_vec is the length of those runs' range (4·N or N)
# in units of VEC.


@triton.jit
def _load_boxes(ptr, blk, n, n_vec, s0, s1, LAYOUT: tl.constexpr, VEC: tl.constexpr, BLOCK_L: tl.constexpr):
    """x1, y1, x2, y2 of boxes n (block blk), float32."""
    if LAYOUT == 2:
        f = blk * (4 * BLOCK_L) + tl.arange(0, 4 * BLOCK_L).to(tl.int64)
        v = tl.load(ptr + f, mask=f < _units(n_vec, VEC), other=0.0).to(tl.float32)
        x, y = tl.split(tl.reshape(v, [BLOCK_L, 2, 2]))  # [box, i, j] = coordinate 2i + j
        x1, x2 = tl.split(x)
        y1, y2 = tl.split(y)
    else:
        if LAYOUT == 1:
            mask = n < _units(n_vec, VEC)
            first = n
            step = _units(s1, VEC)
        else:
            mask = n < n_vec
            first = n * s0
            step = _units(s1, 1)
        x1 = tl.load(ptr + first, mask=mask, other=0.0).to(tl.float32)
        y1 = tl.load(ptr + first + step, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(ptr + first + 2 * step, mask=mask, other=0.0).to(tl.float32)
        y2 = tl.load(ptr + first + 3 * step, mask=mask, other=0.0).to(tl.float32)
    return x1, y1, x2, y2


@triton.jit
def _store_boxes(ptr, blk, n, n_vec, s0, s1, x1, y1, x2, y2, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                 BLOCK_L: tl.constexpr):
    ty = ptr.dtype.element_ty
    if LAYOUT == 2:
        f = blk * (4 * BLOCK_L) + tl.arange(0, 4 * BLOCK_L).to(tl.int64)
        v = tl.reshape(tl.join(tl.join(x1, x2), tl.join(y1, y2)), [4 * BLOCK_L])
        tl.store(ptr + f, v.to(ty), mask=f < _units(n_vec, VEC))
    else:
        if LAYOUT == 1:
            mask = n < _units(n_vec, VEC)
            first = n
            step = _units(s1, VEC)
        else:
            mask = n < n_vec
            first = n * s0
            step = _units(s1, 1)
        tl.store(ptr + first, x1.to(ty), mask=mask)
        tl.store(ptr + first + step, y1.to(ty), mask=mask)
        tl.store(ptr + first + 2 * step, x2.to(ty), mask=mask)
        tl.store(ptr + first + 3 * step, y2.to(ty), mask=mask)


@_autotune([(256, 4), (512, 4), (1024, 4), (512, 8)], 256, ["n_bucket", "LAYOUT", "VEC"], _box_lanes)
@triton.jit
def _giou_fwd_kernel(p_ptr, t_ptr, loss_ptr, n_loc, n_bucket, n_vec, p_s0, p_s1, t_s0, t_s1, eps,
                     LAYOUT: tl.constexpr, VEC: tl.constexpr, BLOCK_L: tl.constexpr):
    blk = tl.program_id(0).to(tl.int64)
    n = blk * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    px1, py1, px2, py2 = _load_boxes(p_ptr, blk, n, n_vec, p_s0, p_s1, LAYOUT, VEC, BLOCK_L)
    tx1, ty1, tx2, ty2 = _load_boxes(t_ptr, blk, n, n_vec, t_s0, t_s1, LAYOUT, VEC, BLOCK_L)
    tl.store(loss_ptr + n, _giou_loss(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps), mask=n < n_loc)


@_autotune([(256, 4), (512, 4), (1024, 4), (512, 8)], 256, ["n_bucket", "LAYOUT", "VEC", "GRAD_P", "GRAD_T"],
           _box_lanes)
@triton.jit
def _giou_bwd_kernel(p_ptr, t_ptr, coef_ptr, gp_ptr, gt_ptr, n_loc, n_bucket, n_vec, p_s0, p_s1, t_s0, t_s1,
                     gp_s0, gp_s1, gt_s0, gt_s1, eps, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                     GRAD_P: tl.constexpr, GRAD_T: tl.constexpr, BLOCK_L: tl.constexpr):
    # GRAD_P / GRAD_T: which gradients to write (the op's output_mask); the
    # other's pointer is a stand-in, never written, and the code computing only
    # it is dropped by the compiler.
    blk = tl.program_id(0).to(tl.int64)
    n = blk * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    px1, py1, px2, py2 = _load_boxes(p_ptr, blk, n, n_vec, p_s0, p_s1, LAYOUT, VEC, BLOCK_L)
    tx1, ty1, tx2, ty2 = _load_boxes(t_ptr, blk, n, n_vec, t_s0, t_s1, LAYOUT, VEC, BLOCK_L)
    coef = tl.load(coef_ptr + n, mask=n < n_loc, other=0.0)
    gp0, gp1, gp2, gp3, gt0, gt1, gt2, gt3 = _giou_grad(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps, coef)
    if GRAD_P:
        _store_boxes(gp_ptr, blk, n, n_vec, gp_s0, gp_s1, gp0, gp1, gp2, gp3, LAYOUT, VEC, BLOCK_L)
    if GRAD_T:
        _store_boxes(gt_ptr, blk, n, n_vec, gt_s0, gt_s1, gt0, gt1, gt2, gt3, LAYOUT, VEC, BLOCK_L)


# ------------------------------------------------------ DFL decode + GIoU ----


@triton.jit
def _edge_start(e, nbins, LAYOUT: tl.constexpr, VEC: tl.constexpr):
    """First channel read for edge e: its first bin's, rounded down to a multiple
    of VEC where channels are contiguous (edges of 17 bins start at channels
    0, 17, 34, 51, which a 16-byte access cannot start from)."""
    if LAYOUT == 2:
        return (e * nbins) // VEC * VEC
    else:
        return e * nbins


@triton.jit
def _decode_edge(ptr, row, col, e, nbins, n_ch, lmask, LAYOUT: tl.constexpr, VEC: tl.constexpr, NB: tl.constexpr):
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
    start = _edge_start(e, nbins, LAYOUT, VEC)
    lo = e * nbins - start
    mx = tl.full(lmask.shape, float("-inf"), tl.float32)
    s = tl.zeros(lmask.shape, tl.float32)
    sj = tl.zeros(lmask.shape, tl.float32)
    for j0 in range(0, lo + nbins, NB):
        lane = j0 + tl.arange(0, NB)
        j = lane - lo
        jm = (j >= 0) & (j < nbins)
        ch = (start + lane).to(tl.int64)
        if LAYOUT == 2:
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


@_autotune([(16, 4), (32, 4)], 64, ["n_bucket", "nbins", "LAYOUT", "VEC"], _bin_lanes, maxnreg=160, reduces=True)
@triton.jit
def _dfl_fwd_kernel(rs_ptr, rt_ptr, loss_ptr, n_bucket, nbins, n_ch, HW, W, s_sb, s_sh, s_sw, s_sc,
                    t_sb, t_sh, t_sw, t_sc, eps, LAYOUT: tl.constexpr, VEC: tl.constexpr, NB: tl.constexpr,
                    BLOCK_L: tl.constexpr):
    b, hw, loc, lmask = _program_locations(HW, LAYOUT, VEC, BLOCK_L)
    s_row = _row_offsets(b, hw, W, s_sb, s_sh, s_sw, LAYOUT, VEC)
    t_row = _row_offsets(b, hw, W, t_sb, t_sh, t_sw, LAYOUT, VEC)
    s_col = _channel_stride(s_sc, LAYOUT, VEC)
    t_col = _channel_stride(t_sc, LAYOUT, VEC)
    n_c = _channel_count(n_ch, LAYOUT, VEC)
    _, _, sl = _decode_edge(rs_ptr, s_row, s_col, 0, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, st = _decode_edge(rs_ptr, s_row, s_col, 1, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, sr = _decode_edge(rs_ptr, s_row, s_col, 2, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, sb = _decode_edge(rs_ptr, s_row, s_col, 3, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tl_ = _decode_edge(rt_ptr, t_row, t_col, 0, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tt = _decode_edge(rt_ptr, t_row, t_col, 1, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tr = _decode_edge(rt_ptr, t_row, t_col, 2, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tb = _decode_edge(rt_ptr, t_row, t_col, 3, nbins, n_c, lmask, LAYOUT, VEC, NB)
    loss = _giou_loss(-sl, -st, sr, sb, -tl_, -tt, tr, tb, eps)
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


@_autotune([(16, 4), (32, 4)], 64, ["n_bucket", "nbins", "LAYOUT", "VEC"], _bin_lanes, maxnreg=160, reduces=True)
@triton.jit
def _dfl_bwd_kernel(rs_ptr, rt_ptr, coef_ptr, g_ptr, n_bucket, nbins, n_ch, HW, W, s_sb, s_sh, s_sw, s_sc,
                    t_sb, t_sh, t_sw, t_sc, g_sb, g_sh, g_sw, g_sc, eps, LAYOUT: tl.constexpr, VEC: tl.constexpr,
                    NB: tl.constexpr, BLOCK_L: tl.constexpr):
    # The forward's reads, then the student's bins once more (from cache: this
    # program read them just before) to write their gradient in its layout.
    b, hw, loc, lmask = _program_locations(HW, LAYOUT, VEC, BLOCK_L)
    s_row = _row_offsets(b, hw, W, s_sb, s_sh, s_sw, LAYOUT, VEC)
    t_row = _row_offsets(b, hw, W, t_sb, t_sh, t_sw, LAYOUT, VEC)
    g_row = _row_offsets(b, hw, W, g_sb, g_sh, g_sw, LAYOUT, VEC)
    s_col = _channel_stride(s_sc, LAYOUT, VEC)
    t_col = _channel_stride(t_sc, LAYOUT, VEC)
    g_col = _channel_stride(g_sc, LAYOUT, VEC)
    n_c = _channel_count(n_ch, LAYOUT, VEC)
    m0, s0, sl = _decode_edge(rs_ptr, s_row, s_col, 0, nbins, n_c, lmask, LAYOUT, VEC, NB)
    m1, s1, st = _decode_edge(rs_ptr, s_row, s_col, 1, nbins, n_c, lmask, LAYOUT, VEC, NB)
    m2, s2, sr = _decode_edge(rs_ptr, s_row, s_col, 2, nbins, n_c, lmask, LAYOUT, VEC, NB)
    m3, s3, sb = _decode_edge(rs_ptr, s_row, s_col, 3, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tl_ = _decode_edge(rt_ptr, t_row, t_col, 0, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tt = _decode_edge(rt_ptr, t_row, t_col, 1, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tr = _decode_edge(rt_ptr, t_row, t_col, 2, nbins, n_c, lmask, LAYOUT, VEC, NB)
    _, _, tb = _decode_edge(rt_ptr, t_row, t_col, 3, nbins, n_c, lmask, LAYOUT, VEC, NB)
    coef = tl.load(coef_ptr + loc, mask=lmask, other=0.0)
    g0, g1, g2, g3, _, _, _, _ = _giou_grad(-sl, -st, sr, sb, -tl_, -tt, tr, tb, eps, coef)
    # box = (−l, −t, r, b)
    if LAYOUT == 2:
        _row_grad(rs_ptr, g_ptr, s_row, g_row, nbins, n_c, lmask, m0, m1, m2, m3, s0, s1, s2, s3, sl, st, sr, sb,
                  -g0, -g1, g2, g3, NB)
    else:
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 0, nbins, lmask, m0, s0, sl, -g0, NB)
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 1, nbins, lmask, m1, s1, st, -g1, NB)
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 2, nbins, lmask, m2, s2, sr, g2, NB)
        _edge_grad(rs_ptr, g_ptr, s_row, g_row, s_col, g_col, 3, nbins, lmask, m3, s3, sb, g3, NB)


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


def _pow2_dividing(values, most):
    """The largest power of two ≤ most that divides every value (0 included)."""
    v = most
    while v > 1 and any(x % v for x in values):
        v //= 2
    return v


class _Plan(NamedTuple):
    """How the kernels walk rows ``[N, C]`` or maps ``[B, C, H, W]``: ``images``
    runs of ``HW`` locations (``H`` rows of ``W``), the access pattern
    (``layout``: 1 locations contiguous, 2 channels contiguous, 0 other),
    the vector width ``vec`` in elements, and the kernel arguments, sizes and
    strides in units of ``vec`` where the pattern steps over them: ``hw``
    (locations per image), ``W``, ``n_ch`` (the channels a row holds) and
    ``strides`` (sb, sh, sw, sc) per tensor."""

    images: int
    HW: int
    layout: int
    vec: int
    hw: int
    W: int
    n_ch: int
    strides: list


def _plan(*xs, channels, most_bytes=16):
    """The access plan for same-shape tensors ``xs`` (inputs and outputs of one
    launch) whose rows hold ``channels`` values, vectors of at most
    ``most_bytes``. H is merged into W, and the images into the locations,
    where every tensor's strides allow it (the rule of csrc/layout.h); the
    pattern and VEC must suit every tensor."""
    x0 = xs[0]
    C = x0.shape[1]
    if x0.dim() == 2:
        B, H, W = 1, 1, x0.shape[0]
        st = [[0, 0, x.stride(0), x.stride(1)] for x in xs]
    else:
        B, _, H, W = x0.shape
        st = [[x.stride(0), x.stride(2), x.stride(3), x.stride(1)] for x in xs]
        if all(H == 1 or W == 1 or s[1] == W * s[2] for s in st):
            for s in st:
                s[1], s[2] = 0, (s[1] if W == 1 else s[2])
            H, W = 1, H * W
    if H == 1 and all(B == 1 or s[0] == W * s[2] for s in st):
        B, W = 1, B * W
    for s in st:  # strides of size-1 dimensions are never stepped over
        s[0] = 0 if B == 1 else s[0]
        s[2] = 0 if W == 1 else s[2]
        s[3] = 0 if C == 1 else s[3]
    most = most_bytes // x0.element_size()
    if H == 1 and W > 1 and all(s[2] == 1 for s in st):
        layout = 1
        vec = _pow2_dividing([W] + [s[0] for s in st] + [s[3] for s in st], most)
    elif H == 1 and all(s[3] in (0, 1) for s in st):
        layout = 2
        vec = _pow2_dividing([channels] + [s[0] for s in st] + [s[2] for s in st], most)
    else:
        layout, vec = 0, 1
    div = [0, 0, 0, 0]
    if layout == 1:
        div = [vec, 0, 0, vec]
    elif layout == 2:
        div = [vec, 0, vec, 0]
    strides = [tuple(v // d if d else v for v, d in zip(s, div)) for s in st]
    return _Plan(B, H * W, layout, vec, H * W // (vec if layout == 1 else 1), W,
                 channels // (vec if layout == 2 else 1), strides)


def _box_plan(*xs):
    """(layout, vec, n_vec, strides) of same-shape boxes ``[N, 4]``: 2 for rows of
    4 packed one after another, 1 for column-major boxes, 0 for other strides;
    n_vec and the column stride in units of vec (see the GIoU kernels)."""
    n = xs[0].shape[0]
    st = [(x.stride(0) if n > 1 else 4, x.stride(1)) for x in xs]
    most = 16 // xs[0].element_size()
    if all(s == (4, 1) for s in st):
        vec = _pow2_dividing([4 * n], most)
        return 2, vec, 4 * n // vec, st
    if n > 1 and all(s0 == 1 for s0, _ in st):
        vec = _pow2_dividing([n] + [s1 for _, s1 in st], most)
        return 1, vec, n // vec, [(1, s1 // vec) for _, s1 in st]
    return 0, 1, n, st


# The DFL kernels hold about 16 float32 values per location between their
# passes; a thread holding 8 locations (16-byte vectors of a 16-bit type along
# the locations) runs out of registers and spills, so 16-bit maps are read 4
# values (8 bytes) at a time.
_DFL_VECTOR_BYTES = {4: 16, 2: 8}


def _block_c(c, layout=0, vec=1):
    """Classes per step of the BCDL kernels' class loop: 16, or with locations
    contiguous in the forward, where a thread holds the tile's classes for vec
    locations (_IN_THREAD), 4 (2 with vectors of 8): 16 values at most, which
    wider tiles exceed, spilling registers (benchmarks/triton_compile.py)."""
    most = min(4, 16 // vec) if layout == 1 else 16
    return min(triton.next_power_of_2(max(c, 1)), most)


def _bins_block(nbins, layout=0, vec=1):
    """The DFL kernels' tile width over one edge's lanes: all of them up to 32,
    32 at a time beyond. With channels contiguous an edge's lanes start up to
    vec − 1 before its first bin (_edge_start). With locations contiguous a
    thread holds the whole tile for vec locations (_IN_THREAD): at most 8
    bins, and 16 values."""
    if layout == 1:
        return min(triton.next_power_of_2(nbins), 8, max(16 // vec, 1))
    lead = max((e * nbins) % vec for e in range(4)) if layout == 2 else 0
    return min(triton.next_power_of_2(nbins + lead), 32)


def _bucket(n):
    """Autotuning key of a location count: its power of two, so that a new
    feature-map size reuses the configuration tuned for its bucket."""
    return triton.next_power_of_2(n)


def _grid(images, per_image):
    return lambda meta: (images * triton.cdiv(per_image, meta["BLOCK_L"]),)


@triton_op("bckd::bin_cls_distill_triton", mutates_args=())
def bin_cls_distill_triton(student: Tensor, teacher: Tensor, weight: Optional[Tensor], beta: float) -> tuple[Tensor, Tensor]:
    op = "bin_cls_distill_triton"
    _contract.check_bcdl(op, student, teacher, weight, beta, _contract.TRITON_DTYPES)
    w = None if weight is None else _per_location(op, weight, "weight", student)
    loss = student.new_empty(_contract.location_shape(student), dtype=torch.float32)
    mad = torch.empty_like(loss)
    c = student.shape[1]
    if loss.numel() > 0:
        p = _plan(student, teacher, channels=c)
        with _device_guard(student):
            wrap_triton(_bcdl_fwd_kernel)[_grid(p.images, p.HW)](
                student, teacher, w if w is not None else loss, loss, mad, _bucket(loss.numel()), p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], float(beta),
                HAS_W=w is not None, MODE=_contract.beta_mode(beta), LAYOUT=p.layout, VEC=p.vec,
                BLOCK_C=_block_c(c, p.layout, p.vec),
            )
    return loss, mad


@triton_op("bckd::_bin_cls_distill_backward_triton", mutates_args=())
def _bin_cls_distill_backward_triton(
    grad_loss: Tensor, student: Tensor, teacher: Tensor, weight: Optional[Tensor], beta: float
) -> Tensor:
    op = "_bin_cls_distill_backward_triton"
    _contract.check_bcdl(op, student, teacher, weight, beta, _contract.TRITON_DTYPES)
    gl = _per_location(op, grad_loss, "grad_loss", student)
    w = None if weight is None else _per_location(op, weight, "weight", student)
    grad = torch.empty_like(student)
    c = student.shape[1]
    if grad.numel() > 0:
        p = _plan(student, teacher, grad, channels=c)
        with _device_guard(student):
            wrap_triton(_bcdl_bwd_kernel)[_grid(p.images, p.HW)](
                student, teacher, gl, w if w is not None else gl, grad, _bucket(gl.numel()), p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], *p.strides[2], float(beta),
                HAS_W=w is not None, MODE=_contract.beta_mode(beta), LAYOUT=p.layout, VEC=p.vec,
                BLOCK_C=_block_c(c),  # no reduction: the same tile in every pattern
            )
    return grad


@triton_op("bckd::paired_giou_triton", mutates_args=())
def paired_giou_triton(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    _contract.check_boxes("paired_giou_triton", pred, target, eps, _contract.TRITON_DTYPES)
    n = pred.shape[0]
    loss = pred.new_empty((n,), dtype=torch.float32)
    if n > 0:
        layout, vec, n_vec, (ps, ts) = _box_plan(pred, target)
        with _device_guard(pred):
            wrap_triton(_giou_fwd_kernel)[_grid(1, n)](
                pred, target, loss, n, _bucket(n), n_vec, *ps, *ts, float(eps), LAYOUT=layout, VEC=vec,
            )
    return loss


@triton_op("bckd::_paired_giou_backward_triton", mutates_args=())
def _paired_giou_backward_triton(grad: Tensor, pred: Tensor, target: Tensor, eps: float,
                                 output_mask: Optional[list[bool]] = None) -> tuple[Tensor, Tensor]:
    """The C++ op's rule (csrc/ops_host.h): output_mask (None: both) says which of
    (grad_pred, grad_target) to compute; an unwanted one is neither computed nor
    written and takes no part in the access plan. It comes back as an empty
    tensor: the schema is inferred from these annotations (torch 2.11's
    triton_op ignores a written schema), and an inferred one returns Tensors only."""
    op = "_paired_giou_backward_triton"
    _contract.check_boxes(op, pred, target, eps, _contract.TRITON_DTYPES)
    coef = _per_location(op, grad, "grad", pred)
    want_p, want_t = (True, True) if output_mask is None else (bool(x) for x in output_mask)
    grad_pred = torch.empty_like(pred) if want_p else pred.new_empty(0)
    grad_target = torch.empty_like(target) if want_t else target.new_empty(0)
    n = pred.shape[0]
    if n > 0 and (want_p or want_t):
        outputs = [g for g, wanted in ((grad_pred, want_p), (grad_target, want_t)) if wanted]
        layout, vec, n_vec, (ps, ts, *gs) = _box_plan(pred, target, *outputs)
        # An unwanted output's stand-in is its input (pointer and strides), never written.
        gp, gps = (grad_pred, gs[0]) if want_p else (pred, ps)
        gt, gts = (grad_target, gs[-1]) if want_t else (target, ts)
        with _device_guard(pred):
            wrap_triton(_giou_bwd_kernel)[_grid(1, n)](
                pred, target, coef, gp, gt, n, _bucket(n), n_vec, *ps, *ts, *gps, *gts, float(eps),
                LAYOUT=layout, VEC=vec, GRAD_P=want_p, GRAD_T=want_t,
            )
    return grad_pred, grad_target


@triton_op("bckd::dfl_giou_distill_triton", mutates_args=())
def dfl_giou_distill_triton(student_reg: Tensor, teacher_reg: Tensor, reg_max: int = 16, eps: float = 1e-6) -> Tensor:
    _contract.check_dfl("dfl_giou_distill_triton", student_reg, teacher_reg, reg_max, eps, _contract.TRITON_DTYPES)
    loss = student_reg.new_empty(_contract.location_shape(student_reg), dtype=torch.float32)
    nbins = reg_max + 1
    if loss.numel() > 0:
        p = _plan(student_reg, teacher_reg, channels=4 * nbins, most_bytes=_DFL_VECTOR_BYTES[student_reg.element_size()])
        with _device_guard(student_reg):
            wrap_triton(_dfl_fwd_kernel)[_grid(p.images, p.HW)](
                student_reg, teacher_reg, loss, _bucket(loss.numel()), nbins, p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], float(eps),
                LAYOUT=p.layout, VEC=p.vec, NB=_bins_block(nbins, p.layout, p.vec),
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
    nbins = reg_max + 1
    if grad_student.numel() > 0:
        p = _plan(student_reg, teacher_reg, grad_student, channels=4 * nbins,
                  most_bytes=_DFL_VECTOR_BYTES[student_reg.element_size()])
        with _device_guard(student_reg):
            wrap_triton(_dfl_bwd_kernel)[_grid(p.images, p.HW)](
                student_reg, teacher_reg, coef, grad_student, _bucket(coef.numel()), nbins, p.n_ch, p.hw, p.W,
                *p.strides[0], *p.strides[1], *p.strides[2], float(eps),
                LAYOUT=p.layout, VEC=p.vec, NB=_bins_block(nbins, p.layout, p.vec),
            )
    return grad_student


# -------------------------------------------------------------- autograd ----


def _giou_autograd(backward_op):
    """Gradients to the boxes that need them: the backward op is told which
    (its output_mask), as the compiled operators' C++ autograd does, so that a
    detached target's gradient is neither computed nor written."""

    def setup(ctx, inputs, output):
        pred, target, eps = inputs
        ctx.save_for_backward(pred, target)
        ctx.eps = eps

    def backward(ctx, grad):
        pred, target = ctx.saved_tensors
        mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])]
        if not any(mask):
            return None, None, None
        grad_pred, grad_target = backward_op(grad, pred, target, ctx.eps, mask)
        return grad_pred if mask[0] else None, grad_target if mask[1] else None, None

    return backward, setup


_ops = torch.ops.bckd
for _name, _op, (_backward, _setup), _backward_op in (
    ("bin_cls_distill_triton", bin_cls_distill_triton,
     bcdl_autograd(_ops._bin_cls_distill_backward_triton, _ops.bin_cls_distill_triton), _bin_cls_distill_backward_triton),
    ("paired_giou_triton", paired_giou_triton, _giou_autograd(_ops._paired_giou_backward_triton),
     _paired_giou_backward_triton),
    ("dfl_giou_distill_triton", dfl_giou_distill_triton, dfl_autograd(_ops._dfl_giou_distill_backward_triton),
     _dfl_giou_distill_backward_triton),
):
    _op.register_autograd(_backward, setup_context=_setup)
    _no_double, _no_setup = no_double_backward(_name)
    _backward_op.register_autograd(_no_double, setup_context=_no_setup)
