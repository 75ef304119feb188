"""The two real data sets, prepared once into COCO format, and their loader.

forest   hand-drawn tree-crown boxes on aerial RGB images, from the files that
         ship in the deepforest 2.1.0 wheel (sha256 pinned), tiled to 400x400;
         train and val come from different source images, so no area is in both.
fashion  scenes of 2-5 Fashion-MNIST items (Debian's dataset-fashion-mnist) at
         varied scales on a 128x128 canvas, 10 classes; train scenes use the
         official train images, val scenes the official test images; boxes are
         exact by construction (the tight box of the pasted item's pixels) and
         every scene is a function of the seed.

``python -m bckd_train data`` writes ``<cache>/data/<name>/{train,val}.json``
(COCO) and ``<cache>/data/<name>/images/``. ``python -m bckd_train data --name
NAME --format coco|voc|yolo --path PATH`` prepares a data set of one's own into
the same form (:func:`bckd_train.formats.write_coco`), with ``test.json`` when the
data set has a test split and ``meta.json`` (classes, splits, what was dropped).
"""

import contextlib
import gzip
import io
import json
import os
import xml.etree.ElementTree as ET
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import formats
from .errors import UserError
from .sources import DEEPFOREST, MissingSource, default_cache, open_wheel

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


# ----------------------------------------------------------------- COCO ----


def _coco(images, annotations, classes):
    for i, a in enumerate(annotations, 1):
        a["id"] = i
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
    }


