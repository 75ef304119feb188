"""Inference on a trained detector: COCO metrics on a data set, detections drawn on an image."""

import contextlib
import importlib
import io
import os

import numpy as np
import torch

from . import data, gfl, runtime
from .errors import UserError


def detect(model, images, *, device, amp=None):
    """The model's detections on images [B, 3, H, W] (:func:`gfl.detect`, one dict per
    image). Under ``amp`` the forward pass runs in bf16; the maps are decoded in float32
    (box coordinates in pixels need more than bf16's 8 bits)."""
    with runtime.autocast(device, amp):
        cls, reg = model(images.to(device))
    cls, reg = [c.float() for c in cls], [r.float() for r in reg]
    return gfl.detect(cls, reg, strides=model.cfg.strides, reg_max=model.cfg.reg_max)


@torch.no_grad()
def evaluate(model, dataset, *, batch_size=8, device="cpu", amp=None):
    """COCO metrics of the model on a dataset: AP, AP50, AP75, AP_S, AP_M, AP_L (fractions),
    the forward pass under ``amp`` (:func:`detect`)."""
    model.eval()
    results = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, _, targets = data.collate(items)
        for det, t in zip(detect(model, images, device=device, amp=amp), targets):
            for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": t["image_id"], "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return coco_metrics(dataset, results)


# What evaluation and the end of a run import: checked when a run starts (check_imports),
# so a missing one stops it before any training rather than after.
RUN_IMPORTS = {"pycocotools.coco": "pycocotools", "pycocotools.cocoeval": "pycocotools", "matplotlib": "matplotlib"}


def check_imports():
    """Imports RUN_IMPORTS; a missing one is a UserError saying what to install."""
    for module, package in RUN_IMPORTS.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"{module} does not import ({exc}); a run needs it for its evaluation or its "
                            f"curves: pip install {package}") from None


def coco_metrics(dataset, results):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = ["AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"]
    if not results:
        return dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(dataset.ann_file)
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.params.imgIds = [im["id"] for im in dataset.images]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {n: max(float(v), 0.0) for n, v in zip(names, ev.stats[:6])}


def metrics_table(metrics, *, title):
    """COCO metrics (fractions) as a small table in percent, under a title line."""
    names = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "AP_S": "APs", "AP_M": "APm", "AP_L": "APl"}
    head = " ".join(f"{names[k]:>5}" for k in names)
    row = " ".join(f"{100 * metrics[k]:5.1f}" for k in names)
    return f"{title}\n{head}\n{row}"


@torch.no_grad()
def show(model, cfg, image_path, out_path, *, score=0.3, cache=None, amp=None):
    """Draws the detections above `score` on the image (on the model's device); returns
    (how many, the highest score of any detection, or None when there is none).
    ``image_path``: an image file, or a file name of cfg's prepared data set
    (``val/NAME.jpg``, relative to its ``images/`` folder)."""
    from PIL import Image, ImageDraw

    if not os.path.isfile(image_path):
        inside = os.path.join(data.folder(cfg.dataset, cache), "images", image_path)
        if not os.path.isfile(inside):
            raise UserError(f"--image {image_path} does not exist (nor in {os.path.dirname(inside)})")
        image_path = inside
    names = cfg.classes or data.classes(cfg.dataset, cache)
    try:
        image = Image.open(image_path).convert("RGB")
    except OSError as exc:
        raise UserError(f"--image {image_path} is not an image PIL can read ({exc})") from exc
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    images, _, _ = data.collate([(x, None)])
    det = detect(model, images, device=next(model.parameters()).device, amp=amp)[0]
    draw = ImageDraw.Draw(image)
    keep = det["scores"] >= score
    for box, s, label in zip(det["boxes"][keep].tolist(), det["scores"][keep].tolist(), det["labels"][keep].tolist()):
        draw.rectangle(box, outline=(255, 40, 40), width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{names[label]} {s:.2f}", fill=(255, 255, 0))
    image.save(out_path)
    top = float(det["scores"].max()) if det["scores"].numel() else None
    return int(keep.sum()), top
