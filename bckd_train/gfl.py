"""Anchors, ATSS assignment, GFL losses and inference (docs/method.md section 3).

One anchor per location: a square of side 8·stride centred on the location's
point (x·stride, y·stride). Boxes are decoded from the regression
distributions with the softmax integral (distances in units of the stride).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision

import bckd_kernels
from bckd_kernels.decode import dfl_decode, distance_to_box

ANCHOR_SCALE = 8
EPS = torch.finfo(torch.float32).eps


def level_points(shapes, strides, device):
    """Anchor points per level: list of [H·W, 2] (x, y), row-major like a flattened map."""
    points = []
    for (h, w), s in zip(shapes, strides):
        ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], 1).float() * s)
    return points


def anchor_boxes(points, stride):
    half = ANCHOR_SCALE * stride / 2
    return torch.cat([points - half, points + half], 1)


def box_iou(a, b):
    """Pairwise IoU [N, M] of xyxy boxes."""
    return torchvision.ops.box_iou(a, b)


def atss_assign(anchors, num_per_level, gt_boxes, gt_labels, num_classes, topk=9):
    """ATSS: per ground truth, the topk anchors per level nearest its centre are
    candidates; those with IoU ≥ mean + std of the candidates' IoUs and centre
    inside the box are positives; an anchor claimed twice goes to the larger IoU.

    Args:
        anchors: [A, 4] all levels' anchor boxes, level by level.
        num_per_level: anchors per level.
        gt_boxes: [G, 4]; gt_labels: [G].
    Returns:
        labels [A] (num_classes = background), matched gt index [A] (−1 for background).
    """
    if gt_boxes.shape[0] == 0:
        a = anchors.shape[0]
        return (torch.full((a,), num_classes, dtype=torch.long, device=anchors.device),
                torch.full((a,), -1, dtype=torch.long, device=anchors.device))
    iou = box_iou(anchors, gt_boxes)  # [A, G]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    dist = torch.cdist(centres, gt_centres)  # [A, G]
    candidates = []
    start = 0
    for n in num_per_level:
        k = min(topk, n)
        candidates.append(dist[start : start + n].topk(k, dim=0, largest=False).indices + start)  # [k, G]
        start += n
    candidates = torch.cat(candidates, 0)  # [K, G]
    cand_iou = iou.gather(0, candidates)
    threshold = cand_iou.mean(0) + cand_iou.std(0, unbiased=True if cand_iou.shape[0] > 1 else False)
    positive = cand_iou >= threshold[None, :]
    cx = centres[candidates, 0]
    cy = centres[candidates, 1]
    inside = (cx > gt_boxes[None, :, 0]) & (cx < gt_boxes[None, :, 2]) & (cy > gt_boxes[None, :, 1]) & (cy < gt_boxes[None, :, 3])
    positive &= inside
    # IoU of (anchor, gt) where the pair is a positive candidate, −1 elsewhere. A
    # column's candidates are distinct anchors, so the scatter writes each cell once.
    overlaps = torch.full_like(iou, -1.0).scatter_(0, candidates, torch.where(positive, cand_iou, -1.0))
    best, best_gt = overlaps.max(1)
    pos = best >= 0
    matched = torch.where(pos, best_gt, -1)
    labels = torch.where(pos, gt_labels[best_gt], num_classes)
    return labels, matched


def paired_iou(a, b):
    """IoU of each row's pair of xyxy boxes, [N]."""
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a + area_b - inter).clamp(min=EPS)


def box_to_distances(points, boxes, stride, reg_max):
    """Distances (l, t, r, b) of boxes from points, in strides, clamped to [0, reg_max − 0.01]."""
    d = torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], 1) / stride
    return d.clamp(0, reg_max - 0.01)


def quality_focal_loss(logits, labels, scores, beta=2.0):
    """QFL per anchor, summed over classes: BCE(z, y) · |y − σ(z)|^β with y the IoU
    target at the anchor's class (0 for every other class and for background).

    logits [A, C], labels [A] (C = background), scores [A].
    """
    num_classes = logits.shape[1]
    y = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype) * scores[:, None]
    loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * (y - logits.sigmoid()).abs().pow(beta)
    return loss.sum(1)


def distribution_focal_loss(reg, target):
    """DFL: reg [P, R+1] logits of one edge per row, target [P] in [0, R): cross-entropy
    towards the two bins around the target, weighted by closeness."""
    left = target.long()
    right = left + 1
    wl = right.float() - target
    wr = target - left.float()
    return F.cross_entropy(reg, left, reduction="none") * wl + F.cross_entropy(reg, right, reduction="none") * wr


