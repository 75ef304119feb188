"""Checkpoints: files saved atomically (a checkpoint, metrics.json, the teacher's maps),
a checkpoint read back, and the checks before a run resumes one."""

import dataclasses
import hashlib
import json
import os

import torch

from . import data
from .config import get_config
from .errors import UserError
from .model import GFL


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
