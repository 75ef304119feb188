"""Detection data sets on disk, read into one form, and written out again.

Readers: :func:`read_coco` (COCO JSON, one file or one per split),
:func:`read_voc` (Pascal VOC folders) and :func:`read_yolo` (Ultralytics' data
YAML); :func:`read` picks one by name. Writers: :func:`write_coco`, the form
``bckd_train`` trains from (``python -m bckd_train data --name NAME``), and
:func:`write_yolo`, Ultralytics' layout (``python -m bckd_train to-yolo``).

A :class:`Dataset` holds the class names in their order and, per split, the
images with their boxes (``[K, 4]`` xyxy pixels) and labels. Readers take what
a real data set has and report it instead of failing on it or hiding it:

- a degenerate box (``x2 <= x1`` or ``y2 <= y1``) is dropped;
- a box reaching outside its image is clipped to it (dropped when nothing is left);
- an image without boxes is dropped;

each with a count in :attr:`Dataset.dropped`, which the commands print. A
missing file or folder, a broken annotation file or an image that does not
decode is a :class:`~bckd_train.errors.UserError` naming the file.

Splits come from the data set when it has them (VOC's ``ImageSets/Main``, one
COCO JSON per split, the YAML's ``val``); otherwise :func:`seeded_split` draws
them from a seed, which the dataset records. Writers write into a temporary
folder beside the destination and rename it (:func:`atomic_folder`), so a
killed conversion leaves no half data set.
"""

import contextlib
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
    except Exception as exc:  # noqa: BLE001 (a file PIL cannot read raises whatever its plugin raises)
        raise UserError(f"{path}: image does not decode ({_first_line(exc)})") from None


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


FORMATS = ("coco", "voc", "yolo")


def read(fmt, path, *, images=None, classes=None, seed=0):
    """The data set at ``path`` in format ``fmt`` (one of FORMATS), by that format's reader.

    ``images`` (COCO only): the folder the JSON's file names are relative to.
    ``classes``: the class names in label order (None: the data set's own).
    """
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: not a format bckd_train reads; one of {', '.join(FORMATS)}")
    if fmt == "coco":
        return read_coco(path, images=images, classes=classes, seed=seed)
    if images is not None:
        raise UserError(f"--images is for --format coco; a {fmt} data set says where its images are")
    if not isinstance(path, str):
        raise UserError(f"--path: one {fmt} data set, not one per split (that is for --format coco)")
    return (read_voc if fmt == "voc" else read_yolo)(path, classes=classes, seed=seed)


def _need_file(path, what):
    if not os.path.isfile(path):
        raise UserError(f"{path}: {what} not found")


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _class_index(names, classes, where):
    """``classes`` (None: ``names``) and each of ``names``' label in it; a name that is
    not in ``classes`` is a UserError naming ``where``."""
    classes = tuple(names) if classes is None else tuple(classes)
    index = {name: k for k, name in enumerate(classes)}
    unknown = [n for n in names if n not in index]
    if unknown:
        raise UserError(f"{where}: class {unknown[0]!r} is not in the classes {list(classes)}")
    return classes, [index[n] for n in names]


def _sample(image, objects, labels, dataset):
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


# ----------------------------------------------------------------- COCO ----


def _read_json(path):
    _need_file(path, "COCO JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({_first_line(exc)})") from None
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise UserError(f"{path}: not a COCO detection file (it needs the lists images, annotations and categories)")
    try:
        categories = {c["id"]: str(c["name"]) for c in coco["categories"]}
        images = [(im["id"], str(im["file_name"])) for im in coco["images"]]
        per_image = {i: [] for i, _ in images}
        for a in coco["annotations"]:
            if a["image_id"] not in per_image:
                raise UserError(f"{path}: annotation {a.get('id')} is of image_id {a['image_id']}, which is not "
                                "among the images")
            if a["category_id"] not in categories:
                raise UserError(f"{path}: annotation {a.get('id')} has category_id {a['category_id']}, which is "
                                "not among the categories")
            x, y, w, h = (float(v) for v in a["bbox"])
            per_image[a["image_id"]].append((categories[a["category_id"]], [x, y, x + w, y + h],
                                             bool(a.get("iscrowd", 0))))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a COCO detection file (an entry without a readable {_first_line(exc)})") from None
    names = [categories[i] for i in sorted(categories)]
    return names, images, per_image


