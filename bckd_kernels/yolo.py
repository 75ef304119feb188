"""BCKD between two Ultralytics YOLO detection models.

- :class:`BCKDTrainer` (``bckd_kernels._yolo_trainer``): Ultralytics' own
  trainer with BCKD added to the student's loss, for
  ``YOLO("yolo11n.yaml").train(data=..., trainer=BCKDTrainer, distill_model="teacher.pt")``.
  It takes the normaliser and the positives from the student's own assigner.
- :func:`yolo_bckd_loss`: the losses alone, for a loop of one's own.

Heads. Ultralytics' ``Detect`` head predicts, per anchor point, ``nc`` sigmoid
class logits and each box edge (left, top, right, bottom) either as a
distribution over ``bins`` bins (DFL, YOLOv8 / YOLO11: Ultralytics'
``reg_max = 16``, the GFocal form with ``reg_max = 15`` in this package's
convention) or, with ``bins = 1`` (YOLO26), as the distance itself. BCDL
applies to the class logits as to a GFocal head. ILDL compares boxes: two DFL
heads of the same bins go through the fused DFL + GIoU op, which decodes in the
kernel; otherwise (YOLO26, or a teacher and a student of different bins) each
side is decoded to its four distances, and ``1 − GIoU`` of the two boxes comes
from the fused paired-GIoU op. Both boxes share the anchor point, and GIoU does
not change under a shift or a scaling of both boxes, so the anchor point is
taken as the origin and the distances stay in the level's stride units.

Outputs read:

- Ultralytics ≥ 8.4 returns, in train mode, ``{"scores": [B, nc, A],
  "boxes": [B, 4·bins, A], "feats": [...]}`` with the levels concatenated
  along A; ``[B, C, A]`` is read as ``[B, C, 1, A]`` head maps (views), one
  per level when the level sizes are given. End-to-end heads (YOLO26) nest it
  under ``"one2many"`` and ``"one2one"``; ``branch`` says which is distilled
  (a head without branches is its own for both).
- Older versions return per-level maps ``[B, 4·bins + nc, H, W]``, boxes
  first; the two channel ranges are read as views, level by level.
- In eval mode (the teacher's), both return ``(decoded, raw)``; ``raw`` is used.

Nothing is copied on the DFL path: the fused ops read the maps in place,
whatever the strides.

Normaliser. Ultralytics divides its losses by ``target_scores_sum``, the sum of
its assigner's soft targets, and BCKD divides by the detector's own normaliser;
:class:`BCKDTrainer` passes ``target_scores_sum`` (averaged over DDP ranks) and
the assigner's positives per level (a level without any adds nothing, the
reference code's gate). Without the assigner, :func:`yolo_bckd_loss`'s default
``avg_factor`` stands in with the teacher's soft count of objects,
``A = Σ_images max(Σ_anchors max_k σ(zt), 1)``, computed on the device without
host synchronisation. Ultralytics' ``v8DetectionLoss`` returns its losses times
the batch size: the trainer multiplies these by the batch size too.
"""

import torch

from .decode import dfl_decode
from .functional import bckd_loss_levels, bcdl_loss, giou_loss

__all__ = ["BCKDTrainer", "head_maps", "teacher_soft_count", "yolo_bckd_loss"]

BRANCHES = ("one2many", "one2one")


def __getattr__(name):
    if name == "BCKDTrainer":  # imports Ultralytics, which only the trainer needs
        from ._yolo_trainer import BCKDTrainer

        return BCKDTrainer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def raw_outputs(preds, branch="one2many"):
    """The train-mode outputs inside ``preds``: the raw part of an eval-mode
    ``(decoded, raw)`` tuple, and ``branch`` of an end-to-end head."""
    if branch not in BRANCHES:
        raise ValueError(f"branch must be one of {BRANCHES}, got {branch!r}")
    if isinstance(preds, tuple) and len(preds) == 2 and isinstance(preds[1], (dict, list, tuple)):
        preds = preds[1]  # eval mode: (decoded predictions, raw outputs)
    if isinstance(preds, dict) and branch in preds:
        preds = preds[branch]
    return preds


