"""The Ultralytics reader: a data YAML, its image folders or lists, and the parallel ``labels/`` files."""

import os

import numpy as np

from ..errors import UserError
from .common import SPLITS, Dataset, class_index, make_sample, need_dir, need_file, seeded_split

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def _read_yaml(path):
    need_file(path, "data YAML")
    try:
        import yaml
    except ImportError:
        raise UserError(f"{path}: reading a data YAML needs PyYAML (pip install pyyaml)") from None
    try:
        with open(path, encoding="utf-8") as f:
            spec = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: not a readable YAML file ({' '.join(str(exc).split())})") from None
    if not isinstance(spec, dict):
        raise UserError(f"{path}: not an Ultralytics data YAML (a mapping with train, val and names)")
    return spec


def _yolo_names(spec, path):
    names = spec.get("names")
    if isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            keys = None
        if keys != list(range(len(names))):
            raise UserError(f"{path}: names must be numbered 0 to {len(names) - 1}, got {list(names)}")
        names = [names[k] if k in names else names[str(k)] for k in keys]
    if not isinstance(names, list) or not names:
        raise UserError(f"{path}: no class names (names: a list, or a mapping from 0, 1, ...)")
    return [str(n) for n in names]


def _images_in(entry, root, path):
    """The image files of a YAML split entry: folders (searched recursively), txt lists
    (one image a line, relative to the list's folder) or image files, relative to ``root``."""
    out = []
    for item in entry if isinstance(entry, list) else [entry]:
        full = os.path.normpath(os.path.join(root, str(item)))
        if os.path.isdir(full):
            for folder, _, names in sorted(os.walk(full)):
                out += [os.path.join(folder, n) for n in sorted(names) if n.lower().endswith(IMAGE_SUFFIXES)]
        elif os.path.isfile(full) and full.endswith(".txt"):
            with open(full, encoding="utf-8") as f:
                out += [os.path.normpath(os.path.join(os.path.dirname(full), line.strip()))
                        for line in f if line.strip()]
        elif os.path.isfile(full) and full.lower().endswith(IMAGE_SUFFIXES):
            out.append(full)
        else:
            raise UserError(f"{full}: images folder or list not found (named in {path})")
    return out


def yolo_label_path(image):
    """Ultralytics' label file of an image: the last ``images`` folder of its path
    becomes ``labels``, the suffix ``.txt`` (beside the image when there is none)."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return os.path.splitext(sb.join(image.rsplit(sa, 1)))[0] + ".txt"


def _yolo_labels(path, num_classes):
    """(class indices [K], rows [K, 4 or more]) of a label file; (empty, empty) without one.
    A row is ``cx cy w h`` normalised, or a polygon ``x1 y1 x2 y2 ...``."""
    labels, rows = [], []
    if not os.path.isfile(path):
        return labels, rows
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            values = line.split()
            if not values:
                continue
            try:
                numbers = [float(v) for v in values]
            except ValueError:
                raise UserError(f"{path}: line {n} is not numbers ({line.strip()!r})") from None
            if not (len(numbers) == 5 or (len(numbers) >= 7 and len(numbers) % 2 == 1)):
                raise UserError(f"{path}: line {n} has {len(numbers)} values; a box is 'class cx cy w h', a polygon "
                                "'class x1 y1 x2 y2 x3 y3 ...'")
            k = numbers[0]
            if k != int(k) or not 0 <= k < num_classes:
                raise UserError(f"{path}: line {n}: class {values[0]} is not one of the YAML's {num_classes} "
                                f"classes (0 to {num_classes - 1})")
            labels.append(int(k))
            rows.append(numbers[1:])
    return labels, rows


def _yolo_boxes(rows):
    """A function of (width, height) giving the rows' boxes ``[K, 4]`` xyxy in pixels."""

    def boxes(width, height):
        out = []
        for r in rows:
            if len(r) == 4:
                cx, cy, w, h = r
                out.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            else:  # a polygon: its bounding box
                out.append([min(r[0::2]), min(r[1::2]), max(r[0::2]), max(r[1::2])])
        return np.asarray(out, dtype=np.float64).reshape(-1, 4) * [width, height, width, height]

    return boxes


def read_yolo(path, *, classes=None, seed=0):
    """An Ultralytics data set, given by its data YAML (or a folder holding ``data.yaml``).

    The YAML's ``path`` (relative: to the YAML's folder; default that folder) is
    the root of ``train``, ``val`` and ``test``: each an image folder, a txt list
    of images or a list of those. ``names``: a list, or a mapping 0, 1, ...
    Each image's labels are in the parallel ``labels/`` folder
    (:func:`yolo_label_path`), one ``class cx cy w h`` line (normalised) per box
    or a polygon, whose bounding box is taken; an image without a label file has
    no boxes. Without ``val`` the ``train`` images are split by :func:`seeded_split`.
    ``classes``: the class names in label order (None: ``names``).
    """
    if os.path.isdir(path):
        path = os.path.join(path, "data.yaml")
    spec = _read_yaml(path)
    names = _yolo_names(spec, path)
    classes, relabel = class_index(names, classes, path)
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), str(spec.get("path") or "")))
    need_dir(root, f"data set root (path: in {path})")
    if not spec.get("train"):
        raise UserError(f"{path}: no train images (train: a folder, a txt list or a list of them)")
    files = {split: _images_in(spec[split], root, path) for split in SPLITS if spec.get(split)}
    split_seed = None
    if "val" not in files:
        split_seed = seed
        files = seeded_split(files["train"], seed)
    dataset = Dataset(classes, {}, split_seed)
    relabel = np.asarray(relabel, dtype=np.int64)
    for split, images in files.items():
        samples = []
        for image in images:
            labels, rows = _yolo_labels(yolo_label_path(image), len(names))
            sample = make_sample(image, _yolo_boxes(rows), relabel[np.asarray(labels, dtype=np.int64)], dataset)
            if sample is not None:
                samples.append(sample)
        dataset.splits[split] = samples
    return dataset
