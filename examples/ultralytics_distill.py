"""One BCKD distillation step between two Ultralytics YOLO detectors.

    pip install "bckd[ultralytics]"
    python examples/ultralytics_distill.py --student yolov8n.yaml --teacher yolov8s.yaml

Both models are built from the package's YAML files (random weights, nothing is
downloaded) and trained for a few steps on a synthetic batch; in real use the
teacher is trained (e.g. ``YOLO("yolov8s.pt").model``) and the batch comes from
an Ultralytics data loader, in the same dict format.
"""

import argparse

import torch
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from bckd_kernels.yolo import yolo_bckd_loss


def distill_step(*, student, teacher, batch, optimizer):
    """Detection loss + BCKD for one batch; returns the logged loss items.

    ``batch``: an Ultralytics detection batch, ``img [B, 3, H, W]`` in [0, 1],
    ``batch_idx [n]``, ``cls [n, 1]``, ``bboxes [n, 4]`` (normalised xywh).
    """
    images = batch["img"]
    with torch.no_grad():
        teacher_preds = teacher(images)  # eval mode: fixed batch-norm statistics
    student_preds = student(images)
    detection, items = student.loss(batch, student_preds)  # its losses times the batch size
    distill = yolo_bckd_loss(student_preds, teacher_preds)
    loss = detection.sum() + images.shape[0] * (distill["loss_bcdl"] + distill["loss_ildl"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {**{k: v.item() for k, v in items.items()}, **{k: v.item() for k, v in distill.items()}}


def synthetic_batch(*, batch_size, imgsz, num_classes, generator):
    """Random images with two random boxes each."""
    n = 2 * batch_size
    centres = torch.rand(n, 2, generator=generator) * 0.6 + 0.2
    sizes = torch.rand(n, 2, generator=generator) * 0.3 + 0.1
    return {
        "img": torch.rand(batch_size, 3, imgsz, imgsz, generator=generator),
        "batch_idx": torch.arange(batch_size).repeat_interleave(2).float(),
        "cls": torch.randint(num_classes, (n, 1), generator=generator).float(),
        "bboxes": torch.cat([centres, sizes], 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", default="yolov8n.yaml")
    parser.add_argument("--teacher", default="yolov8s.yaml")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()

    torch.manual_seed(0)
    student = DetectionModel(args.student, nc=args.num_classes, verbose=False).train()
    student.args = get_cfg()  # the loss gains (box 7.5, cls 0.5, dfl 1.5) its criterion reads
    teacher = DetectionModel(args.teacher, nc=args.num_classes, verbose=False).eval().requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        batch = synthetic_batch(batch_size=args.batch_size, imgsz=args.imgsz, num_classes=args.num_classes, generator=g)
        items = distill_step(student=student, teacher=teacher, batch=batch, optimizer=optimizer)
        print(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in items.items()), flush=True)


if __name__ == "__main__":
    main()