def head_maps(preds, *, bins=16, level_sizes=None, branch="one2many"):
    """The per-level ``(scores, boxes)`` head maps of an Ultralytics ``Detect`` output.

    Args:
        preds: the model's output in train or eval mode (see the module's
            docstring for the accepted forms).
        bins: box channels per edge of the per-level map form (16 for
            YOLOv8 / YOLO11); the dict form says its own (``boxes.shape[1] / 4``).
        level_sizes: the anchors of each level (``H·W``, in the head's order)
            to cut the dict form into; None: one piece.
        branch: the branch of an end-to-end head, ``"one2many"`` or ``"one2one"``.

    Returns:
        A list of ``(scores [B, nc, H, W], boxes [B, 4·bins, H, W])`` views
        of ``preds``: ``H = 1, W = A`` (or the level's anchors) for the dict
        output, one per level for the per-level maps.
    """
    preds = raw_outputs(preds, branch)
    if isinstance(preds, dict):
        scores, boxes = preds["scores"], preds["boxes"]
        if boxes.dim() != 3 or boxes.shape[1] % 4 or scores.dim() != 3 or scores.shape[2] != boxes.shape[2]:
            raise ValueError(f"boxes {tuple(boxes.shape)} and scores {tuple(scores.shape)}: expected [B, 4·bins, A] "
                             "and [B, nc, A]")
        if level_sizes is None:
            return [(scores.unsqueeze(2), boxes.unsqueeze(2))]
        if sum(level_sizes) != scores.shape[2]:
            raise ValueError(f"level_sizes {list(level_sizes)} add up to {sum(level_sizes)}, but the head has "
                             f"{scores.shape[2]} anchors")
        return list(zip((x.unsqueeze(2) for x in scores.split(list(level_sizes), 2)),
                        (x.unsqueeze(2) for x in boxes.split(list(level_sizes), 2))))
    if isinstance(preds, (list, tuple)) and all(torch.is_tensor(x) and x.dim() == 4 for x in preds):
        nbox = 4 * bins
        if any(x.shape[1] <= nbox for x in preds):
            raise ValueError(f"per-level maps must have 4·bins = {nbox} box channels and then the classes")
        return [(x[:, nbox:], x[:, :nbox]) for x in preds]
    raise TypeError(
        "expected an Ultralytics Detect output: a dict with 'scores' and 'boxes', a list of per-level "
        f"[B, 4·bins + nc, H, W] maps, or an eval-mode (decoded, raw) tuple; got {type(preds).__name__}"
    )


def _level_valid(valid, maps):
    """``valid [B, A]`` cut into the per-level ``[B, H, W]`` of ``maps``."""
    if valid is None:
        return [None] * len(maps)
    sizes = [scores.shape[2] * scores.shape[3] for scores, _ in maps]
    if valid.dim() != 2 or valid.shape[1] != sum(sizes):
        raise ValueError(f"valid must be [B, {sum(sizes)}] (one value per anchor), got {tuple(valid.shape)}")
    return [v.reshape(s.shape[0], *s.shape[2:]) for v, (s, _) in zip(valid.split(sizes, dim=1), maps)]


@torch.no_grad()
def teacher_soft_count(teacher_maps, valid=None):
    """``Σ_images max(Σ_anchors valid · max_k σ(zt), 1)``, a 0-dim float32 tensor.

    ``teacher_maps``: :func:`head_maps` of the teacher; ``valid``: ``[B, A]``.
    """
    per_image = 0.0
    for (scores, _), v in zip(teacher_maps, _level_valid(valid, teacher_maps)):
        # σ is increasing, so max_k σ(z) = σ(max_k z): only [B, H, W] is ever computed.
        conf = scores.amax(dim=1).float().sigmoid()
        if v is not None:
            conf = conf * v
        per_image = per_image + conf.flatten(1).sum(1)
    return per_image.clamp(min=1.0).sum()


def edge_distances(boxes):
    """``[B, 4·bins, H, W]`` box outputs -> the four edge distances ``[B·H·W, 4]``
    (the DFL integral for ``bins > 1``, the outputs themselves for ``bins = 1``)."""
    rows = boxes.permute(0, 2, 3, 1).reshape(-1, boxes.shape[1])
    bins = boxes.shape[1] // 4
    return rows if bins == 1 else dfl_decode(rows, bins - 1)


def _box_at_origin(dist):
    """Distances ``[N, 4]`` (l, t, r, b) -> the box ``[N, 4]`` of an anchor at the origin."""
    return torch.cat([-dist[:, :2], dist[:, 2:]], dim=1)


