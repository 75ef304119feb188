"""Training and COCO evaluation of a GFL detector; resumable, torchrun-aware."""

import contextlib
import dataclasses
import hashlib
import importlib
import io
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data, gfl, runtime
from .config import TrainConfig
from .errors import UserError
from .model import GFL

# ----------------------------------------------------------------- data ----


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


# ------------------------------------------------------------- schedule ----


def learning_rate(cfg: TrainConfig, it, epoch):
    lr = cfg.lr * (0.1 ** sum(epoch >= s for s in cfg.lr_steps))
    if it < cfg.warmup_iters:
        k = it / cfg.warmup_iters
        lr *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * k
    return lr


# ------------------------------------------------------------ evaluation ----


@torch.no_grad()
def evaluate(model, dataset, *, batch_size=8, device="cpu", amp=None):
    """COCO metrics of the model on a dataset: AP, AP50, AP75, AP_S, AP_M, AP_L (fractions).

    Under ``amp`` the forward pass runs in bf16; the maps are decoded in float32
    (box coordinates in pixels need more than bf16's 8 bits).
    """
    model.eval()
    results = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, _, targets = data.collate(items)
        with runtime.autocast(device, amp):
            cls, reg = model(images.to(device))
        cls, reg = [c.float() for c in cls], [r.float() for r in reg]
        dets = gfl.detect(cls, reg, strides=model.cfg.strides, reg_max=model.cfg.reg_max)
        for det, t in zip(dets, targets):
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


# ----------------------------------------------------------- checkpoints ----


def fsync_dir(folder):
    """Makes a rename in ``folder`` durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_atomic(write, path):
    """Writes ``path`` through ``write(file)`` into a temporary file beside it, fsyncs
    and renames it over ``path``: a kill at any moment leaves either the old file or
    the new one, whole."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def save_checkpoint(state, path):
    save_atomic(lambda f: torch.save(state, f), path)


def save_json(obj, path):
    save_atomic(lambda f: f.write((json.dumps(obj, indent=2)).encode()), path)


def read_checkpoint(path, *, what="checkpoint"):
    """A training checkpoint's dict, or a UserError naming the file when it is missing,
    truncated, empty or not one of ours."""
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any failure to read a file we were handed is the file's
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"{what} {path} is not readable ({type(exc).__name__}: {first}); "
                        "it may be truncated or not a bckd_train checkpoint") from exc
    if not isinstance(ckpt, dict) or not {"model", "config"} <= set(ckpt):
        raise UserError(f"{what} {path} is not a bckd_train checkpoint (no model and config entries)")
    return ckpt


def load_checkpoint(path, cache=None):
    """(config, model in eval mode, on the CPU) of a training checkpoint; the config
    on the checkpoint's data set, with its classes (a checkpoint written before they
    were kept was trained on a built-in set, whose classes are known)."""
    from .config import get_config

    ckpt = read_checkpoint(path)
    try:
        cfg = get_config(ckpt["config"], seed=ckpt.get("seed", 0))
    except UserError as exc:
        raise UserError(f"checkpoint {path}: {exc}") from exc
    dataset = ckpt.get("dataset", cfg.dataset)
    classes = ckpt.get("classes") or data.BUILTIN.get(dataset)  # older checkpoints: a built-in set's
    if classes is None:
        raise UserError(f"checkpoint {path} names no classes and its data set {dataset!r} is not a built-in one")
    cfg = dataclasses.replace(cfg, dataset=dataset, classes=tuple(classes),
                              model=dataclasses.replace(cfg.model, num_classes=len(classes)))
    model = GFL(dataclasses.replace(cfg.model, pretrained=False), cache=cache)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"checkpoint {path} does not fit the {cfg.name} preset's detector "
                        f"({str(exc).splitlines()[0]})") from exc
    return cfg, model.eval()


