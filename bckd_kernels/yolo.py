"""BCKD between two Ultralytics YOLO detection models (YOLOv8 / YOLO11 heads).

Their ``Detect`` head predicts, per anchor point, ``nc`` sigmoid class logits
and each box edge as a distribution over ``bins`` bins (DFL; Ultralytics calls
the count ``reg_max``, 16: the GFocal form with ``reg_max = 15`` in this
package's convention, edges in the same left, top, right, bottom order). BCDL
and ILDL therefore apply as they do to a GFocal head, on the raw outputs:

- Ultralytics ≥ 8.4 returns, in train mode, ``{"scores": [B, nc, A],
  "boxes": [B, 4·bins, A], "feats": [...]}`` with the levels concatenated
  along A; ``[B, C, A]`` is read as a ``[B, C, 1, A]`` head map (a view).
  End-to-end heads nest it under ``"one2many"``, which is what is distilled.
- Older versions return per-level maps ``[B, 4·bins + nc, H, W]``, boxes
  first; the two channel ranges are read as views, level by level.
- In eval mode (the teacher's), both return ``(decoded, raw)``; ``raw`` is used.

Nothing is copied: the fused ops read the maps in place, whatever the strides.

Normaliser. Ultralytics divides its losses by ``target_scores_sum``, the sum of
its assigner's soft targets (IoU-aligned scores of the positives), and BCKD
divides by the positive count; neither exists without the assigner and the
labels. The default ``avg_factor`` stands in with the teacher's soft count of
objects, ``A = Σ_images max(Σ_anchors max_k σ(zt), 1)``: the teacher's
confidence summed over valid anchors, which grows with the number of objects
as the positive count does, floored at 1 per image like it; computed on the
device, without host synchronisation. Pass ``avg_factor`` to use the
detector's own normaliser instead. Ultralytics' ``v8DetectionLoss`` returns
its losses times the batch size: multiply these by the batch size too before
adding them, to keep the ratio to the detection losses.

The reference code's gate that skips a level without positives needs the
assigner too and is not applied: every valid anchor counts.
"""

import torch

from .functional import bckd_loss_levels

__all__ = ["head_maps", "teacher_soft_count", "yolo_bckd_loss"]


def _raw(preds):
    if isinstance(preds, tuple) and len(preds) == 2 and isinstance(preds[1], (dict, list, tuple)):
        preds = preds[1]  # eval mode: (decoded predictions, raw outputs)
    if isinstance(preds, dict) and "one2many" in preds:
        preds = preds["one2many"]
    return preds


def head_maps(preds, *, bins=16):
    """The per-level ``(scores, boxes)`` head maps of an Ultralytics ``Detect`` output.

    Args:
        preds: the model's output in train or eval mode (see the module's
            docstring for the accepted forms).
        bins: DFL bins per box edge, Ultralytics' ``Detect.reg_max`` (16).

    Returns:
        A list of ``(scores [B, nc, H, W], boxes [B, 4·bins, H, W])`` views
        of ``preds``: one pair with ``H = 1, W = A`` for the dict output, one
        per level for the per-level maps.
    """
    if bins < 2:
        raise ValueError(
            f"bins={bins}: ILDL needs DFL box distributions (at least 2 bins); heads with reg_max=1 "
            "regress edge distances directly"
        )
    preds = _raw(preds)
    nbox = 4 * bins
    if isinstance(preds, dict):
        scores, boxes = preds["scores"], preds["boxes"]
        if boxes.dim() != 3 or boxes.shape[1] != nbox:
            raise ValueError(f"boxes of shape {tuple(boxes.shape)}: expected [B, 4·bins = {nbox}, A]")
        return [(scores.unsqueeze(2), boxes.unsqueeze(2))]
    if isinstance(preds, (list, tuple)) and all(torch.is_tensor(x) and x.dim() == 4 for x in preds):
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


def yolo_bckd_loss(
    student_preds,
    teacher_preds,
    *,
    valid=None,
    avg_factor=None,
    bins=16,
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
        bins: DFL bins per box edge, Ultralytics' ``Detect.reg_max``.
        beta, cls_weight, loc_weight, backend: as in :func:`bckd_kernels.bckd_loss`.

    Returns:
        ``{"loss_bcdl": ..., "loss_ildl": ...}``, 0-dim tensors; ILDL is
        weighted per anchor by ``max_k |σ(zt) − σ(zs)|`` times ``valid``.
    """
    student = head_maps(student_preds, bins=bins)
    teacher = head_maps(teacher_preds, bins=bins)
    if [s.shape for s, _ in student] != [t.shape for t, _ in teacher]:
        raise ValueError(
            f"student and teacher head shapes differ: {[tuple(s.shape) for s, _ in student]} vs "
            f"{[tuple(t.shape) for t, _ in teacher]}"
        )
    if avg_factor is None:
        avg_factor = teacher_soft_count(teacher, valid)
    return bckd_loss_levels(
        [cls for cls, _ in student],
        [cls for cls, _ in teacher],
        [reg for _, reg in student],
        [reg for _, reg in teacher],
        _level_valid(valid, student),
        avg_factor=avg_factor,
        beta=beta,
        cls_weight=cls_weight,
        loc_weight=loc_weight,
        reg_max=bins - 1,
        backend=backend,
    )
