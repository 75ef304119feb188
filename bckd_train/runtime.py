"""The processes of a run: torchrun's process group, each process's device and
autocast, seeds and the random state a checkpoint keeps."""

import contextlib
import os
import random

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


def world():
    """(rank, world size): (0, 1) without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_device(device="auto"):
    """The torch.device to run on: "auto" (CUDA when available, else the CPU), "cpu",
    "cuda" (under torchrun, this process's LOCAL_RANK GPU) or "cuda:N"."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise UserError(f"--device {device!r}: one of auto, cpu, cuda")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                        "use --device cpu")
    out = torch.device(name)
    if out.index is None:
        out = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if out.index >= torch.cuda.device_count():
        raise UserError(f"--device {device}: GPU {out.index} asked for, {torch.cuda.device_count()} visible "
                        "(one process per GPU under torchrun)")
    return out


def process_group_backend(device):
    """NCCL for GPUs, gloo for the CPU: what can all-reduce tensors on that device."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device):
    """Joins the torchrun process group (when launched by torchrun with several
    processes), with the backend that can all-reduce on ``device``."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = torch.device(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(process_group_backend(device))


@contextlib.contextmanager
def local_first():
    """Runs the block on each machine's first process (LOCAL_RANK 0) while that
    machine's other processes wait at a barrier, then on those: what the first one
    prepares (a data set, a file of teacher maps) the others find ready. If the first
    one raises, the others are let go too (and meet the same error, not a hang).
    Without a process group of several processes, just the block."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        yield
        return
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        dist.barrier()
    try:
        yield
    finally:
        if first:
            dist.barrier()


def wrap_ddp(model, device):
    """The model under DistributedDataParallel when a process group is up (its GPU as
    device_ids on CUDA, none on the CPU), else the model itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    device = torch.device(device)
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def reduce_mean(t):
    """Mean over processes of a tensor (stays a tensor: no host synchronisation)."""
    rank, size = world()
    if size == 1:
        return t
    t = t.clone()
    dist.all_reduce(t)
    return t / size


AMP = {None: None, "none": None, "bf16": torch.bfloat16}


def autocast(device, amp):
    """torch.autocast to ``amp`` ("bf16") on the device's type, or a context that does
    nothing (amp None or "none"): the float32 path runs exactly as without it."""
    if amp not in AMP:
        raise UserError(f"--amp {amp!r}: one of none, bf16")
    if AMP[amp] is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP[amp])


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
