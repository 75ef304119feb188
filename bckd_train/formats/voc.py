"""The Pascal VOC reader: ``Annotations/`` XML files, ``JPEGImages/``, ``ImageSets/Main`` splits."""

import os
import xml.etree.ElementTree as ET

from ..errors import UserError
from .common import SPLITS, Dataset, make_sample, need_dir, seeded_split


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
    need_dir(images_dir, "VOC JPEGImages")
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
            sample = make_sample(image, [b for _, b in objects], [index[n] for n, _ in objects], dataset)
            if sample is not None:
                samples.append(sample)
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
