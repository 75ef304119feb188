"""Distil a GFL-style detector head with bckd_loss_levels: one padded batch, two FPN levels.

    python examples/distill_gfl_head.py

What a detector does around the loss:
  1. pad the batch's images to one size, keeping a pixel mask (1 on the image, 0 on padding);
  2. run the teacher under no_grad, then the student; each returns, per level, class
     logits [B, C, H, W] and GFocal regression logits [B, 4·(reg_max+1), H, W];
  3. count the assigner's positives per image and level;
  4. call distill_losses below, add its dict to the ground-truth losses, backpropagate.
The script prints the losses and checks the gradients against the pure-PyTorch reference.
"""

import torch
from torch import nn

import bckd_kernels as bk

NUM_CLASSES, REG_MAX, STRIDES = 3, 16, (8, 16)


def distill_losses(student, teacher, pixel_mask, num_pos, strides, backend="auto"):
    """BCDL + ILDL of every FPN level, summed over levels.

    student, teacher: (cls maps, reg maps), each a list over levels of [B, C, H, W] / [B, 68, H, W]
    pixel_mask: [B, H_img, W_img], 1 on image pixels, 0 on padding
    num_pos: [B, L], the assigner's positive locations per image and level
    """
    avg_factor = num_pos.sum(1).clamp(min=1).sum().float()  # Σ_images max(n_pos, 1), a tensor
    # Under DistributedDataParallel: all_reduce(avg_factor) and divide by the world size here.
    avg_factor = avg_factor.clamp(min=1)
    valid = []
    for cls_s, s in zip(student[0], strides):
        h, w = cls_s.shape[-2:]
        valid.append(pixel_mask[:, ::s, ::s][:, :h, :w].to(cls_s.dtype))  # location (x, y) sits on pixel (x·s, y·s)
    return bk.bckd_loss_levels(student[0], teacher[0], student[1], teacher[1], valid, avg_factor=avg_factor,
                               pos_per_level=num_pos.sum(0),  # a level without positives adds nothing
                               backend=backend)


class TinyGFL(nn.Module):
    """A stand-in detector: a conv stem (stride 8), one more stride-2 conv (16), a shared GFL head."""

    def __init__(self, width):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 4, 1), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
        self.cls = nn.Conv2d(width, NUM_CLASSES, 3, padding=1)
        self.reg = nn.Conv2d(width, 4 * (REG_MAX + 1), 3, padding=1)

    def forward(self, images):
        p3 = self.stem(images)
        levels = (p3, self.down(p3))
        return [self.cls(f) for f in levels], [self.reg(f) for f in levels]


def make_batch():
    """Two images of different sizes with coloured boxes, padded into one batch."""
    sizes = [(96, 128), (64, 96)]
    boxes = [torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 124.0, 90.0]]),
             torch.tensor([[8.0, 8.0, 40.0, 56.0]])]
    images = torch.zeros(2, 3, 96, 128)
    pixel_mask = torch.zeros(2, 96, 128)
    for i, ((h, w), bs) in enumerate(zip(sizes, boxes)):
        images[i, :, :h, :w] = 0.5
        pixel_mask[i, :h, :w] = 1
        for k, (x1, y1, x2, y2) in enumerate(bs.int().tolist()):
            images[i, k % 3, y1:y2, x1:x2] = 1.0
    return images, pixel_mask, boxes


def count_positives(boxes, map_shapes, strides):
    """[B, L] positives of a centre-sampling assigner: points within 1.5 strides of a box centre,
    on the level whose size range holds the box (≤ 64 px on stride 8, larger on stride 16)."""
    counts = torch.zeros(len(boxes), len(strides))
    for level, ((h, w), s) in enumerate(zip(map_shapes, strides)):
        ys, xs = torch.meshgrid(torch.arange(h) * s, torch.arange(w) * s, indexing="ij")
        for i, bs in enumerate(boxes):
            size = (bs[:, 2:] - bs[:, :2]).max(1).values
            on_level = (size <= 64) if level == 0 else (size > 64)
            centre = (bs[:, :2] + bs[:, 2:]) / 2
            near = ((xs[..., None] - centre[:, 0]).abs() <= 1.5 * s) & ((ys[..., None] - centre[:, 1]).abs() <= 1.5 * s)
            counts[i, level] = (near & on_level).any(-1).sum()
    return counts


def main():
    torch.manual_seed(0)
    images, pixel_mask, boxes = make_batch()
    teacher, student = TinyGFL(width=32).eval(), TinyGFL(width=16)
    with torch.no_grad():
        teacher_out = teacher(images)
    student_out = student(images)
    num_pos = count_positives(boxes, [c.shape[-2:] for c in student_out[0]], STRIDES)
    print(f"class maps per level: {[tuple(c.shape) for c in student_out[0]]}, "
          f"regression maps: {[tuple(r.shape) for r in student_out[1]]}")
    print(f"positives per image and level: {num_pos.int().tolist()}")

    params = list(student.parameters())
    results = {}
    for backend in ("auto", "reference"):
        losses = distill_losses(student_out, teacher_out, pixel_mask, num_pos, STRIDES, backend=backend)
        grads = torch.autograd.grad(sum(losses.values()), params, retain_graph=True)
        results[backend] = (losses, grads)
    losses, grads = results["auto"]
    ref_losses, ref_grads = results["reference"]
    print("losses (fused):    ", {k: round(v.item(), 6) for k, v in losses.items()})
    print("losses (reference):", {k: round(v.item(), 6) for k, v in ref_losses.items()})
    for name in losses:
        torch.testing.assert_close(losses[name], ref_losses[name], rtol=1e-5, atol=1e-7)
    worst = max((g - r).abs().max().item() for g, r in zip(grads, ref_grads))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)
    assert all(g.abs().sum() > 0 for g in grads), "every student parameter gets a gradient"
    print(f"student gradients match the reference (max |difference| {worst:.2e})")

    # The teacher's maps are constants to these losses: even when they were computed with
    # autograd on (no torch.no_grad()), no gradient reaches the teacher, silently.
    teacher_maps_with_graph = teacher(images)
    sum(distill_losses(student_out, teacher_maps_with_graph, pixel_mask, num_pos, STRIDES).values()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    print("teacher maps that require grad: the teacher gets no gradient, the student does")


if __name__ == "__main__":
    main()
