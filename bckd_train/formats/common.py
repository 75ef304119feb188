"""What every reader shares: the one form a data set is read into (:class:`Dataset` of
:class:`Sample` images), its cleaning of boxes, and the checks that name a bad file."""

import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from ..errors import UserError

SPLITS = ("train", "val", "test")


@dataclass
class Sample:
    """One image: its file, its size, its boxes ``[K, 4]`` (xyxy pixels, float64) and labels ``[K]``."""

    path: str
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray


@dataclass
class Dataset:
    classes: tuple  # class names; a label is an index into it
    splits: dict  # split name -> list of Sample
    split_seed: object = None  # the seed of seeded_split, or None: the splits came with the data set
    dropped: Counter = field(default_factory=Counter)  # what the reader dropped or clipped, by kind

    def report(self):
        """One line per split and per kind of fix, for the commands to print."""
        lines = []
        for split, samples in self.splits.items():
            counts = Counter(int(k) for s in samples for k in s.labels)
            per_class = ", ".join(f"{name} {counts[i]}" for i, name in enumerate(self.classes))
            lines.append(f"{split}: {len(samples)} images, {sum(counts.values())} boxes ({per_class})")
        if self.split_seed is not None:
            lines.append(f"splits drawn with seed {self.split_seed} (the data set has none)")
        lines += [f"{what}: {n}" for what, n in sorted(self.dropped.items())]
        return lines


def seeded_split(ids, seed=0, fractions=(0.7, 0.15, 0.15)):
    """``ids`` cut into train/val/test at ``fractions``, in an order drawn from ``seed``."""
    ids = sorted(ids)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    cuts = {"train": order[:n_train], "val": order[n_train : n_train + n_val], "test": order[n_train + n_val :]}
    return {split: [ids[i] for i in sorted(idx)] for split, idx in cuts.items()}


def image_size(path):
    """``(width, height)`` of an image file, after checking that it decodes."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Exception as exc:  # noqa: BLE001 (a file PIL cannot read raises whatever its plugin raises)
        raise UserError(f"{path}: image does not decode ({first_line(exc)})") from None


def clean_boxes(boxes, labels, width, height, dropped):
    """Drops degenerate boxes and clips the others to the image; counts both in ``dropped``."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]) | ~np.isfinite(boxes).all(1)
    dropped["degenerate boxes dropped"] += int(degenerate.sum())
    boxes, labels = boxes[~degenerate], labels[~degenerate]
    clipped = boxes.copy()
    clipped[:, 0::2] = clipped[:, 0::2].clip(0, width)
    clipped[:, 1::2] = clipped[:, 1::2].clip(0, height)
    moved = (clipped != boxes).any(1)
    empty = (clipped[:, 2] <= clipped[:, 0]) | (clipped[:, 3] <= clipped[:, 1])
    dropped["boxes outside their image dropped"] += int(empty.sum())
    dropped["boxes clipped to their image"] += int((moved & ~empty).sum())
    return clipped[~empty], labels[~empty]


def need_dir(path, what):
    """A UserError naming ``path`` when it is not a folder."""
    if not os.path.isdir(path):
        raise UserError(f"{path}: {what} folder not found")


def need_file(path, what):
    """A UserError naming ``path`` when it is not a file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: {what} not found")


def first_line(exc):
    """An exception's message in one line, for a UserError that names the file."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def class_index(names, classes, where):
    """``classes`` (None: ``names``) and each of ``names``' label in it; a name that is
    not in ``classes`` is a UserError naming ``where``."""
    classes = tuple(names) if classes is None else tuple(classes)
    index = {name: k for k, name in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UserError(f"{where}: class {unknown[0]!r} is not in the classes {list(classes)}")
    return classes, [index[n] for n in names]


def make_sample(image, objects, labels, dataset):
    """A Sample of ``image`` with its boxes cleaned (:func:`clean_boxes`), or None (counted)
    when none is left. ``objects``: boxes ``[K, 4]`` xyxy pixels, or a function of the
    image's (width, height) giving them."""
    width, height = image_size(image)
    boxes = objects(width, height) if callable(objects) else objects
    boxes, labels = clean_boxes(boxes, labels, width, height, dataset.dropped)
    if len(boxes) == 0:
        dataset.dropped["images without boxes dropped"] += 1
        return None
    return Sample(image, width, height, boxes, labels)