def weights_sha256(state_dict):
    """Hash of a state dict's names and values (NCHW order whatever the memory format or device)."""
    h = hashlib.sha256()
    for name, value in state_dict.items():
        h.update(name.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_resume(ckpt, path, cfg, *, method, teacher_sha256=None, amp=None):
    """Refuses (UserError) to resume a checkpoint with arguments that contradict it."""
    wanted = {"config": cfg.name, "seed": cfg.seed, "method": method}
    for key, value in wanted.items():
        if ckpt.get(key, "none" if key == "method" else None) != value:
            flag = {"config": "--config", "seed": "--seed", "method": "--method"}[key]
            raise UserError(f"--resume: {path} was trained with {key} {ckpt.get(key)!r}, this run asks for "
                            f"{value!r}; pass {flag} {ckpt.get(key)} to continue it, or another --out to start anew")
    if "amp" in ckpt and (ckpt["amp"] or "none") != (amp or "none"):
        raise UserError(f"--resume: {path} was trained with --amp {ckpt['amp'] or 'none'}, this run asks for --amp "
                        f"{amp or 'none'}; pass --amp {ckpt['amp'] or 'none'} to continue it, or another --out to "
                        "start anew")
    if ckpt.get("dataset", cfg.dataset) != cfg.dataset:
        raise UserError(f"--resume: {path} was trained on data set {ckpt['dataset']!r}, this run asks for "
                        f"{cfg.dataset!r}; pass --data {ckpt['dataset']} to continue it, or another --out to start anew")
    if ckpt.get("classes") and cfg.classes and tuple(ckpt["classes"]) != tuple(cfg.classes):
        raise UserError(f"--resume: {path} was trained on the classes {list(ckpt['classes'])}, the data set "
                        f"{cfg.dataset!r} now has {list(cfg.classes)}")
    if teacher_sha256 is not None and ckpt.get("teacher_sha256") not in (None, teacher_sha256):
        raise UserError(f"--resume: {path} was distilled from another teacher (weights sha256 "
                        f"{ckpt['teacher_sha256'][:12]}, --teacher has {teacher_sha256[:12]})")


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
    device = next(model.parameters()).device
    with runtime.autocast(device, amp):
        cls, reg = model(images.to(device))
    cls, reg = [c.float() for c in cls], [r.float() for r in reg]
    det = gfl.detect(cls, reg, strides=cfg.model.strides, reg_max=cfg.model.reg_max)[0]
    draw = ImageDraw.Draw(image)
    keep = det["scores"] >= score
    for box, s, label in zip(det["boxes"][keep].tolist(), det["scores"][keep].tolist(), det["labels"][keep].tolist()):
        draw.rectangle(box, outline=(255, 40, 40), width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{names[label]} {s:.2f}", fill=(255, 255, 0))
    image.save(out_path)
    top = float(det["scores"].max()) if det["scores"].numel() else None
    return int(keep.sum()), top


# -------------------------------------------------------------- training ----


class LossLog:
    """log.jsonl's per-iteration records. Each iteration's losses come back from the
    device in one transfer, started when they are pushed and read at the next push
    (or flush): the host never waits for the GPU in the middle of an epoch.

    ``time`` is the iteration's seconds: on a GPU measured with CUDA events on the
    device's stream, from before the batch's copy to the device (:meth:`start`) to
    after its losses' copy back, so it is the step's time on the GPU, not the host's
    time to enqueue it; on the CPU the wall time of the step."""

    def __init__(self, path, bar=None):
        self.path = path  # None: this process does not write (rank > 0)
        self.bar = bar
        self.pending = None

    def start(self, device):
        """Marks the start of an iteration on ``device``: a CUDA event on its current
        stream, or None (the CPU, or a process that does not write)."""
        device = torch.device(device)
        if self.path is None or device.type != "cuda":
            return None
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(device))
        return event

    def push(self, names, values, meta, start=None):
        """names: the losses' names; values [len(names) + 1]: the losses and their
        total, on the device; meta: iteration, epoch, lr, time (the host's seconds,
        kept on the CPU); start: :meth:`start`'s event, whose time to the losses' copy
        replaces meta's time on a GPU."""
        if self.path is not None and values.is_cuda:
            stream = torch.cuda.current_stream(values.device)  # the copy runs on the values' GPU, whichever is current
            values = values.to("cpu", non_blocking=True)
            event = torch.cuda.Event(enable_timing=start is not None)
            event.record(stream)
        else:
            event = None
        self.flush()
        if self.path is not None:
            self.pending = (names, values, event, meta, start)

    def flush(self):
        if self.pending is None:
            return
        names, values, event, meta, start = self.pending
        self.pending = None
        if event is not None:
            event.synchronize()
        seconds = start.elapsed_time(event) / 1e3 if start is not None and event is not None else meta["time"]
        values = values.tolist()
        record = dict(zip(names, values[:-1]))
        record.update(iteration=meta["iteration"], epoch=meta["epoch"], lr=meta["lr"], loss=values[-1],
                      time=seconds)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{record['loss']:.3f}", qfl=f"{record['loss_qfl']:.3f}", lr=f"{meta['lr']:.4f}")


def step_losses(model, distiller, images, masks, targets, keys, *, cfg, amp=None):
    """One batch's losses: a dict of loss tensors on the model's device.

    images [B, 3, H, W], masks [B, H, W] and targets on the device; keys: the
    batch's :class:`data.SampleKey` keys, for the teacher's memo. Under
    ``amp`` the student's forward pass runs in bf16 autocast, the teacher's in
    float32 (as ``--memo-teacher`` and ``--teacher-maps`` keep its maps, so the three
    are one experiment); the ground-truth losses (ATSS, QFL, DFL, GIoU) take the
    student's maps upcast to float32, the distillation losses its bf16 maps as they
    come (BCDL and ILDL get the teacher's maps in bf16 too).
    """
    teacher = None
    with runtime.autocast(images.device, amp):
        cls, reg = model(images)
    if distiller is not None and distiller.method != "none":
        # float32 under any --amp, as the memo and a --teacher-maps file hold them: one teacher
        teacher = distiller.teacher_maps(images, keys)
    losses, extras = gfl.gfl_loss([c.float() for c in cls], [r.float() for r in reg], targets,
                                  strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                                  num_classes=cfg.model.num_classes, avg_factor_fn=runtime.reduce_mean)
    if distiller is not None:
        losses.update(distiller(images, masks, cls, reg, extras, strides=cfg.model.strides,
                                reg_max=cfg.model.reg_max, weights=cfg.bckd, keys=keys, teacher=teacher))
    return losses


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


def train(cfg: TrainConfig, out, *, resume=False, cache=None, device="cpu", amp=None, workers=None, progress=True,
          distiller=None, deterministic=False):
    """Trains cfg into folder out; returns the last evaluation's metrics.

    device: "auto", "cpu", "cuda" (this process's LOCAL_RANK GPU under torchrun)
    or a torch.device; the distiller's teacher must be on it already. amp: None
    or "bf16" (autocast forward passes, float32 weights and optimiser state).
    workers: loader processes (None: 0 on the CPU, up to 8 per GPU).

    Writes out/log.jsonl (per-iteration losses, per-epoch metrics),
    out/checkpoint.pth (every epoch and where --max-iters stops: weights,
    optimiser, RNG states, position; written atomically), out/metrics.json and
    out/curves.png at the end. ``resume`` continues from out/checkpoint.pth where
    it stopped, mid-epoch included, and refuses (UserError) a checkpoint that
    contradicts the arguments or has nothing left to train. The model predicts
    cfg's data set's classes (:func:`with_data`), which the checkpoint keeps. With a
    :class:`bckd_train.distill.Distiller`, its losses join the ground-truth ones
    (the teacher is not among the optimised parameters). ``deterministic``: the run
    under :func:`runtime.determinism` (cuDNN deterministic, no TF32), the settings as
    they were after it. The checkpoint records the device and these settings
    (:func:`runtime.settings`); a resumed run on other ones says that it will not end
    bitwise as an uninterrupted one.
    """
    if not cfg.classes:
        cfg = with_data(cfg, cache=cache)
    with runtime.determinism(deterministic):
        return _train(cfg, out, resume=resume, cache=cache, device=device, amp=amp, workers=workers,
                      progress=progress, distiller=distiller)


def _train(cfg, out, *, resume, cache, device, amp, workers, progress, distiller):
    run = start_run(cfg, out, cache=cache, device=device, amp=amp, workers=workers, progress=progress,
                    distiller=distiller)
    ckpt = checkpoint_to_resume(run) if resume else None
    position = restore(run, ckpt)
    if ckpt is not None and ckpt.get("eval_pending") is not None:
        evaluate_pending(run, position, ckpt)
    if ckpt is not None and (ckpt["epoch"] >= cfg.epochs or stopped(cfg, position)):
        # killed (or its evaluation failed) after its last checkpoint: only the end was missing
        if run.rank == 0:
            write_end(run.files, position.metrics)
        return position.metrics
    start_epoch = position.epoch
    for epoch in range(start_epoch, cfg.epochs):
        position.epoch = epoch
        run_epoch(run, position, first=position.step if epoch == start_epoch else 0)
        end_of_epoch(run, position)
        if stopped(cfg, position):
            break
    if run.rank == 0:
        write_end(run.files, position.metrics)
    return position.metrics


class RunFiles:
    """What a training run writes into its folder."""

    def __init__(self, out):
        self.out = out
        self.checkpoint = os.path.join(out, "checkpoint.pth")
        self.log = os.path.join(out, "log.jsonl")
        self.metrics = os.path.join(out, "metrics.json")
        self.curves = os.path.join(out, "curves.png")


@dataclasses.dataclass(frozen=True)
class Run:
    """What stays fixed through a run of :func:`train`."""

    cfg: TrainConfig
    files: RunFiles
    model: GFL
    ddp: torch.nn.Module  # the model under DistributedDataParallel, or the model itself
    params: list
    optimizer: torch.optim.Optimizer
    distiller: object  # a bckd_train.distill.Distiller, or None
    method: str  # the distiller's, "none" without one
    teacher_sha256: object  # the teacher's weights_sha256, None without one
    train_set: data.CocoDetection
    val_set: data.CocoDetection
    device: torch.device
    amp: object  # None or "bf16"
    settings: dict  # runtime.settings: the device and the determinism switches, kept in checkpoints
    rank: int
    size: int
    workers: int
    progress: bool


@dataclasses.dataclass
class Position:
    """Where a run is: the epoch under way, the batches of it done, iterations in all,
    the last evaluation's metrics, and the epoch's batches in all (once it started)."""

    epoch: int = 0
    step: int = 0
    iteration: int = 0
    metrics: dict = dataclasses.field(default_factory=dict)
    batches: int = 0


def start_run(cfg, out, *, cache, device, amp, workers, progress, distiller):
    """Checks the arguments, joins the process group, seeds, and builds what a run of
    :func:`train` keeps fixed: the data, the detector (under DDP when a process group is
    up) and its optimiser."""
    device = runtime.resolve_device(device)
    runtime.autocast(device, amp)  # checks amp before any work
    check_imports()
    runtime.init_distributed(device)
    rank, size = runtime.world()
    if cfg.batch_size % size:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by the {size} processes")
    if cfg.max_iters is not None and cfg.max_iters < 1:
        raise UserError(f"--max-iters {cfg.max_iters}: must be at least 1")
    os.makedirs(out, exist_ok=True)
    runtime.seed_everything(cfg.seed)
    with runtime.local_first():  # one process per machine prepares a built-in data set
        train_set, val_set = datasets(cfg, cache)
    model = GFL(cfg.model, cache=cache).to_device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ddp = runtime.wrap_ddp(model, device)
    method = distiller.method if distiller is not None else "none"
    return Run(cfg=cfg, files=RunFiles(out), model=model, ddp=ddp, params=params, optimizer=optimizer,
               distiller=distiller, method=method,
               teacher_sha256=weights_sha256(distiller.teacher.state_dict()) if method != "none" else None,
               train_set=train_set, val_set=val_set, device=device, amp=amp,
               settings=runtime.settings(device, amp), rank=rank, size=size,
               workers=default_workers(device) if workers is None else workers, progress=progress)


def stopped(cfg, position):
    return cfg.max_iters is not None and position.iteration >= cfg.max_iters


def checkpoint_to_resume(run):
    """The checkpoint a resumed run continues from (None: the folder has none), after
    refusing one that contradicts the arguments or has nothing left to train. A finished
    one (or one at --max-iters) comes back only when its evaluation or the end's files
    are missing."""
    cfg, path = run.cfg, run.files.checkpoint
    if not os.path.exists(path):
        return None
    ckpt = read_checkpoint(path)
    check_resume(ckpt, path, cfg, method=run.method, teacher_sha256=run.teacher_sha256, amp=run.amp)
    differ = runtime.settings_differ(ckpt.get("runtime"), run.settings)
    if differ and run.rank == 0:
        print(f"--resume: {path} was written with other settings ("
              + ", ".join(f"{k} {ckpt['runtime'].get(k)!r} -> {run.settings.get(k)!r}" for k in differ)
              + "): training goes on, but will not end bitwise as an uninterrupted run", flush=True)
    ckpt.setdefault("metrics", {})
    epoch, it = ckpt["epoch"], ckpt["iteration"]
    pending = ckpt.get("eval_pending") is not None
    if epoch >= cfg.epochs:
        if (pending or ckpt["metrics"]) and not os.path.exists(run.files.metrics):
            return ckpt
        raise UserError(f"--resume: {path} has finished its schedule (epoch {epoch} of {cfg.epochs}, "
                        f"iteration {it}); nothing to continue. Use another --out, or leave out --resume to "
                        "train anew")
    if cfg.max_iters is not None and it >= cfg.max_iters and not pending:
        raise UserError(f"--resume: {path} is at iteration {it} already, --max-iters {cfg.max_iters}; "
                        "raise --max-iters or leave it out to finish the schedule")
    return ckpt


def restore(run, ckpt):
    """The model, optimiser and RNG states of ``ckpt`` (None: a fresh run) and its
    position; the log keeps what came before that position."""
    log = run.files.log
    if run.rank == 0:
        # a process killed while saving leaves its temporary file (the checkpoint itself is whole)
        for name in os.listdir(run.files.out):
            if name.startswith("checkpoint.pth.") and name.endswith(".tmp"):
                os.remove(os.path.join(run.files.out, name))
    if ckpt is None:
        if run.rank == 0 and os.path.exists(log):
            os.remove(log)
        return Position()
    run.model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    runtime.set_rng_state(ckpt["rng"])
    if run.rank == 0 and os.path.exists(log):
        # a killed run may have logged iterations past its last checkpoint, and the
        # evaluation the checkpoint still waits for (evaluate_pending runs it again)
        it, pending = ckpt["iteration"], ckpt.get("eval_pending") is not None
        with open(log) as f:
            lines = [(line, json.loads(line)) for line in f]
        kept = [line for line, r in lines if r["iteration"] < it or (r["iteration"] == it and not (pending and "AP" in r))]
        with open(log, "w") as f:
            f.writelines(kept)
    return Position(ckpt["epoch"], ckpt.get("step", 0), ckpt["iteration"], ckpt["metrics"])


def run_epoch(run, position, *, first):
    """Trains epoch ``position.epoch`` from its batch ``first`` until its end or the
    stop, advancing ``position``; logs each iteration and, on the first process, prints
    the epoch's speed."""
    cfg, epoch = run.cfg, position.epoch
    run.ddp.train()
    jitter = cfg.scale_jitter != (1.0, 1.0) or cfg.colour_jitter > 0
    batches = list(epoch_batches(len(run.train_set), cfg.batch_size, epoch, cfg.seed, run.rank, run.size,
                                 cfg.augment, jitter=jitter))
    loader = batch_loader(run.train_set, batches[first:], scale=cfg.scale_jitter, colour=cfg.colour_jitter,
                          workers=run.workers, pin_memory=run.device.type == "cuda")
    bar = tqdm(loader, total=len(batches), initial=first, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}",
               disable=not run.progress or run.rank != 0, dynamic_ncols=True)
    log = LossLog(run.files.log if run.rank == 0 else None, bar)
    position.step = first
    position.batches = len(batches)
    t_epoch = time.perf_counter()
    for batch, (images, masks, targets) in zip(batches[first:], bar):
        lr = learning_rate(cfg, position.iteration, epoch)
        t0 = time.perf_counter()
        start = log.start(run.device)
        losses, total = train_step(run, batch, images, masks, targets, lr=lr)
        position.iteration += 1
        position.step += 1
        # Logged values are the global batch's: the mean over processes, one all-reduce.
        values = runtime.reduce_mean(torch.stack([v.detach().float() for v in losses.values()]
                                                 + [total.detach().float()]))
        log.push(list(losses), values, dict(iteration=position.iteration, epoch=epoch, lr=lr,
                                            time=time.perf_counter() - t0), start)
        if stopped(cfg, position):
            break
    log.flush()
    if run.device.type == "cuda":
        torch.cuda.synchronize(run.device)
    seconds = time.perf_counter() - t_epoch
    iterations = position.step - first
    if run.progress and run.rank == 0 and iterations:
        print(f"{cfg.name} epoch {epoch + 1}: {iterations} iterations in {seconds:.1f} s, "
              f"{iterations / seconds:.2f} it/s", flush=True)