def flatten_levels(maps):
    """Per-level [B, K, H, W] -> [B, A, K] (A = Σ H·W), a copy for the ground-truth losses
    (the detector's channels_last maps permute without a copy)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], 1)


def gfl_targets(points, strides, num_per_level, targets, num_classes):
    """ATSS labels and matched boxes for the whole batch: labels [B, A], boxes [B, A, 4]."""
    anchors = torch.cat([anchor_boxes(p, s) for p, s in zip(points, strides)], 0)
    labels, boxes = [], []
    for t in targets:
        lab, m = atss_assign(anchors, num_per_level, t["boxes"].to(anchors.device), t["labels"].to(anchors.device), num_classes)
        labels.append(lab)
        gt = t["boxes"].to(anchors.device)
        boxes.append(gt[m.clamp(min=0)] if gt.shape[0] else torch.zeros_like(anchors))
    return torch.stack(labels), torch.stack(boxes)


@dataclass(frozen=True)
class GFLExtras:
    """What the distillation losses take from the ground-truth losses: tensors on the device."""

    avg_factor: torch.Tensor  # A of docs/method.md section 4, averaged across processes by avg_factor_fn
    positive: torch.Tensor  # [B, A] ATSS positives, levels concatenated
    pos_per_level: torch.Tensor  # [L] this process's positives per level
    num_pos: torch.Tensor  # this process's positives
    weight_avg: torch.Tensor  # the DFL/GIoU normaliser: the positives' summed student scores, averaged


def gfl_loss(cls_maps, reg_maps, targets, *, strides, reg_max, num_classes, avg_factor_fn=None):
    """Ground-truth GFL losses: {"loss_qfl", "loss_dfl", "loss_giou"}, weights 1.0, 0.25, 2.0,
    and the :class:`GFLExtras` the distillation losses need."""
    device = cls_maps[0].device
    shapes = [m.shape[-2:] for m in cls_maps]
    points = level_points(shapes, strides, device)
    num_per_level = [p.shape[0] for p in points]
    stride_per_anchor = torch.cat([torch.full((n,), float(s), device=device) for n, s in zip(num_per_level, strides)])
    all_points = torch.cat(points, 0)
    with torch.no_grad():
        labels, gt_boxes = gfl_targets(points, strides, num_per_level, targets, num_classes)
    logits = flatten_levels(cls_maps).reshape(-1, num_classes)  # [B·A, C]
    reg = flatten_levels(reg_maps).reshape(-1, 4 * (reg_max + 1))  # [B·A, 68]
    labels = labels.reshape(-1)
    gt_boxes = gt_boxes.reshape(-1, 4)
    b = len(targets)
    pts = all_points.repeat(b, 1)
    strides_flat = stride_per_anchor.repeat(b)
    positive = labels.view(b, -1) < num_classes  # [B, A]
    n_pos = positive.sum().float()
    per_image = positive.sum(1).clamp(min=1).sum().float()
    avg = avg_factor_fn(per_image) if avg_factor_fn else per_image
    avg = avg.clamp(min=1)

    # Box losses over every anchor, weighted by the positives' mask: no indexing by a
    # data-dependent count, so no host synchronisation (negatives weigh exactly 0).
    pos = positive.reshape(-1)
    dist = dfl_decode(reg, reg_max) * strides_flat[:, None]
    pred_boxes = distance_to_box(pts, dist)
    with torch.no_grad():
        scores = paired_iou(pred_boxes, gt_boxes).clamp(min=0) * pos
        weight = logits.detach().sigmoid().max(1).values * pos
    weight_sum = weight.sum()
    loss_giou = (bckd_kernels.giou_loss(pred_boxes, gt_boxes, reduction="none") * weight).sum()
    target_d = box_to_distances(pts, gt_boxes, strides_flat[:, None], reg_max)
    dfl = distribution_focal_loss(reg.reshape(-1, reg_max + 1), target_d.reshape(-1)).view(-1, 4).mean(1)
    loss_dfl = (dfl * weight).sum()
    weight_avg = (avg_factor_fn(weight_sum) if avg_factor_fn else weight_sum).clamp(min=1)
    loss_qfl = quality_focal_loss(logits, labels, scores).sum() / avg
    pos_per_level = torch.stack([m.sum() for m in positive.split(num_per_level, 1)])  # [L]
    return {
        "loss_qfl": loss_qfl,
        "loss_dfl": 0.25 * loss_dfl / weight_avg,
        "loss_giou": 2.0 * loss_giou / weight_avg,
    }, GFLExtras(avg_factor=avg, positive=positive, pos_per_level=pos_per_level, num_pos=n_pos,
                 weight_avg=weight_avg)


@torch.no_grad()
def detect(cls_maps, reg_maps, *, strides, reg_max, score_thr=0.05, nms_iou=0.6, max_det=100, pre_nms=1000):
    """Per image: boxes [K, 4], scores [K], labels [K] after score threshold, batched NMS, top max_det."""
    device = cls_maps[0].device
    points = level_points([m.shape[-2:] for m in cls_maps], strides, device)
    out = []
    for i in range(cls_maps[0].shape[0]):
        boxes, scores, labels = [], [], []
        for cm, rm, p, s in zip(cls_maps, reg_maps, points, strides):
            sc = cm[i].flatten(1).t().sigmoid()  # [HW, C]
            best, _ = sc.max(1)
            keep = best.topk(min(pre_nms, best.numel())).indices
            sc = sc[keep]
            d = dfl_decode(rm[i].flatten(1).t()[keep], reg_max) * s
            bx = distance_to_box(p[keep], d)
            idx, cls = (sc > score_thr).nonzero(as_tuple=True)
            boxes.append(bx[idx])
            scores.append(sc[idx, cls])
            labels.append(cls)
        boxes, scores, labels = torch.cat(boxes), torch.cat(scores), torch.cat(labels)
        keep = torchvision.ops.batched_nms(boxes, scores, labels, nms_iou)[:max_det]
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out
