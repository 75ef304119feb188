"""The COCO reader: detection annotations in one JSON file, or one per split."""

import json
import os

from ..errors import UserError
from .common import SPLITS, Dataset, class_index, first_line, make_sample, need_dir, need_file, seeded_split


def _read_json(path):
    need_file(path, "COCO JSON file")
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable JSON file ({first_line(exc)})") from None
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
        raise UserError(f"{path}: not a COCO detection file (an entry without a readable {first_line(exc)})") from None
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
        need_dir(images, "images")
        return images
    beside = os.path.join(os.path.dirname(os.path.abspath(json_path)), "images")
    return beside if os.path.isdir(beside) else os.path.dirname(os.path.abspath(json_path))


def read_coco(path, *, images=None, classes=None, seed=0):
    """COCO detection annotations (``bbox`` as x, y, width, height in pixels).

    ``path``: one JSON file, whose images are split by :func:`seeded_split` with
    ``seed``; a dict {split: JSON file}; or a folder holding ``train.json``,
    ``val.json`` and maybe ``test.json`` (the form :func:`bckd_train.formats.write_coco` writes) or
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
            _, labels = class_index([n for n, _ in objects], dataset.classes, files[split])
            sample = make_sample(os.path.join(folder, file_name), [b for _, b in objects], labels, dataset)
            if sample is not None:
                samples.append(sample)
        dataset.splits[split] = samples
    return dataset
