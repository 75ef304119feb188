"""Add BCDL to a detector's existing loss dict, mmdetection style.

    python examples/add_bcdl_to_loss_dict.py

A head's loss() already returns {"loss_cls": ..., "loss_bbox": ..., ...} and already
computes avg_factor for its classification loss. BCDLLoss takes the
mmdetection call signature (pred, target, weight, avg_factor); the teacher's logits
are the target, the valid mask the weight.
"""

import torch

import bckd_kernels as bk

bcdl = bk.BCDLLoss(beta=1.0, loss_weight=1.0)


def loss_with_distillation(losses, cls_scores, teacher_cls_scores, valid_masks, avg_factor):
    """losses: the head's dict; the rest are lists over FPN levels ([B, C, H, W] and [B, H, W])."""
    losses = dict(losses)
    losses["loss_bcdl"] = sum(bcdl(s, t, v, avg_factor=avg_factor)
                              for s, t, v in zip(cls_scores, teacher_cls_scores, valid_masks))
    return losses


def main():
    torch.manual_seed(0)
    shapes = [(2, 80, 40, 60), (2, 80, 20, 30)]  # two FPN levels of a COCO head
    # Mostly-background logits (sigmoid ≈ 0.01 to 0.05), the student's near the teacher's.
    teacher_cls_scores = [torch.randn(s) - 4.0 for s in shapes]
    cls_scores = [(t + 0.3 * torch.randn(s)).requires_grad_() for t, s in zip(teacher_cls_scores, shapes)]
    valid_masks = [torch.ones(s[0], s[2], s[3]) for s in shapes]
    head_losses = {"loss_cls": cls_scores[0].sigmoid().mean(), "loss_bbox": torch.tensor(0.5)}
    avg_factor = torch.tensor(42.0)  # the head's own normaliser for loss_cls

    losses = loss_with_distillation(head_losses, cls_scores, teacher_cls_scores, valid_masks, avg_factor)
    sum(losses.values()).backward()
    print({k: round(v.item(), 4) for k, v in losses.items()})
    assert losses["loss_bcdl"] > 0 and all(s.grad is not None for s in cls_scores)


if __name__ == "__main__":
    main()