def _bckd_from_distances(student, teacher, valid, *, avg_factor, pos_per_level, beta, cls_weight, loc_weight,
                         backend):
    """BCDL on the class maps and ILDL through the paired-GIoU op on decoded edge distances."""
    gate = None if pos_per_level is None else (pos_per_level > 0).float()  # [L]
    total = {"loss_bcdl": 0.0, "loss_ildl": 0.0}
    for level, ((s_cls, s_box), (t_cls, t_box), v) in enumerate(zip(student, teacher, valid)):
        bcdl, mad = bcdl_loss(s_cls, t_cls, v, beta=beta, avg_factor=avg_factor, loss_weight=cls_weight,
                              return_max_abs_diff=True, backend=backend)
        omega = mad if v is None else mad * v  # [B, H, W], in the rows' order
        with torch.no_grad():
            t_dist = edge_distances(t_box).to(s_box.dtype)
        ildl = giou_loss(_box_at_origin(edge_distances(s_box)), _box_at_origin(t_dist), omega.reshape(-1),
                         avg_factor=avg_factor, loss_weight=loc_weight, backend=backend)
        if gate is not None:
            bcdl, ildl = gate[level] * bcdl, gate[level] * ildl
        total = {"loss_bcdl": total["loss_bcdl"] + bcdl, "loss_ildl": total["loss_ildl"] + ildl}
    return total


def yolo_bckd_loss(
    student_preds,
    teacher_preds,
    *,
    valid=None,
    avg_factor=None,
    pos_per_level=None,
    level_sizes=None,
    bins=16,
    branch="one2many",
    beta=1.0,
    cls_weight=1.0,
    loc_weight=4.0,
    backend="auto",
):
    """BCDL and ILDL between a student's and a teacher's Ultralytics outputs.

    Args:
        student_preds: the student's output (train mode), with gradients.
        teacher_preds: the teacher's output, computed under ``torch.no_grad()``
            (in eval mode, so its batch-norm statistics stay fixed).
        valid: ``[B, A]`` 1 for anchors inside the image, 0 on padding, in the
            head's anchor order (levels concatenated); None: all valid.
        avg_factor: the normaliser (a tensor or a number); None: the teacher's
            soft count of objects (:func:`teacher_soft_count`).
        pos_per_level: ``[L]`` the assigner's positives per level (with
            ``level_sizes``): a level without any adds nothing. None: all count.
        level_sizes: anchors per level of the dict output (``H·W`` of each
            ``feats`` map); None: the levels are not told apart.
        bins: box channels per edge of the per-level map form (see :func:`head_maps`).
        branch: the end-to-end head's branch distilled, ``"one2many"`` or ``"one2one"``.
        beta, cls_weight, loc_weight, backend: as in :func:`bckd_kernels.bckd_loss`.

    Returns:
        ``{"loss_bcdl": ..., "loss_ildl": ...}``, 0-dim tensors; ILDL is
        weighted per anchor by ``max_k |σ(zt) − σ(zs)|`` times ``valid``.
    """
    student = head_maps(student_preds, bins=bins, level_sizes=level_sizes, branch=branch)
    teacher = head_maps(teacher_preds, bins=bins, level_sizes=level_sizes, branch=branch)
    s_shapes = [tuple(s.shape) for s, _ in student]
    t_shapes = [tuple(t.shape) for t, _ in teacher]
    if s_shapes != t_shapes:
        raise ValueError(f"student and teacher head shapes differ: student scores {s_shapes} vs teacher scores "
                         f"{t_shapes} ([B, classes, 1 or H, anchors or W]): the two models must share the classes "
                         "and the anchor grid (strides and input size)")
    if pos_per_level is not None and level_sizes is None and len(student) == 1 and pos_per_level.numel() > 1:
        raise ValueError("pos_per_level needs level_sizes to cut the concatenated anchors into levels")
    if avg_factor is None:
        avg_factor = teacher_soft_count(teacher, valid)
    valid = _level_valid(valid, student)
    s_bins, t_bins = student[0][1].shape[1] // 4, teacher[0][1].shape[1] // 4
    options = dict(avg_factor=avg_factor, pos_per_level=pos_per_level, beta=beta, cls_weight=cls_weight,
                   loc_weight=loc_weight, backend=backend)
    if s_bins == t_bins > 1:
        return bckd_loss_levels(
            [cls for cls, _ in student],
            [cls for cls, _ in teacher],
            [reg for _, reg in student],
            [reg for _, reg in teacher],
            valid,
            reg_max=s_bins - 1,
            **options,
        )
    return _bckd_from_distances(student, teacher, valid, **options)