def _coco_files(path):
    """{split: JSON file} of ``path`` (a dict already, a folder, or one file: split None)."""
    if isinstance(path, dict):
        return dict(path)
    if os.path.isfile(path):
        return {None: path}
    if not os.path.isdir(path):
        raise UserError(f"{path}: COCO JSON file or folder not found")
    found = {}
    for split in SPLITS:
        names = [f"{split}.json"] + [os.path.join(d, "_annotations.coco.json")
                                     for d in ((split, "valid") if split == "val" else (split,))]
        for name in names:
            if os.path.isfile(os.path.join(path, name)):
                found[split] = os.path.join(path, name)
                break
    if "train" not in found or "val" not in found:
        raise UserError(f"{path}: no train.json and val.json in this folder (nor Roboflow's "
                        "{train,valid}/_annotations.coco.json); give the JSON file itself, or one per split as "
                        "train=FILE val=FILE [test=FILE]")
    return found


def _images_folder(json_path, images):
    if images is not None:
        _need_dir(images, "images")
        return images
    beside = os.path.join(os.path.dirname(os.path.abspath(json_path)), "images")
    return beside if os.path.isdir(beside) else os.path.dirname(os.path.abspath(json_path))


def read_coco(path, *, images=None, classes=None, seed=0):
    """COCO detection annotations (``bbox`` as x, y, width, height in pixels).

    ``path``: one JSON file, whose images are split by :func:`seeded_split` with
    ``seed``; a dict {split: JSON file}; or a folder holding ``train.json``,
    ``val.json`` and maybe ``test.json`` (the form :func:`write_coco` writes) or
    Roboflow's ``{train,valid,test}/_annotations.coco.json``. ``images``: the
    folder the file names are relative to; None: ``images/`` beside each JSON
    file when there is one, else the JSON's own folder. ``classes``: the class
    names in label order; None: the categories of the first file in id order (a
    later split's categories are matched by name). Crowd boxes (``iscrowd``) are
    dropped with a count.
    """
    files = _coco_files(path)
    for split in files:
        if split is not None and split not in SPLITS:
            raise UserError(f"--path {split}=...: the splits are {', '.join(SPLITS)}")
    parsed = {split: _read_json(f) for split, f in files.items()}
    if classes is None:
        classes = tuple(next(iter(parsed.values()))[0])
    split_seed = None
    if None in parsed:
        split_seed = seed
        names, images_list, per_image = parsed.pop(None)
        ids = seeded_split([i for i, _ in images_list], seed)
        by_id = dict(images_list)
        files = {split: files[None] for split in ids}
        parsed = {split: (names, [(i, by_id[i]) for i in split_ids], per_image) for split, split_ids in ids.items()}
    dataset = Dataset(tuple(classes), {}, split_seed)
    for split, (names, images_list, per_image) in parsed.items():
        folder = _images_folder(files[split], images)
        samples = []
        for image_id, file_name in images_list:
            objects = per_image[image_id]
            crowd = sum(c for _, _, c in objects)
            if crowd:
                dataset.dropped["crowd boxes dropped"] += crowd
            objects = [(n, b) for n, b, c in objects if not c]
            _, labels = _class_index([n for n, _ in objects], dataset.classes, files[split])
            sample = _sample(os.path.join(folder, file_name), [b for _, b in objects], labels, dataset)
            if sample is not None:
                samples.append(sample)
        dataset.splits[split] = samples
    return dataset


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

IMAGE_SUFFIXES = (".bmp", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def _read_yaml(path):
    _need_file(path, "data YAML")
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
    classes, relabel = _class_index(names, classes, path)
    root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), str(spec.get("path") or "")))
    _need_dir(root, f"data set root (path: in {path})")
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
            sample = _sample(image, _yolo_boxes(rows), relabel[np.asarray(labels, dtype=np.int64)], dataset)
            if sample is not None:
                samples.append(sample)
        dataset.splits[split] = samples
    return dataset


# -------------------------------------------------------------- writing ----


