"""GIoU of paired boxes in Triton: the GIoU maths (which the DFL kernels share),
the two box kernels and the ops ``bckd::paired_giou_triton`` and
``bckd::_paired_giou_backward_triton`` with their autograd."""

from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from .. import _contract
from .common import (CHANNELS, LOCATIONS, STRIDED, autotune, bucket, device_guard, grid, max_nan, per_location,
                     pow2_dividing, register_autograd, units)

# ---------------------------------------------------------------- maths ----


@triton.jit
def _dmin(a, b):
    """∂ min(a, b)/∂a, ties split evenly."""
    return tl.where(a < b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def min_nan(a, b):
    """min(a, b) that keeps NaN (tl.minimum's default drops it)."""
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def giou_loss(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps):
    """1 − GIoU of boxes (px1, py1, px2, py2) and (tx1, ty1, tx2, ty2) (see csrc/bckd_math.h)."""
    iw = min_nan(px2, tx2) - max_nan(px1, tx1)
    ih = min_nan(py2, ty2) - max_nan(py1, ty1)
    inter = max_nan(iw, 0.0) * max_nan(ih, 0.0)
    uni = max_nan((px2 - px1) * (py2 - py1) + (tx2 - tx1) * (ty2 - ty1) - inter, eps)
    ew = max_nan(px2, tx2) - min_nan(px1, tx1)
    eh = max_nan(py2, ty2) - min_nan(py1, ty1)
    enc = max_nan(max_nan(ew, 0.0) * max_nan(eh, 0.0), eps)
    return 1.0 - inter / uni + (enc - uni) / enc


@triton.jit
def giou_grad(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps, g):
    """g · ∂(1 − GIoU)/∂ of the 8 coordinates (see csrc/bckd_math.h)."""
    iw = min_nan(px2, tx2) - max_nan(px1, tx1)
    ih = min_nan(py2, ty2) - max_nan(py1, ty1)
    iwc = max_nan(iw, 0.0)
    ihc = max_nan(ih, 0.0)
    inter = iwc * ihc
    pw = px2 - px1
    ph = py2 - py1
    tw = tx2 - tx1
    th = ty2 - ty1
    uraw = pw * ph + tw * th - inter
    uni = max_nan(uraw, eps)
    ew = max_nan(px2, tx2) - min_nan(px1, tx1)
    eh = max_nan(py2, ty2) - min_nan(py1, ty1)
    ewc = max_nan(ew, 0.0)
    ehc = max_nan(eh, 0.0)
    eraw = ewc * ehc
    enc = max_nan(eraw, eps)
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


# -------------------------------------------------------------- kernels ----
#
# Boxes [N, 4]. CHANNELS (rows of 4 packed one after another, the usual case):
# a program's boxes are one run of 4·BLOCK_L values, read and written as such
# (16-byte accesses, 2 boxes per access in 16-bit types) and split into
# coordinates in registers. LOCATIONS (column-major boxes): one run of BLOCK_L
# values per coordinate. STRIDED: any other strides, box by box. n_vec is the
# length of those runs' range (4·N or N) in units of VEC.


@triton.jit
def _columns(n, n_vec, s0, s1, ACCESS: tl.constexpr, VEC: tl.constexpr):
    """LOCATIONS or STRIDED: the mask of boxes n, the offset of their x1 and the
    step from one coordinate to the next."""
    if ACCESS == LOCATIONS:
        return n < units(n_vec, VEC), n, units(s1, VEC)
    else:
        return n < n_vec, n * s0, units(s1, 1)


@triton.jit
def _load_boxes(ptr, blk, n, n_vec, s0, s1, ACCESS: tl.constexpr, VEC: tl.constexpr, BLOCK_L: tl.constexpr):
    """x1, y1, x2, y2 of boxes n (block blk), float32."""
    if ACCESS == CHANNELS:
        f = blk * (4 * BLOCK_L) + tl.arange(0, 4 * BLOCK_L).to(tl.int64)
        v = tl.load(ptr + f, mask=f < units(n_vec, VEC), other=0.0).to(tl.float32)
        x, y = tl.split(tl.reshape(v, [BLOCK_L, 2, 2]))  # [box, i, j] = coordinate 2i + j
        x1, x2 = tl.split(x)
        y1, y2 = tl.split(y)
    else:
        mask, first, step = _columns(n, n_vec, s0, s1, ACCESS, VEC)
        x1 = tl.load(ptr + first, mask=mask, other=0.0).to(tl.float32)
        y1 = tl.load(ptr + first + step, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(ptr + first + 2 * step, mask=mask, other=0.0).to(tl.float32)
        y2 = tl.load(ptr + first + 3 * step, mask=mask, other=0.0).to(tl.float32)
    return x1, y1, x2, y2


@triton.jit
def _store_boxes(ptr, blk, n, n_vec, s0, s1, x1, y1, x2, y2, ACCESS: tl.constexpr, VEC: tl.constexpr,
                 BLOCK_L: tl.constexpr):
    ty = ptr.dtype.element_ty
    if ACCESS == CHANNELS:
        f = blk * (4 * BLOCK_L) + tl.arange(0, 4 * BLOCK_L).to(tl.int64)
        v = tl.reshape(tl.join(tl.join(x1, x2), tl.join(y1, y2)), [4 * BLOCK_L])
        tl.store(ptr + f, v.to(ty), mask=f < units(n_vec, VEC))
    else:
        mask, first, step = _columns(n, n_vec, s0, s1, ACCESS, VEC)
        tl.store(ptr + first, x1.to(ty), mask=mask)
        tl.store(ptr + first + step, y1.to(ty), mask=mask)
        tl.store(ptr + first + 2 * step, x2.to(ty), mask=mask)
        tl.store(ptr + first + 3 * step, y2.to(ty), mask=mask)


@autotune("giou")
@triton.jit
def _giou_fwd_kernel(p_ptr, t_ptr, loss_ptr, n_loc, n_bucket, n_vec, p_s0, p_s1, t_s0, t_s1, eps,
                     ACCESS: tl.constexpr, VEC: tl.constexpr, BLOCK_L: tl.constexpr):
    blk = tl.program_id(0).to(tl.int64)
    n = blk * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    px1, py1, px2, py2 = _load_boxes(p_ptr, blk, n, n_vec, p_s0, p_s1, ACCESS, VEC, BLOCK_L)
    tx1, ty1, tx2, ty2 = _load_boxes(t_ptr, blk, n, n_vec, t_s0, t_s1, ACCESS, VEC, BLOCK_L)
    tl.store(loss_ptr + n, giou_loss(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps), mask=n < n_loc)


@autotune("giou", "GRAD_P", "GRAD_T")
@triton.jit
def _giou_bwd_kernel(p_ptr, t_ptr, coef_ptr, gp_ptr, gt_ptr, n_loc, n_bucket, n_vec, p_s0, p_s1, t_s0, t_s1,
                     gp_s0, gp_s1, gt_s0, gt_s1, eps, ACCESS: tl.constexpr, VEC: tl.constexpr,
                     GRAD_P: tl.constexpr, GRAD_T: tl.constexpr, BLOCK_L: tl.constexpr):
    # GRAD_P / GRAD_T: which gradients to write (the op's output_mask); the
    # other's pointer is a stand-in, never written, and the code computing only
    # it is dropped by the compiler.
    blk = tl.program_id(0).to(tl.int64)
    n = blk * BLOCK_L + tl.arange(0, BLOCK_L).to(tl.int64)
    px1, py1, px2, py2 = _load_boxes(p_ptr, blk, n, n_vec, p_s0, p_s1, ACCESS, VEC, BLOCK_L)
    tx1, ty1, tx2, ty2 = _load_boxes(t_ptr, blk, n, n_vec, t_s0, t_s1, ACCESS, VEC, BLOCK_L)
    coef = tl.load(coef_ptr + n, mask=n < n_loc, other=0.0)
    gp0, gp1, gp2, gp3, gt0, gt1, gt2, gt3 = giou_grad(px1, py1, px2, py2, tx1, ty1, tx2, ty2, eps, coef)
    if GRAD_P:
        _store_boxes(gp_ptr, blk, n, n_vec, gp_s0, gp_s1, gp0, gp1, gp2, gp3, ACCESS, VEC, BLOCK_L)
    if GRAD_T:
        _store_boxes(gt_ptr, blk, n, n_vec, gt_s0, gt_s1, gt0, gt1, gt2, gt3, ACCESS, VEC, BLOCK_L)


# ------------------------------------------------------------ host side ----


def box_plan(*xs):
    """(access, vec, n_vec, strides) of same-shape boxes ``[N, 4]``: CHANNELS for
    rows of 4 packed one after another, LOCATIONS for column-major boxes, STRIDED
    for other strides; n_vec and the column stride in units of vec (see the
    kernels)."""
    n = xs[0].shape[0]
    st = [(x.stride(0) if n > 1 else 4, x.stride(1)) for x in xs]
    most = 16 // xs[0].element_size()
    if all(s == (4, 1) for s in st):
        vec = pow2_dividing([4 * n], most)
        return int(CHANNELS), vec, 4 * n // vec, st
    if n > 1 and all(s0 == 1 for s0, _ in st):
        vec = pow2_dividing([n] + [s1 for _, s1 in st], most)
        return int(LOCATIONS), vec, n // vec, [(1, s1 // vec) for _, s1 in st]
    return int(STRIDED), 1, n, st



@triton_op("bckd::paired_giou_triton", mutates_args=())
def paired_giou_triton(pred: Tensor, target: Tensor, eps: float = 1e-6) -> Tensor:
    _contract.check_boxes("paired_giou_triton", pred, target, eps, _contract.TRITON_DTYPES)
    n = pred.shape[0]
    loss = pred.new_empty((n,), dtype=torch.float32)
    if n > 0:
        access, vec, n_vec, (ps, ts) = box_plan(pred, target)
        with device_guard(pred):
            wrap_triton(_giou_fwd_kernel)[grid(1, n)](
                pred, target, loss, n, bucket(n), n_vec, *ps, *ts, float(eps), ACCESS=access, VEC=vec,
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
    coef = per_location(op, grad, "grad", pred)
    want_p, want_t = (True, True) if output_mask is None else (bool(x) for x in output_mask)
    grad_pred = torch.empty_like(pred) if want_p else pred.new_empty(0)
    grad_target = torch.empty_like(target) if want_t else target.new_empty(0)
    n = pred.shape[0]
    if n > 0 and (want_p or want_t):
        outputs = [g for g, wanted in ((grad_pred, want_p), (grad_target, want_t)) if wanted]
        access, vec, n_vec, (ps, ts, *gs) = box_plan(pred, target, *outputs)
        # An unwanted output's stand-in is its input (pointer and strides), never written.
        gp, gps = (grad_pred, gs[0]) if want_p else (pred, ps)
        gt, gts = (grad_target, gs[-1]) if want_t else (target, ts)
        with device_guard(pred):
            wrap_triton(_giou_bwd_kernel)[grid(1, n)](
                pred, target, coef, gp, gt, n, bucket(n), n_vec, *ps, *ts, *gps, *gts, float(eps),
                ACCESS=access, VEC=vec, GRAD_P=want_p, GRAD_T=want_t,
            )
    return grad_pred, grad_target


# -------------------------------------------------------------- autograd ----


def _autograd(backward_op):
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


register_autograd("paired_giou_triton", paired_giou_triton, _paired_giou_backward_triton,
                  _autograd(torch.ops.bckd._paired_giou_backward_triton))
