"""Detection data sets on disk, read into one form, and written out for Ultralytics.

A :class:`Dataset` holds the class names in their order and, per split, the
images with their boxes (``[K, 4]`` xyxy pixels) and labels. Readers take what
a real data set has and report it instead of failing on it or hiding it:

- a degenerate box (``x2 <= x1`` or ``y2 <= y1``) is dropped;
- a box reaching outside its image is clipped to it (dropped when nothing is left);
- an image without boxes is dropped;

each with a count in :attr:`Dataset.dropped`, which the commands print. A
missing file or folder, a broken annotation file or an image that does not
decode is a :class:`~bckd_train.errors.UserError` naming the file.

Splits come from the data set when it has them (VOC's ``ImageSets/Main``);
otherwise :func:`seeded_split` draws them from a seed, which the dataset records.
"""

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from .errors import UserError

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
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{path}: image does not decode ({exc})") from None


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


def _need_dir(path, what):
    if not os.path.isdir(path):
        raise UserError(f"{path}: {what} folder not found")


# ------------------------------------------------------------------ VOC ----


def _voc_objects(xml_path):
    """``(filename or None, [(name, [x1, y1, x2, y2]), ...])`` of one VOC annotation file."""
    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as exc:
        raise UserError(f"{xml_path}: not a readable VOC XML file ({exc})") from None
    objects = []
    for obj in root.iter("object"):
        name, bb = obj.findtext("name"), obj.find("bndbox")
        if name is None or bb is None:
            raise UserError(f"{xml_path}: an <object> without <name> or <bndbox>")
        try:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise UserError(f"{xml_path}: a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
        objects.append((name.strip(), box))
    return root.findtext("filename"), objects


def read_voc(path, *, classes=None, seed=0):
    """A Pascal VOC folder (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{train,val,test}.txt``).

    ``path`` is the folder holding those, or a VOCdevkit above one. ``classes``:
    the class names in label order; None: every name in the annotations, sorted.
    Files are resolved by the annotation's ``<filename>`` in ``JPEGImages/``
    (``<path>`` names the annotator's disk and is ignored). Without split
    files the images are split by :func:`seeded_split` with ``seed``.
    """
    path = _voc_root(path)
    annotations = os.path.join(path, "Annotations")
    images_dir = os.path.join(path, "JPEGImages")
    _need_dir(images_dir, "VOC JPEGImages")
    ids = sorted(f[:-4] for f in os.listdir(annotations) if f.endswith(".xml"))
    if not ids:
        raise UserError(f"{annotations}: no .xml annotation files")
    parsed = {i: _voc_objects(os.path.join(annotations, f"{i}.xml")) for i in ids}
    if classes is None:
        classes = tuple(sorted({name for _, objects in parsed.values() for name, _ in objects}))
    index = {name: k for k, name in enumerate(classes)}
    splits, split_seed = _voc_splits(path, ids), None
    if splits is None:
        splits, split_seed = seeded_split(ids, seed), seed
    dataset = Dataset(tuple(classes), {}, split_seed)
    for split, split_ids in splits.items():
        samples = []
        for i in split_ids:
            if i not in parsed:
                raise UserError(f"{os.path.join(path, 'ImageSets', 'Main', split + '.txt')}: {i!r} has no annotation "
                                f"file in {annotations}")
            filename, objects = parsed[i]
            image = os.path.join(images_dir, os.path.basename(filename) if filename else f"{i}.jpg")
            unknown = sorted({name for name, _ in objects if name not in index})
            if unknown:
                raise UserError(f"{os.path.join(annotations, i + '.xml')}: class {unknown[0]!r} is not in the "
                                f"classes {list(classes)}")
            width, height = image_size(image)
            boxes, labels = clean_boxes([b for _, b in objects], [index[n] for n, _ in objects], width, height,
                                        dataset.dropped)
            if len(boxes) == 0:
                dataset.dropped["images without boxes dropped"] += 1
                continue
            samples.append(Sample(image, width, height, boxes, labels))
        dataset.splits[split] = samples
    return dataset


def _voc_root(path):
    if not os.path.isdir(path):
        raise UserError(f"{path}: VOC folder not found")
    if os.path.isdir(os.path.join(path, "Annotations")):
        return path
    inner = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d, "Annotations")))
    if not inner:
        raise UserError(f"{path}: no Annotations/ folder in it or in a folder below it (a VOC layout has "
                        "Annotations/, JPEGImages/ and ImageSets/Main/)")
    return os.path.join(path, inner[0])


def _voc_splits(path, ids):
    """The ids of each split from ``ImageSets/Main``, or None when it has no train/val split."""
    folder = os.path.join(path, "ImageSets", "Main")
    found = {}
    for split in SPLITS:
        f = os.path.join(folder, f"{split}.txt")
        if os.path.isfile(f):
            with open(f) as fh:
                found[split] = [line.split()[0] for line in fh if line.strip()]
    if "train" not in found or "val" not in found:
        return None
    return found


# ---------------------------------------------------------- Ultralytics ----


def write_yolo(dataset, out):
    """Writes ``dataset`` in Ultralytics' layout under ``out``; returns the data YAML's path.

    ``out/images/<split>/`` holds copies of the images, ``out/labels/<split>/``
    one ``class cx cy w h`` line per box (normalised), and ``out/data.yaml``
    names the splits and the classes. Written into ``out.tmp`` and renamed, so
    a killed conversion leaves no half data set.
    """
    out = os.path.abspath(out)
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for split, samples in dataset.splits.items():
        os.makedirs(os.path.join(tmp, "images", split))
        os.makedirs(os.path.join(tmp, "labels", split))
        for s in samples:
            name = os.path.basename(s.path)
            shutil.copyfile(s.path, os.path.join(tmp, "images", split, name))
            b = s.boxes
            cx, cy = (b[:, 0] + b[:, 2]) / 2 / s.width, (b[:, 1] + b[:, 3]) / 2 / s.height
            w, h = (b[:, 2] - b[:, 0]) / s.width, (b[:, 3] - b[:, 1]) / s.height
            with open(os.path.join(tmp, "labels", split, os.path.splitext(name)[0] + ".txt"), "w") as f:
                for row in zip(s.labels, cx, cy, w, h):
                    f.write("%d %.6f %.6f %.6f %.6f\n" % row)
    lines = [f"path: {json.dumps(out)}"]  # JSON strings are YAML strings
    lines += [f"{split}: images/{split}" for split in dataset.splits]
    lines += ["names:"] + [f"  {k}: {json.dumps(name)}" for k, name in enumerate(dataset.classes)]
    with open(os.path.join(tmp, "data.yaml"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.rename(tmp, out)
    return os.path.join(out, "data.yaml")
