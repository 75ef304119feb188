"""The training loop of a GFL detector, with or without a teacher; resumable, torchrun-aware."""

import dataclasses
import json
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from . import checkpoints, data, evaluation, gfl, loading, runlog, runtime
from .config import TrainConfig
from .errors import UserError
from .model import GFL


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
    cfg's data set's classes (:func:`loading.with_data`), which the checkpoint keeps.
    With a :class:`bckd_train.distill.Distiller`, its losses join the ground-truth ones
    (the teacher is not among the optimised parameters). ``deterministic``: the run
    under :func:`runtime.determinism` (cuDNN deterministic, no TF32), the settings as
    they were after it. The checkpoint records the device and these settings
    (:func:`runtime.settings`); a resumed run on other ones says that it will not end
    bitwise as an uninterrupted one.
    """
    if not cfg.classes:
        cfg = loading.with_data(cfg, cache=cache)
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
    evaluation.check_imports()
    runtime.init_distributed(device)
    rank, size = runtime.world()
    if cfg.batch_size % size:
        raise UserError(f"batch_size {cfg.batch_size} must be divisible by the {size} processes")
    if cfg.max_iters is not None and cfg.max_iters < 1:
        raise UserError(f"--max-iters {cfg.max_iters}: must be at least 1")
    os.makedirs(out, exist_ok=True)
    runtime.seed_everything(cfg.seed)
    with runtime.local_first():  # one process per machine prepares a built-in data set
        train_set, val_set = loading.datasets(cfg, cache)
    model = GFL(cfg.model, cache=cache).to_device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ddp = runtime.wrap_ddp(model, device)
    method = distiller.method if distiller is not None else "none"
    distilled = distiller is not None and distiller.uses_teacher
    return Run(cfg=cfg, files=RunFiles(out), model=model, ddp=ddp, params=params, optimizer=optimizer,
               distiller=distiller, method=method,
               teacher_sha256=checkpoints.weights_sha256(distiller.teacher.state_dict()) if distilled else None,
               train_set=train_set, val_set=val_set, device=device, amp=amp,
               settings=runtime.settings(device, amp), rank=rank, size=size,
               workers=loading.default_workers(device) if workers is None else workers, progress=progress)


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
    ckpt = checkpoints.read_checkpoint(path)
    checkpoints.check_resume(ckpt, path, cfg, method=run.method, teacher_sha256=run.teacher_sha256, amp=run.amp)
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
    batches = list(loading.epoch_batches(len(run.train_set), cfg.batch_size, epoch, cfg.seed, run.rank, run.size,
                                 cfg.augment, jitter=jitter))
    loader = loading.batch_loader(run.train_set, batches[first:], scale=cfg.scale_jitter, colour=cfg.colour_jitter,
                          workers=run.workers, pin_memory=run.device.type == "cuda")
    bar = tqdm(loader, total=len(batches), initial=first, desc=f"{cfg.name} epoch {epoch + 1}/{cfg.epochs}",
               disable=not run.progress or run.rank != 0, dynamic_ncols=True)
    log = runlog.LossLog(run.files.log if run.rank == 0 else None, bar)
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
    images, masks, targets = loading.to_device(images, masks, targets, run.device)
    losses = step_losses(run.ddp, run.distiller, images, masks, targets, list(batch), cfg=run.cfg, amp=run.amp)
    total = sum(losses.values())
    run.optimizer.zero_grad(set_to_none=True)
    total.backward()
    if run.cfg.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.optimizer.step()
    return losses, total


def learning_rate(cfg: TrainConfig, it, epoch):
    """The step schedule (×0.1 after each of cfg.lr_steps) after a linear warm-up."""
    lr = cfg.lr * (0.1 ** sum(epoch >= s for s in cfg.lr_steps))
    if it < cfg.warmup_iters:
        k = it / cfg.warmup_iters
        lr *= cfg.warmup_ratio + (1 - cfg.warmup_ratio) * k
    return lr


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
    if distiller is not None and distiller.uses_teacher:
        # float32 under any --amp, as the memo and a --teacher-maps file hold them: one teacher
        teacher = distiller.teacher_maps(images, keys)
    losses, extras = gfl.gfl_loss([c.float() for c in cls], [r.float() for r in reg], targets,
                                  strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                                  num_classes=cfg.model.num_classes, avg_factor_fn=runtime.reduce_mean)
    if distiller is not None:
        losses.update(distiller(images, masks, cls, reg, extras, strides=cfg.model.strides,
                                reg_max=cfg.model.reg_max, weights=cfg.bckd, keys=keys, teacher=teacher))
    return losses


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
        checkpoints.save_checkpoint(state, run.files.checkpoint)
        if due:
            evaluate_and_log(run, position, at)
            checkpoints.save_checkpoint(dict(state, metrics=position.metrics, eval_pending=None), run.files.checkpoint)
    if run.size > 1:
        dist.barrier()


def evaluate_and_log(run, position, at):
    """Evaluates the model on val into ``position.metrics``, logged at epoch ``at``."""
    position.metrics = evaluation.evaluate(run.model, run.val_set, device=run.device, amp=run.amp)
    with open(run.files.log, "a") as f:
        f.write(json.dumps({"epoch": at, "iteration": position.iteration, **position.metrics}) + "\n")
    if run.progress:
        print(f"{run.cfg.name} epoch {at}: " + ", ".join(f"{k} {v:.3f}" for k, v in position.metrics.items()))


def evaluate_pending(run, position, ckpt):
    """The evaluation a resumed checkpoint was saved before (it failed or was killed):
    run now, by the first process, and the checkpoint saved again with its metrics."""
    if run.rank == 0:
        evaluate_and_log(run, position, ckpt["eval_pending"])
        checkpoints.save_checkpoint(dict(ckpt, metrics=position.metrics, eval_pending=None), run.files.checkpoint)
    if run.size > 1:
        dist.barrier()


def write_end(files, metrics):
    """The end of a run: metrics.json and curves.png."""
    checkpoints.save_json(metrics, files.metrics)
    runlog.plot_curves(files.log, files.curves)
