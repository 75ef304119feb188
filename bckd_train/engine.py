"""Training and COCO evaluation of a GFL detector; resumable, torchrun-aware."""

import contextlib
import dataclasses
import io
import json
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import data, gfl
from .config import TrainConfig
from .model import GFL

# ------------------------------------------------------------ processes ----


def world():
    """(rank, world size): (0, 1) without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed():
    """Joins the torchrun process group (gloo on CPU, nccl on GPU) when launched by torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def reduce_mean(t):
    """Mean over processes of a tensor (stays a tensor: no host synchronisation)."""
    rank, size = world()
    if size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / size


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


# ----------------------------------------------------------------- data ----


def datasets(cfg: TrainConfig, cache=None):
    folder = data.prepare(cache, names=(cfg.dataset,))[cfg.dataset]
    train = data.CocoDetection(folder, "train")
    val = data.CocoDetection(folder, "val")
    if cfg.max_train_images:
        train.images = train.images[: cfg.max_train_images]
    if cfg.max_val_images:
        val.images = val.images[: cfg.max_val_images]
    return train, val


AUGMENTS = ("none", "hflip", "dihedral")


def epoch_batches(n, batch_size, epoch, seed, rank, size, augment="hflip", jitter=False):
    """This process's share of each global batch of one epoch, as (index, transform)
    pairs (transform: see :func:`data.augment`), or with ``jitter`` (index, transform,
    jitter seed) triples (see :func:`data.jitter`).

    Order and transforms depend on (seed, epoch) only: not on the number of
    processes, nor on where an interrupted run resumed.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; one of {', '.join(AUGMENTS)}")
    g = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    transforms = (torch.rand(n, generator=g) < 0.5).long()
    if augment == "dihedral":
        transforms += 2 * torch.randint(0, 4, (n,), generator=g)
    elif augment == "none":
        transforms.zero_()
    keys = [(t,) for t in transforms.tolist()]
    if jitter:
        keys = [k + (s,) for k, s in zip(keys, torch.randint(0, 2**31 - 1, (n,), generator=g).tolist())]
    per_rank = batch_size // size
    for start in range(0, n - batch_size + 1, batch_size):
        batch = [(i, *keys[i]) for i in order[start : start + batch_size]]
        yield batch[rank * per_rank : (rank + 1) * per_rank]


def load_batch(dataset, batch, *, scale=(1.0, 1.0), colour=0.0):
    """Images, masks and targets of (index, transform[, jitter seed]) keys."""
    items = []
    for i, t, *jitter in batch:
        image, target = data.augment(*dataset[i], t)
        if jitter:
            image, target = data.jitter(image, target, jitter[0], scale=scale, colour=colour)
        items.append((image, target))
    return data.collate(items)


# ------------------------------------------------------------- schedule ----


def learning_rate(cfg: TrainConfig, it, epoch):
    lr = cfg.lr * (0.1 ** sum(epoch >= s for s in cfg.lr_steps))
    if it < cfg.warmup_iters:
        k = it / cfg.warmup_iters
        lr *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * k
    return lr


# ------------------------------------------------------------ evaluation ----


@torch.no_grad()
def evaluate(model, dataset, *, batch_size=8, device="cpu"):
    """COCO metrics of the model on a dataset: AP, AP50, AP75, AP_S, AP_M, AP_L."""
    model.eval()
    results = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images, _, targets = data.collate(items)
        cls, reg = model(images.to(device))
        dets = gfl.detect(cls, reg, strides=model.cfg.strides, reg_max=model.cfg.reg_max)
        for det, t in zip(dets, targets):
            for box, score, label in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist()):
                x1, y1, x2, y2 = box
                results.append({"image_id": t["image_id"], "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return coco_metrics(dataset, results)


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


def load_checkpoint(path, cache=None):
    """(config, model in eval mode) of a training checkpoint."""
    from .config import get_config

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    cfg = get_config(ckpt["config"], seed=ckpt.get("seed", 0))
    model = GFL(dataclasses.replace(cfg.model, pretrained=False), cache=cache)
    model.load_state_dict(ckpt["model"])
    return cfg, model.eval()


@torch.no_grad()
def show(model, cfg, image_path, out_path, *, score=0.3, cache=None):
    """Draws the detections above `score` on the image; returns how many."""
    from PIL import Image, ImageDraw

    folder = data.prepare(cache, names=(cfg.dataset,))[cfg.dataset]
    with open(os.path.join(folder, "val.json")) as f:
        names = [c["name"] for c in json.load(f)["categories"]]
    image = Image.open(image_path).convert("RGB")
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    images, _, _ = data.collate([(x, None)])
    cls, reg = model(images)
    det = gfl.detect(cls, reg, strides=cfg.model.strides, reg_max=cfg.model.reg_max)[0]
    draw = ImageDraw.Draw(image)
    keep = det["scores"] >= score
    for box, s, label in zip(det["boxes"][keep].tolist(), det["scores"][keep].tolist(), det["labels"][keep].tolist()):
        draw.rectangle(box, outline=(255, 40, 40), width=2)
        draw.text((box[0] + 2, box[1] + 1), f"{names[label]} {s:.2f}", fill=(255, 255, 0))
    image.save(out_path)
    return int(keep.sum())


# -------------------------------------------------------------- training ----


def train(cfg: TrainConfig, out, *, resume=False, cache=None, device="cpu", progress=True, distiller=None):
    """Trains cfg into folder out; returns the last epoch's metrics.

    Writes out/log.jsonl (per-iteration losses, per-epoch metrics),
    out/checkpoint.pth (every epoch: weights, optimiser, RNG states),
    out/metrics.json and out/curves.png at the end. With a
    :class:`bckd_train.distill.Distiller`, its losses join the ground-truth ones
    (the teacher is not among the optimised parameters).
    """
    init_distributed()
    rank, size = world()
    if cfg.batch_size % size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {size} processes")
    os.makedirs(out, exist_ok=True)
    seed_everything(cfg.seed)
    train_set, val_set = datasets(cfg, cache)
    model = GFL(cfg.model, cache=cache).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ddp = torch.nn.parallel.DistributedDataParallel(model) if size > 1 else model
    ckpt_path = os.path.join(out, "checkpoint.pth")
    log_path = os.path.join(out, "log.jsonl")
    start_epoch, it = 0, 0
    if resume and os.path.exists(ckpt_path):
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, it = ckpt["epoch"], ckpt["iteration"]
        set_rng_state(ckpt["rng"])
        if rank == 0 and os.path.exists(log_path):
            # a killed run may have logged iterations past its last checkpoint
            with open(log_path) as f:
                kept = [line for line in f if json.loads(line)["iteration"] <= it]
            with open(log_path, "w") as f:
                f.writelines(kept)
    elif rank == 0 and os.path.exists(log_path):
        os.remove(log_path)
    iters_per_epoch = len(train_set) // cfg.batch_size
    metrics = {}
    for epoch in range(start_epoch, cfg.epochs):
        ddp.train()
        batches = epoch_batches(len(train_set), cfg.batch_size, epoch, cfg.seed, rank, size, cfg.augment,
                                jitter=cfg.scale_jitter != (1.0, 1.0) or cfg.colour_jitter > 0)
        bar = tqdm(batches,
                   total=iters_per_epoch, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress or rank != 0, dynamic_ncols=True)
        for batch in bar:
            if cfg.max_iters is not None and it >= cfg.max_iters:
                break
            images, masks, targets = load_batch(train_set, batch, scale=cfg.scale_jitter, colour=cfg.colour_jitter)
            lr = learning_rate(cfg, it, epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            t0 = time.perf_counter()
            images = images.to(device)
            cls, reg = ddp(images)
            losses, extras = gfl.gfl_loss(cls, reg, targets, strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                                          num_classes=cfg.model.num_classes, avg_factor_fn=reduce_mean)
            if distiller is not None:
                keys = list(batch)
                losses.update(distiller(images, masks.to(device), cls, reg, extras, strides=cfg.model.strides,
                                        reg_max=cfg.model.reg_max, keys=keys))
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            it += 1
            # Logged values are the global batch's: the mean over processes.
            record = {k: float(reduce_mean(v.detach())) for k, v in losses.items()}
            record.update(iteration=it, epoch=epoch, lr=lr, loss=float(reduce_mean(total.detach())),
                          time=time.perf_counter() - t0)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.3f}", qfl=f"{record['loss_qfl']:.3f}", lr=f"{lr:.4f}")
        if rank == 0 and ((cfg.eval_every and (epoch + 1) % cfg.eval_every == 0) or epoch + 1 == cfg.epochs):
            metrics = evaluate(model, val_set, device=device)
            with open(log_path, "a") as f:
                f.write(json.dumps({"epoch": epoch + 1, "iteration": it, **metrics}) + "\n")
            if progress:
                print(f"{cfg.name} epoch {epoch + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        if rank == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                        "iteration": it, "rng": rng_state(), "config": cfg.name, "seed": cfg.seed,
                        "method": distiller.method if distiller is not None else "none"}, ckpt_path)
        if size > 1:
            dist.barrier()
    if rank == 0:
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        plot_curves(log_path, os.path.join(out, "curves.png"))
    return metrics


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
