"""Teacher-student distillation of a GFL student (docs/method.md sections 1-5).

The methods are the entries of :data:`METHODS`, each the function that computes its
losses from the student's and the teacher's head maps (none, the student alone, has
none). BCDL and ILDL are ``bckd_kernels.bckd_loss_levels``: the fused ops straight on
each level's ``[B, C, H, W]`` / ``[B, 68, H, W]`` maps (no permute copy), normalised by
the ground-truth losses' avg_factor tensor and skipped on a level without positives
by a multiplicative gate: no host synchronisation. KD and LD, the baselines, are
plain PyTorch on the flattened maps.
"""

import dataclasses
import functools
import os
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import bckd_kernels
from bckd_kernels.functional import reduce_loss

from . import checkpoints, data, gfl, loading
from .errors import UserError


def level_masks(masks, shapes, strides):
    """Per-level valid masks [B, H_l, W_l]: a location counts when its point
    (x·stride, y·stride) lies on image pixels, not on padding."""
    return [masks[:, ::s, ::s][:, :h, :w].contiguous() for (h, w), s in zip(shapes, strides)]


def kd_loss(student_logits, teacher_logits, positive, avg_factor, *, T=2.0, loss_weight=10.0):
    """Softmax KD over the C classes of each positive location.

    student_logits, teacher_logits [N, C]; positive [N] bool; avg_factor a tensor.
    ``loss_weight / (A + ε) · Σ_pos T² · mean_k KL(softmax(zt/T) ‖ softmax(zs/T))_k``,
    reduced as the BCKD losses are.
    With C = 1 the softmax is constant: the loss and its gradient are 0.
    """
    kl = F.kl_div(F.log_softmax(student_logits / T, 1), F.softmax(teacher_logits / T, 1), reduction="none")
    per_location = kl.mean(1) * (T * T)  # [N]
    return loss_weight * reduce_loss(per_location * positive, avg_factor)


def ld_loss(student_reg, teacher_reg, weight, weight_avg, *, reg_max=16, T=10.0, loss_weight=0.25):
    """LD on the edge distributions.

    student_reg, teacher_reg [N, 4·(reg_max+1)]; weight [N] (0 off the positives);
    weight_avg: the DFL normaliser. Per edge T² · mean over bins of the KL, mean
    over the 4 edges, as GFL's DFL is normalised.
    """
    s = F.log_softmax(student_reg.reshape(-1, reg_max + 1) / T, 1)
    t = F.softmax(teacher_reg.reshape(-1, reg_max + 1) / T, 1)
    per_edge = F.kl_div(s, t, reduction="none").mean(1) * (T * T)  # [4N]
    return loss_weight * (per_edge.view(-1, 4).mean(1) * weight).sum() / weight_avg


@dataclasses.dataclass(frozen=True)
class Maps:
    """What a method's losses are computed from: the student's per-level maps ``cls``
    [B, C, H, W] and ``reg`` [B, 4·(reg_max+1), H, W] (bf16 under --amp), the
    teacher's ``t_cls`` and ``t_reg`` (float32), masks [B, H, W] (1 on image pixels),
    the :class:`gfl.GFLExtras` of :func:`gfl.gfl_loss`, BCDL's and ILDL's weights
    (:class:`bckd_train.config.BCKDWeights`) and the ``bckd_kernels`` backend."""

    cls: list
    reg: list
    t_cls: list
    t_reg: list
    masks: torch.Tensor
    extras: object
    strides: tuple
    reg_max: int
    weights: object
    backend: str


def kd_losses(maps):
    """KD on the classification of the ATSS positives (:func:`kd_loss`), the student's
    logits upcast to float32."""
    c = maps.cls[0].shape[1]
    s_logits = gfl.flatten_levels(maps.cls).reshape(-1, c).float()
    t_logits = gfl.flatten_levels(maps.t_cls).reshape(-1, c).float()
    return {"loss_kd": kd_loss(s_logits, t_logits, maps.extras.positive.reshape(-1), maps.extras.avg_factor)}


def ld_losses(maps):
    """LD on the edge distributions of the ATSS positives (:func:`ld_loss`), weighted
    by the detached student max-class score, upcast to float32."""
    c, bins = maps.cls[0].shape[1], 4 * (maps.reg_max + 1)
    s_reg = gfl.flatten_levels(maps.reg).reshape(-1, bins).float()
    t_reg = gfl.flatten_levels(maps.t_reg).reshape(-1, bins).float()
    score = gfl.flatten_levels(maps.cls).detach().reshape(-1, c).float().sigmoid().max(1).values
    weight = score * maps.extras.positive.reshape(-1)
    return {"loss_ld": ld_loss(s_reg, t_reg, weight, maps.extras.weight_avg, reg_max=maps.reg_max)}