def train_step(run, batch, images, masks, targets, *, lr):
    """One SGD step at learning rate ``lr`` on a batch given by its keys and loaded
    tensors; returns the losses and their total."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    images, masks, targets = to_device(images, masks, targets, run.device)
    losses = step_losses(run.ddp, run.distiller, images, masks, targets, list(batch), cfg=run.cfg, amp=run.amp)
    total = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if run.cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.optimizer.step()
    return losses, total


def end_of_epoch(run, position):
    """After an epoch (or the stop inside one), by the first process: the checkpoint,
    then the evaluation when due and the checkpoint again with its metrics, so an
    evaluation that fails loses no training (``--resume`` runs it again); every process
    waits for it."""
    cfg, epoch = run.cfg, position.epoch
    done = position.step == position.batches
    due = ((done and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or (done and epoch + 1 == cfg.epochs)
           or stopped(cfg, position))
    if run.rank == 0:
        at = epoch + 1 if done else round(epoch + position.step / position.batches, 3)
        state = {"model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
                 "epoch": epoch + 1 if done else epoch, "step": 0 if done else position.step,
                 "iteration": position.iteration, "rng": runtime.rng_state(), "config": cfg.name,
                 "dataset": cfg.dataset, "classes": list(cfg.classes),
                 "seed": cfg.seed, "method": run.method, "teacher_sha256": run.teacher_sha256,
                 "amp": run.amp, "runtime": run.settings, "metrics": position.metrics,
                 "eval_pending": at if due else None}  # the epoch of the evaluation still to run
        save_checkpoint(state, run.files.checkpoint)
        if due:
            evaluate_and_log(run, position, at)
            save_checkpoint(dict(state, metrics=position.metrics, eval_pending=None), run.files.checkpoint)
    if run.size > 1:
        dist.barrier()


def evaluate_and_log(run, position, at):
    """Evaluates the model on val into ``position.metrics``, logged at epoch ``at``."""
    position.metrics = evaluate(run.model, run.val_set, device=run.device, amp=run.amp)
    with open(run.files.log, "a") as f:
        f.write(json.dumps({"epoch": at, "iteration": position.iteration, **position.metrics}) + "\n")
    if run.progress:
        print(f"{run.cfg.name} epoch {at}: " + ", ".join(f"{k} {v:.3f}" for k, v in position.metrics.items()))


def evaluate_pending(run, position, ckpt):
    """The evaluation a resumed checkpoint was saved before (it failed or was killed):
    run now, by the first process, and the checkpoint saved again with its metrics."""
    if run.rank == 0:
        evaluate_and_log(run, position, ckpt["eval_pending"])
        save_checkpoint(dict(ckpt, metrics=position.metrics, eval_pending=None), run.files.checkpoint)
    if run.size > 1:
        dist.barrier()


def write_end(files, metrics):
    """The end of a run: metrics.json and curves.png."""
    save_json(metrics, files.metrics)
    plot_curves(files.log, files.curves)


def plot_curves(log_path, png_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(log_path) as f:
        rows = [json.loads(line) for line in f]
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "AP" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for key in [k for k in steps[0] if k.startswith("loss")]:
        axes[0].plot([r["iteration"] for r in steps], [r[key] for r in steps], label=key, lw=0.8)
    axes[0].set_xlabel("iteration")
    axes[0].set_yscale("log")
    axes[0].legend()
    for key in ("AP", "AP50", "AP75"):
        axes[1].plot([r["epoch"] for r in evals], [r[key] for r in evals], marker="o", label=key)
    axes[1].set_xlabel("epoch")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