def _alive(pid):
    """Whether process ``pid`` (a string) runs on this machine: its temporary folder is
    then still being written."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def atomic_folder(out):
    """Yields a new temporary folder beside ``out``; renamed to ``out`` (replacing it)
    when the block ends, removed when it raises. A process killed inside the block
    leaves ``out`` as it was, and a hidden ``.NAME.tmp-PID`` that the next write
    to ``out`` removes (once no process PID runs: not another writer's folder)."""
    out = os.path.abspath(out)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    for stale in os.listdir(parent):
        if stale.startswith((f".{name}.tmp-", f".{name}.old-")) and not _alive(stale.rsplit("-", 1)[1]):
            shutil.rmtree(os.path.join(parent, stale), ignore_errors=True)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    os.makedirs(tmp)
    try:
        yield tmp
        if os.path.exists(out):
            old = os.path.join(parent, f".{name}.old-{os.getpid()}")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_coco(dataset, out, *, meta=None):
    """Writes ``dataset`` as ``bckd_train`` trains from it; returns ``out``.

    ``out/{split}.json`` per split (COCO: categories 1..C in class order, ``bbox``
    x, y, width, height), ``out/images/{split}/`` copies of the images (the JSON's
    file names are relative to ``out/images``) and ``out/meta.json``: the classes,
    the split seed (None: the splits came with the data set), the counts and what
    the reader dropped, with ``meta``'s entries. Written atomically (:func:`atomic_folder`).
    """
    with atomic_folder(out) as tmp:
        counts = {}
        for split, samples in dataset.splits.items():
            os.makedirs(os.path.join(tmp, "images", split))
            images, annotations, used = [], [], set()
            for image_id, s in enumerate(samples, 1):
                stem, suffix = os.path.splitext(os.path.basename(s.path))
                name, k = stem + suffix, 1
                while name in used:  # two source folders may hold the same file name
                    name, k = f"{stem}_{k}{suffix}", k + 1
                used.add(name)
                shutil.copyfile(s.path, os.path.join(tmp, "images", split, name))
                images.append({"id": image_id, "file_name": f"{split}/{name}", "width": s.width, "height": s.height})
                for (x1, y1, x2, y2), label in zip(s.boxes.tolist(), s.labels.tolist()):
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": label + 1,
                                        "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                        "iscrowd": 0})
            coco = {"images": images, "annotations": annotations,
                    "categories": [{"id": k + 1, "name": n} for k, n in enumerate(dataset.classes)]}
            with open(os.path.join(tmp, f"{split}.json"), "w") as f:
                json.dump(coco, f)
            counts[split] = {"images": len(images), "boxes": len(annotations)}
        info = {**(meta or {}), "classes": list(dataset.classes), "splits": counts, "split_seed": dataset.split_seed,
                "dropped": dict(dataset.dropped)}
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(info, f, indent=2)
    return os.path.abspath(out)




def write_yolo(dataset, out):
    """Writes ``dataset`` in Ultralytics' layout under ``out``; returns the data YAML's path.

    ``out/images/<split>/`` holds copies of the images, ``out/labels/<split>/``
    one ``class cx cy w h`` line per box (normalised), and ``out/data.yaml``
    names the splits and the classes. Written atomically (:func:`atomic_folder`),
    so a killed conversion leaves no half data set.
    """
    out = os.path.abspath(out)
    with atomic_folder(out) as tmp:
        for split, samples in dataset.splits.items():
            os.makedirs(os.path.join(tmp, "images", split))
            os.makedirs(os.path.join(tmp, "labels", split))
            used = set()
            for s in samples:
                stem, suffix = os.path.splitext(os.path.basename(s.path))
                name, k = stem, 1
                while name in used:  # a label file is named by the image's stem
                    name, k = f"{stem}_{k}", k + 1
                used.add(name)
                shutil.copyfile(s.path, os.path.join(tmp, "images", split, name + suffix))
                b = s.boxes
                cx, cy = (b[:, 0] + b[:, 2]) / 2 / s.width, (b[:, 1] + b[:, 3]) / 2 / s.height
                w, h = (b[:, 2] - b[:, 0]) / s.width, (b[:, 3] - b[:, 1]) / s.height
                with open(os.path.join(tmp, "labels", split, name + ".txt"), "w") as f:
                    for row in zip(s.labels, cx, cy, w, h):
                        f.write("%d %.6f %.6f %.6f %.6f\n" % row)
        lines = [f"path: {json.dumps(out)}"]  # JSON strings are YAML strings
        lines += [f"{split}: images/{split}" for split in dataset.splits]
        lines += ["names:"] + [f"  {k}: {json.dumps(name)}" for k, name in enumerate(dataset.classes)]
        with open(os.path.join(tmp, "data.yaml"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return os.path.join(out, "data.yaml")
