"""A run's data: its config's data set splits, each epoch's batches, and their loading."""

import dataclasses
import os

import torch

from . import data
from .config import TrainConfig
from .errors import UserError


def with_data(cfg: TrainConfig, name=None, cache=None):
    """``cfg`` on data set ``name`` (None: its own): the data set's class names in
    ``cfg.classes`` and their count as the model's num_classes."""
    name = name or cfg.dataset
    classes = data.classes(name, cache)
    return dataclasses.replace(cfg, dataset=name, classes=classes,
                               model=dataclasses.replace(cfg.model, num_classes=len(classes)))


def check_classes(cfg: TrainConfig, dataset, what):
    """Refuses (UserError) a data set split whose classes are not ``cfg.classes``."""
    if cfg.classes and tuple(dataset.classes) != tuple(cfg.classes):
        raise UserError(f"{what}: the data set {cfg.dataset!r} in {dataset.folder} has the classes "
                        f"{list(dataset.classes)}, the model {list(cfg.classes)}; prepare it again with those "
                        "classes (data --classes) or train anew")


def split_set(cfg: TrainConfig, split, cache=None):
    """One split of cfg's data set ("train", "val" or "test"), cut to cfg's image limits."""
    folder = data.prepare(cache, names=(cfg.dataset,))[cfg.dataset]
    if not os.path.exists(os.path.join(folder, f"{split}.json")):
        present = sorted(f[:-5] for f in os.listdir(folder) if f[:-5] in ("train", "val", "test"))
        raise UserError(f"data set {cfg.dataset!r} has no {split} split ({folder} has {', '.join(present)})")
    dataset = data.CocoDetection(folder, split)
    check_classes(cfg, dataset, f"data set {cfg.dataset!r}")
    limit = {"train": cfg.max_train_images, "val": cfg.max_val_images}.get(split)
    if limit:
        dataset.images = dataset.images[:limit]
    return dataset


def datasets(cfg: TrainConfig, cache=None):
    """The train and val splits of cfg's data set (:func:`split_set`)."""
    return split_set(cfg, "train", cache), split_set(cfg, "val", cache)


def epoch_batches(n, batch_size, epoch, seed, rank, size, augment="hflip", jitter=False):
    """This process's share of each global batch of one epoch, as :class:`data.SampleKey`
    keys, with a jitter seed when ``jitter``.

    Order and transforms depend on (seed, epoch) only: not on the number of
    processes, nor on where an interrupted run resumed.
    """
    if augment not in data.AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; one of {', '.join(data.AUGMENTS)}")
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    # each input draws uniformly from data.AUGMENTS[augment]: bit 0 (hflip), then bits 1-2 (dihedral)
    transforms = (torch.rand(n, generator=g) < 0.5).long()
    if augment == "dihedral":
        transforms += 2 * torch.randint(0, 4, (n,), generator=g)
    elif augment == "flips":
        transforms += 2 * torch.randint(0, 2, (n,), generator=g)
    elif augment == "none":
        transforms.zero_()
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=g).tolist() if jitter else [None] * n
    keys = [data.SampleKey(i, t, s) for i, (t, s) in enumerate(zip(transforms.tolist(), seeds))]
    per_rank = batch_size // size
    for start in range(0, n - batch_size + 1, batch_size):
        batch = [keys[i] for i in order[start : start + batch_size]]
        yield batch[rank * per_rank : (rank + 1) * per_rank]


def load_batch(dataset, batch, *, scale=(1.0, 1.0), colour=0.0, raw=False):
    """Images [B, 3, H, W] (float in [0, 1]), masks [B, H, W] (float, 1 on image pixels)
    and targets of a batch's :class:`data.SampleKey` keys (tuples of their fields will do).

    ``raw``: the images as uint8 (0-255) and the masks as bool, a quarter of the bytes
    to send from a loader process and to a GPU; :func:`to_device` makes them float
    there. An image not jittered comes back exactly (its pixels were bytes); a
    jittered one is rounded to the nearest byte.
    """
    items = []
    for key in batch:
        key = data.SampleKey(*key)
        image, target = data.augment(*dataset[key.index], key.transform)
        if key.jitter is not None:
            image, target = data.jitter(image, target, key.jitter, scale=scale, colour=colour)
        items.append((image, target))
    images, masks, targets = data.collate(items)
    if raw:
        return images.mul(255).round_().clamp_(0, 255).to(torch.uint8), masks.bool(), targets
    return images, masks, targets


class EpochBatches(torch.utils.data.Dataset):
    """Batches given by their keys (:func:`epoch_batches`), item k = :func:`load_batch`
    of the k-th, raw: a DataLoader over it yields, in order, what the loop would load
    itself, since the keys fix every image, flip and jitter draw, whichever process
    loads them. Each item is (images [B, 3, H, W] uint8, masks [B, H, W] bool, targets)."""

    def __init__(self, dataset, batches, *, scale=(1.0, 1.0), colour=0.0):
        self.dataset = dataset
        self.batches = list(batches)
        self.scale = scale
        self.colour = colour

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, k):
        return load_batch(self.dataset, self.batches[k], scale=self.scale, colour=self.colour, raw=True)


def batch_loader(dataset, batches, *, scale=(1.0, 1.0), colour=0.0, workers=0, pin_memory=False):
    """A DataLoader over :class:`EpochBatches`: ``workers`` processes load ahead (0: in
    this process, when asked), ``pin_memory`` for non_blocking copies to a GPU."""
    return torch.utils.data.DataLoader(EpochBatches(dataset, batches, scale=scale, colour=colour), batch_size=None,
                                       shuffle=False, num_workers=workers, pin_memory=pin_memory)


def default_workers(device):
    """Loader processes per training process: none on the CPU (they would take the
    cores the convolutions use), up to 8 per GPU."""
    if torch.device(device).type != "cuda":
        return 0
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, (os.cpu_count() or 1) // local - 1))


def to_device(images, masks, targets, device):
    """The batch on ``device``, copied without waiting (from pinned memory on a GPU),
    and float there: uint8 images divided by 255 (the same float32 values as the
    dataset's), bool masks 0 / 1."""
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.float().div_(255)
    masks = masks.to(device, non_blocking=True).float()
    targets = [dict(t, boxes=t["boxes"].to(device, non_blocking=True), labels=t["labels"].to(device, non_blocking=True))
               for t in targets]
    return images, masks, targets