def fused_losses(maps, *, losses):
    """``losses`` ("bcdl", "ildl" or both) of ``bckd_kernels.bckd_loss_levels``, summed
    over levels; a level without positives is gated off."""
    cls, reg = maps.cls, maps.reg
    valid = level_masks(maps.masks.to(cls[0].dtype), [c.shape[-2:] for c in cls], maps.strides)
    # the ops want the student's dtype: a float32 memo meets bf16 maps under autocast
    t_cls = [t.to(s.dtype) for t, s in zip(maps.t_cls, cls)]
    t_reg = [t.to(s.dtype) for t, s in zip(maps.t_reg, reg)]
    w = maps.weights
    return bckd_kernels.bckd_loss_levels(cls, t_cls, reg, t_reg, valid, avg_factor=maps.extras.avg_factor,
                                         pos_per_level=maps.extras.pos_per_level, losses=losses, beta=w.beta,
                                         cls_weight=w.cls_weight, loc_weight=w.loc_weight, reg_max=maps.reg_max,
                                         backend=maps.backend)


@dataclasses.dataclass(frozen=True)
class Claim:
    """A result the paper claims for a method against ``other``, checked by the paper
    table (docs/results.md section 4): the method's mean AP over seeds minus other's is
    above ``stds`` times their pooled standard deviation (at least that when not
    ``strict``)."""

    other: str
    stds: int = 0
    strict: bool = True


@dataclasses.dataclass(frozen=True)
class Method:
    """A distillation method: ``losses(maps)``, its dict of loss tensors from a
    :class:`Maps` (None: no teacher and no distillation loss), and the paper's
    :class:`Claim` entries for it."""

    losses: Optional[Callable] = None
    claims: tuple = ()

    @property
    def uses_teacher(self):
        return self.losses is not None


METHODS = {
    # the student alone: the ground-truth GFL losses only
    "none": Method(),
    # softmax KD on the classification of ATSS positives (LD's version: T = 2, /C, weight 10)
    "kd": Method(kd_losses),
    # localization distillation: KL of the 17-bin edge distributions on positives (T = 10, weight 0.25)
    "ld": Method(ld_losses),
    # binary classification distillation only (docs/method.md section 1)
    "bcdl": Method(functools.partial(fused_losses, losses=("bcdl",)), claims=(Claim("none"),)),
    # IoU-based localization distillation only (docs/method.md section 2), ω = valid · max_k |σ(zt) − σ(zs)|
    "ildl": Method(functools.partial(fused_losses, losses=("ildl",)), claims=(Claim("none"),)),
    # both: α1 · BCDL + α2 · ILDL, the weights of TrainConfig.bckd (the paper's α1 = 1, α2 = 4, β = 1)
    "bckd": Method(functools.partial(fused_losses, losses=("bcdl", "ildl")),
                   claims=(Claim("none", stds=2), Claim("ld", strict=False))),
}