def _annotation(image_id, box, category):
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    return {"image_id": image_id, "category_id": category + 1, "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}


def _write(out, split, coco):
    with open(os.path.join(out, f"{split}.json"), "w") as f:
        json.dump(coco, f)


# --------------------------------------------------------------- forest ----

FOREST_SPLITS = {
    "train": ("2019_YELL_2_528000_4978000_image_crop2", "SOAP_061"),
    "val": ("2019_YELL_2_541000_4977000_image_crop", "OSBS_029"),
}
FOREST_TILE = 400
MIN_VISIBLE = 0.5  # keep a clipped box when at least half of it is in the tile


def _voc_boxes(xml_bytes):
    root = ET.fromstring(xml_bytes)
    boxes = []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        boxes.append([float(bb.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")])
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def _tile_origins(size, tile):
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, tile))
    return starts + [size - tile]


def prepare_forest(cache, out):
    """Tiles the annotated deepforest images into COCO train/val sets."""
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    with open_wheel(DEEPFOREST, cache) as wheel:
        for split, sources in FOREST_SPLITS.items():
            images, annotations = [], []
            for source in sources:
                image = Image.open(io.BytesIO(wheel.read(f"deepforest/data/{source}.png"))).convert("RGB")
                boxes = _voc_boxes(wheel.read(f"deepforest/data/{source}.xml"))
                width, height = image.size
                for y0 in _tile_origins(height, FOREST_TILE):
                    for x0 in _tile_origins(width, FOREST_TILE):
                        tw, th = min(FOREST_TILE, width), min(FOREST_TILE, height)
                        clipped = boxes - [x0, y0, x0, y0]
                        clipped[:, 0::2] = clipped[:, 0::2].clip(0, tw)
                        clipped[:, 1::2] = clipped[:, 1::2].clip(0, th)
                        area = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
                        full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
                        keep = (area >= MIN_VISIBLE * full) & (area > 0)
                        if not keep.any():
                            continue
                        name = f"{source}_{x0}_{y0}.png"
                        image.crop((x0, y0, x0 + tw, y0 + th)).save(os.path.join(out, "images", name))
                        image_id = len(images) + 1
                        images.append({"id": image_id, "file_name": name, "width": tw, "height": th, "source": source})
                        annotations += [_annotation(image_id, b, 0) for b in clipped[keep]]
            _write(out, split, _coco(images, annotations, ("tree",)))


# -------------------------------------------------------------- fashion ----

FASHION_CANVAS = 128
FASHION_SCENES = {"train": 2000, "val": 400}
FASHION_ITEMS = (2, 5)
FASHION_SCALE = (20, 64)  # side of the pasted item, pixels


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion(split):
    prefix = "train" if split == "train" else "t10k"
    images_path = os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz")
    if not os.path.exists(images_path):
        raise MissingSource(f"Fashion-MNIST is missing ({images_path}); install it with: "
                            "apt-get update && apt-get install -y dataset-fashion-mnist")
    return _read_idx(images_path), _read_idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz"))


MIN_VISIBLE_PIXELS = 0.3  # an item covered by later ones keeps its box while 30% of it shows


def make_scene(rng, items, labels):
    """One canvas and its exact boxes: [H, W, 3] uint8, [K, 4] xyxy, [K] labels.

    Items are pasted in turn; a later item covers an earlier one. Each box is
    the tight box of the item's pixels that are still visible at the end.
    """
    canvas = np.zeros((FASHION_CANVAS, FASHION_CANVAS, 3), dtype=np.float32)
    canvas += rng.uniform(0, 40, size=3)  # a dim, coloured background
    owner = np.full((FASHION_CANVAS, FASHION_CANVAS), -1, dtype=np.int64)
    pasted, classes = [], []
    for _ in range(rng.integers(FASHION_ITEMS[0], FASHION_ITEMS[1] + 1)):
        index = rng.integers(len(items))
        side = int(rng.integers(FASHION_SCALE[0], FASHION_SCALE[1] + 1))
        item = np.asarray(Image.fromarray(items[index]).resize((side, side), Image.BILINEAR), dtype=np.float32)
        mask = item > 12
        if not mask.any():
            continue
        x0 = int(rng.integers(0, FASHION_CANVAS - side + 1))
        y0 = int(rng.integers(0, FASHION_CANVAS - side + 1))
        color = rng.uniform(0.5, 1.0, size=3)
        canvas[y0 : y0 + side, x0 : x0 + side][mask] = item[mask, None] * color
        owner[y0 : y0 + side, x0 : x0 + side][mask] = len(pasted)
        pasted.append(int(mask.sum()))
        classes.append(int(labels[index]))
    boxes, kept = [], []
    for k, (count, label) in enumerate(zip(pasted, classes)):
        ys, xs = np.nonzero(owner == k)
        if len(ys) >= MIN_VISIBLE_PIXELS * count:
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
            kept.append(label)
    return canvas.clip(0, 255).astype(np.uint8), np.array(boxes, dtype=np.float64).reshape(-1, 4), kept


def prepare_fashion(out, seed=0, scenes=None):
    scenes = scenes or FASHION_SCENES
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    for split_index, (split, count) in enumerate(scenes.items()):
        items, labels = load_fashion(split)
        rng = np.random.default_rng([seed, split_index])
        images, annotations = [], []
        for i in range(count):
            canvas, boxes, classes = make_scene(rng, items, labels)
            name = f"{split}_{i:05d}.png"
            Image.fromarray(canvas).save(os.path.join(out, "images", name))
            image_id = i + 1
            images.append({"id": image_id, "file_name": name, "width": FASHION_CANVAS, "height": FASHION_CANVAS})
            annotations += [_annotation(image_id, b, c) for b, c in zip(boxes, classes)]
        _write(out, split, _coco(images, annotations, FASHION_CLASSES))


# The built-in data sets and their classes, in label order (checkpoints written before
# checkpoints kept their classes were all trained on one of these).
BUILTIN = {"forest": ("tree",), "fashion": FASHION_CLASSES}
DATASETS = tuple(BUILTIN)


def folder(name, cache=None):
    """Where data set ``name`` is prepared: ``<cache>/data/<name>``."""
    return os.path.join(cache or default_cache(), "data", name)


def prepare(cache=None, names=DATASETS):
    """Prepares the built-in data sets among ``names`` that are not prepared yet (each
    written atomically: a killed preparation leaves none half-written) and checks that
    the others were prepared by ``python -m bckd_train data --name``; returns their folders."""
    cache = cache or default_cache()
    folders = {}
    for name in names:
        out = folder(name, cache)
        folders[name] = out
        if all(os.path.exists(os.path.join(out, f"{s}.json")) for s in ("train", "val")):
            continue
        if name not in BUILTIN:
            raise UserError(f"data set {name!r} is not prepared in {os.path.dirname(out)}; prepare it with: "
                            f"python -m bckd_train data --name {name} --format coco|voc|yolo --path PATH")
        with formats.atomic_folder(out) as tmp:
            if name == "forest":
                prepare_forest(cache, tmp)
            else:
                prepare_fashion(tmp)
    return folders


def classes(name, cache=None):
    """The class names of data set ``name`` in label order: known for the built-in
    sets, read from the prepared folder (``meta.json``, else ``train.json``'s
    categories) for the others."""
    if name in BUILTIN:
        return BUILTIN[name]
    out = prepare(cache, names=(name,))[name]
    meta = os.path.join(out, "meta.json")
    if os.path.exists(meta):
        with open(meta) as f:
            return tuple(json.load(f)["classes"])
    with open(os.path.join(out, "train.json")) as f:
        return tuple(c["name"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"]))


# --------------------------------------------------------------- loading ----


class CocoDetection(torch.utils.data.Dataset):
    """Images as float tensors [3, H, W] in [0, 1] and targets {"boxes": [K, 4] xyxy, "labels": [K]}."""

    def __init__(self, folder, split):
        with open(os.path.join(folder, f"{split}.json")) as f:
            coco = json.load(f)
        self.folder = folder
        self.ann_file = os.path.join(folder, f"{split}.json")
        self.images = coco["images"]
        self.classes = tuple(c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"]))
        self.num_classes = len(self.classes)
        per_image = {im["id"]: [] for im in self.images}
        for a in coco["annotations"]:
            per_image[a["image_id"]].append(a)
        self.annotations = per_image

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        info = self.images[index]
        image = Image.open(os.path.join(self.folder, "images", info["file_name"])).convert("RGB")
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # [3, H, W]
        anns = self.annotations[info["id"]]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([a["category_id"] - 1 for a in anns], dtype=torch.int64)
        return x, {"boxes": boxes, "labels": labels, "image_id": info["id"]}


class SampleKey(NamedTuple):
    """A training input, of which the loaded image and boxes are a function: the
    dataset index, the flip/rotation of :func:`augment`, and the seed of :func:`jitter`
    (None: not jittered). A jittered input does not come back in another epoch."""

    index: int
    transform: int = 0
    jitter: Optional[int] = None


def hflip(image, target):
    """Mirrors an image [3, H, W] and its boxes left to right."""
    w = image.shape[-1]
    b = target["boxes"]
    boxes = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    return image.flip(-1), dict(target, boxes=boxes)


def vflip(image, target):
    """Mirrors an image [3, H, W] and its boxes top to bottom."""
    h = image.shape[-2]
    b = target["boxes"]
    boxes = torch.stack([b[:, 0], h - b[:, 3], b[:, 2], h - b[:, 1]], 1)
    return image.flip(-2), dict(target, boxes=boxes)


def transpose(image, target):
    """Swaps the x and y axes of an image [3, H, W] and its boxes."""
    return image.transpose(-1, -2), dict(target, boxes=target["boxes"][:, [1, 0, 3, 2]])


# TrainConfig.augment -> the transforms of :func:`augment` its epochs draw (loading.epoch_batches):
# "flips" mirrors left-right and top-bottom without transposing (a 640x480 image stays 640x480)
AUGMENTS = {"none": (0,), "hflip": (0, 1), "flips": (0, 1, 2, 3), "dihedral": tuple(range(8))}


def augment(image, target, t):
    """One of the 8 flips/rotations by 90° (the dihedral group): bit 2 transposes,
    then bit 0 mirrors left-right, bit 1 top-bottom; t = 0 is the identity."""
    if t & 4:
        image, target = transpose(image, target)
    if t & 1:
        image, target = hflip(image, target)
    if t & 2:
        image, target = vflip(image, target)
    return image, target


@contextlib.contextmanager
def one_thread():
    """Runs the block on one CPU thread, then restores the thread count."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def jitter(image, target, seed, *, scale=(1.0, 1.0), colour=0.0):
    """Random rescaling and colour change, drawn from ``seed``: :func:`jitter_` on one
    thread. PyTorch's CPU resampling and reductions split their work by the thread
    count, which moves the last bit of the result; on one thread an input is a
    function of its key alone, in the training loop as in a DataLoader worker."""
    with one_thread():
        return jitter_(image, target, seed, scale=scale, colour=colour)


def jitter_(image, target, seed, *, scale=(1.0, 1.0), colour=0.0):
    """Random rescaling and colour change, drawn from ``seed`` (so an input is a
    function of its key). The image [3, H, W] is resized by a factor drawn from
    ``scale``; a larger one is cropped back to H×W at a random place, keeping the
    boxes at least MIN_VISIBLE inside (clipped), a smaller one stays smaller
    (:func:`collate` pads it). Brightness, contrast and saturation are each
    multiplied by a factor drawn from [1 − colour, 1 + colour]."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(6, generator=g, dtype=torch.float64).tolist()
    h, w = image.shape[-2:]
    s = scale[0] + (scale[1] - scale[0]) * u[0]
    boxes, labels = target["boxes"], target["labels"]
    if s != 1.0:
        nh, nw = max(round(h * s), 1), max(round(w * s), 1)
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False,
                              antialias=s < 1)[0]
        boxes = boxes * torch.tensor([nw / w, nh / h, nw / w, nh / h])
        if s > 1:
            y0, x0 = int(u[1] * (nh - h + 1)), int(u[2] * (nw - w + 1))
            image = image[:, y0 : y0 + h, x0 : x0 + w]
            full = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            boxes = boxes - torch.tensor([x0, y0, x0, y0], dtype=boxes.dtype)
            boxes = torch.stack([boxes[:, 0].clamp(0, w), boxes[:, 1].clamp(0, h),
                                 boxes[:, 2].clamp(0, w), boxes[:, 3].clamp(0, h)], 1)
            area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            keep = (area >= MIN_VISIBLE * full) & (area > 0)
            boxes, labels = boxes[keep], labels[keep]
    if colour > 0:
        b, c, sat = (1 - colour + 2 * colour * v for v in u[3:])
        image = image * b
        image = (image - image.mean()) * c + image.mean()
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = ((image - grey) * sat + grey).clamp(0, 1)
    return image.contiguous(), dict(target, boxes=boxes, labels=labels)


def collate(batch, size_divisor=32):
    """Pads images to one size (a multiple of size_divisor) and returns the valid-pixel masks.

    Returns images [B, 3, H, W], masks [B, H, W] (1 inside the image) and the list of targets.
    """
    h = max(x.shape[1] for x, _ in batch)
    w = max(x.shape[2] for x, _ in batch)
    h = (h + size_divisor - 1) // size_divisor * size_divisor
    w = (w + size_divisor - 1) // size_divisor * size_divisor
    images = torch.zeros(len(batch), 3, h, w)
    masks = torch.zeros(len(batch), h, w)
    for i, (x, _) in enumerate(batch):
        images[i, :, : x.shape[1], : x.shape[2]] = x
        masks[i, : x.shape[1], : x.shape[2]] = 1
    return images, masks, [t for _, t in batch]
