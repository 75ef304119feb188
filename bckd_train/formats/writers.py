"""The writers: :func:`write_coco`, the form ``bckd_train`` trains from, and :func:`write_yolo`,
Ultralytics' layout, each into a folder renamed into place when whole (:func:`atomic_folder`)."""

import contextlib
import json
import os
import shutil


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