class Distiller:
    """The distillation losses of one method, from a frozen teacher's head maps.

    Args:
        teacher: a GFL detector with the student's classes, strides and reg_max;
            it is put in eval mode with gradients off and is never trained.
        method: a key of :data:`METHODS`.
        backend: the ``bckd_kernels`` backend for BCDL/ILDL ("auto", "reference", ...).
        memo: keep the teacher's maps per (image index, transform) and reuse them when
            the same input comes back. Exact when the inputs are a function of that key
            (flips and 90° rotations; jittered inputs are never kept); costs the maps' memory
            (≈ 110 kB per fashion scene, ≈ 0.9 MB per forest tile, float32). A dict (from
            :func:`teacher_memo`) starts the memo filled.
    """

    def __init__(self, teacher, method, *, backend="auto", memo=False):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")
        self.method = method
        self.uses_teacher = METHODS[method].uses_teacher
        self.backend = backend
        self.teacher = teacher.eval().requires_grad_(False) if teacher is not None else None
        if self.uses_teacher and teacher is None:
            raise ValueError(f"method {method!r} needs a teacher")
        self.memo = memo if isinstance(memo, dict) else ({} if memo else None)

    @torch.no_grad()
    def teacher_maps(self, images, keys=None):
        """Teacher's (cls, reg) per level for the batch, on the images' device, float32
        (autocast off: under --amp bf16 the live teacher, the memo and a --teacher-maps
        file give the same maps); keys: the images' :class:`data.SampleKey` keys (or
        tuples of their fields), kept in the memo as (index, transform). The memo lives
        on the host: a GPU teacher's maps are copied there once, and a batch's come back
        through pinned memory without a wait."""
        with torch.autocast(images.device.type, enabled=False):
            return self._teacher_maps(images, keys)

    def _teacher_maps(self, images, keys):
        keys = None if keys is None else [data.SampleKey(*k) for k in keys]
        if self.memo is None or keys is None or any(k.jitter is not None for k in keys):
            return self.teacher(images)  # a jittered input does not come back
        keys = [(k.index, k.transform) for k in keys]
        missing = [i for i, k in enumerate(keys) if k not in self.memo]
        if missing:
            cls, reg = self.teacher(images[missing])
            cls, reg = [c.cpu() for c in cls], [r.cpu() for r in reg]
            for j, i in enumerate(missing):
                self.memo[keys[i]] = ([c[j].clone() for c in cls], [r[j].clone() for r in reg])
        levels = len(self.memo[keys[0]][0])
        cls = [_stack_to([self.memo[k][0][l] for k in keys], images.device) for l in range(levels)]
        reg = [_stack_to([self.memo[k][1][l] for k in keys], images.device) for l in range(levels)]
        return cls, reg

    def __call__(self, images, masks, cls, reg, extras, *, strides, reg_max, weights, keys=None, teacher=None):
        """Distillation losses for the student's per-level maps ``cls``/``reg``.

        images [B, 3, H, W], masks [B, H, W] (1 on image pixels); extras: the
        :class:`gfl.GFLExtras` of :func:`gfl.gfl_loss`; weights: BCDL's and ILDL's
        (:class:`bckd_train.config.BCKDWeights`); teacher: the teacher's (cls, reg)
        when already computed (:meth:`teacher_maps`), else computed here.
        Returns the method's dict of loss tensors (empty for "none"). The student's
        maps may be bf16: BCDL and ILDL take them as they are, the teacher's float32
        maps cast to bf16 beside them (the kernels accumulate in float32); KD and LD
        upcast the student's to float32 (plain PyTorch: a KL between nearly equal
        distributions cancels to noise in bf16).
        """
        if not self.uses_teacher:
            return {}
        t_cls, t_reg = teacher if teacher is not None else self.teacher_maps(images, keys)
        return METHODS[self.method].losses(Maps(cls, reg, t_cls, t_reg, masks=masks, extras=extras, strides=strides,
                                                reg_max=reg_max, weights=weights, backend=self.backend))


def _stack_to(maps, device):
    """Stacks host maps [K, H, W] into [B, K, H, W] on ``device``: on a GPU through a
    pinned buffer, copied without waiting."""
    if device.type != "cuda":
        return torch.stack(maps)
    out = torch.empty((len(maps), *maps[0].shape), dtype=maps[0].dtype, pin_memory=True)
    return torch.stack(maps, out=out).to(device, non_blocking=True)


@torch.no_grad()
def teacher_memo(teacher, dataset, augment, *, path=None, batch_size=16):
    """The teacher's maps for every (image index, transform) that training with
    ``augment`` can draw: a filled memo for :class:`Distiller` (on the host, the
    teacher on whichever device), so the runs of a table share one teacher pass.
    With ``path``, read from that file when it exists, else computed and written
    there atomically (float32, ≈ 425 MB for the fashion train set with flips)."""
    if path is not None and os.path.exists(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a file handed to us that does not read back
            raise UserError(f"--teacher-maps {path} is not readable ({type(exc).__name__}); delete it and it will "
                            "be computed again") from exc
    teacher.eval()
    device = next(teacher.parameters()).device
    keys = [(i, t) for i in range(len(dataset)) for t in data.AUGMENTS[augment]]
    memo = {}
    for start in range(0, len(keys), batch_size):
        chunk = keys[start : start + batch_size]
        images, _, _ = loading.load_batch(dataset, chunk)
        cls, reg = teacher(images.to(device))
        cls, reg = [c.cpu() for c in cls], [r.cpu() for r in reg]
        for j, key in enumerate(chunk):
            memo[key] = ([c[j] for c in cls], [r[j] for r in reg])
    if path is not None:
        checkpoints.save_atomic(lambda f: torch.save(memo, f), path)
    return memo


@torch.no_grad()
def score_gap(student, teacher, dataset, *, batch_size=8, device="cpu"):
    """Per FPN level, the mean |σ(zt) − σ(zs)| over every location and class of
    the dataset's images (the paper's Figure 3 statistic)."""
    student.eval()
    teacher.eval()
    sums, counts = None, None
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, masks, _ = data.collate(items)
        images = images.to(device)
        s_cls, _ = student(images)
        t_cls, _ = teacher(images)
        valid = level_masks(masks.to(device), [c.shape[-2:] for c in s_cls], student.cfg.strides)
        gaps = [((s.sigmoid() - t.sigmoid()).abs() * v[:, None]).sum() for s, t, v in zip(s_cls, t_cls, valid)]
        n = [v.sum() * s.shape[1] for s, v in zip(s_cls, valid)]
        sums = gaps if sums is None else [a + b for a, b in zip(sums, gaps)]
        counts = n if counts is None else [a + b for a, b in zip(counts, n)]
    return [float(s / c) for s, c in zip(sums, counts)]
