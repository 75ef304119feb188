"""The processes of a run: torchrun's process group, each process's device and
autocast, the determinism settings a run records, seeds and the random state a
checkpoint keeps."""

import contextlib
import os
import platform
import random
import time

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError


def world():
    """(rank, world size): (0, 1) without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def under_torchrun():
    """True when torchrun (or a launcher like it) started this process: its rendezvous
    variables are set, whatever the number of processes."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def resolve_device(device="auto"):
    """The torch.device to run on: "auto" (CUDA when available, else the CPU), "cpu",
    "cuda" (GPU 0; under torchrun, GPU LOCAL_RANK modulo the GPUs this process sees, so
    a launcher that shows each process one GPU works too) or "cuda:N". Under torchrun
    with several processes a "cuda:N" other than that GPU is refused: every process
    would share one GPU."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise UserError(f"--device {device!r}: one of auto, cpu, cuda, cuda:N")
    try:
        out = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {device!r}: one of auto, cpu, cuda, cuda:N") from None
    if not torch.cuda.is_available():
        raise UserError(f"--device {device}: PyTorch sees no CUDA GPU here (torch.cuda.is_available() is False); "
                        "use --device cpu")
    count = torch.cuda.device_count()
    if under_torchrun():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        if 1 < count < local_size:
            raise UserError(f"--device {device}: {local_size} processes on this machine and {count} GPUs visible; "
                            f"NCCL needs a GPU per process (torchrun --nproc_per_node {count} at most)")
        mine = local % count
        if out.index is not None and out.index != mine and int(os.environ["WORLD_SIZE"]) > 1:
            raise UserError(f"--device {device}: under torchrun each process takes GPU LOCAL_RANK modulo the visible "
                            f"GPUs (process LOCAL_RANK {local}: GPU {mine} of {count}); pass --device cuda")
        out = torch.device("cuda", mine if out.index is None else out.index)
    elif out.index is None:
        out = torch.device("cuda", 0)
    if out.index >= count:
        raise UserError(f"--device {device}: GPU {out.index} asked for, {count} visible")
    return out


def bind_device(device):
    """Makes a CUDA device this process's current one (a no-op for the CPU): the
    streams, events and kernels that name no device then run on it. Every CUDA run
    does this, with or without torchrun."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)


def process_group_backend(device):
    """NCCL for GPUs, gloo for the CPU: what can all-reduce tensors on that device."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_distributed(device):
    """Makes ``device`` the current one (:func:`bind_device`) and, under torchrun (one
    process or several), joins its process group with the backend that can all-reduce
    on ``device``, bound to that GPU (``device_id``: NCCL starts at once)."""
    device = torch.device(device)
    bind_device(device)
    if under_torchrun() and not dist.is_initialized():
        dist.init_process_group(process_group_backend(device), device_id=device if device.type == "cuda" else None)


def finish_distributed():
    """Leaves the process group, when one was joined (the end of a torchrun command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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


# ----------------------------------------------------------- determinism ----


def _determinism_flags():
    return (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
            torch.backends.cuda.matmul.allow_tf32, torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled())


def _set_determinism_flags(flags):
    cudnn_det, benchmark, tf32_conv, tf32_matmul, algorithms, warn_only = flags
    torch.backends.cudnn.deterministic = cudnn_det
    torch.backends.cudnn.benchmark = benchmark
    torch.backends.cudnn.allow_tf32 = tf32_conv
    torch.backends.cuda.matmul.allow_tf32 = tf32_matmul
    torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)


@contextlib.contextmanager
def determinism(deterministic):
    """``--deterministic`` for the block, then the settings as they were: cuDNN's
    deterministic algorithms without benchmark autotuning, float32 convolutions and
    matrix products without TF32, and torch's deterministic implementations
    (``use_deterministic_algorithms``, warn-only: an op that has none warns once and
    runs as it is). cuBLAS's workspace is fixed (``CUBLAS_WORKSPACE_CONFIG``, when not
    set) before a GPU is used. Changes nothing on the CPU's results, which are
    repeatable at a fixed thread count anyway. ``deterministic`` False: nothing."""
    if not deterministic:
        yield
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    saved = _determinism_flags()
    _set_determinism_flags((True, False, False, False, True, True))
    try:
        yield
    finally:
        _set_determinism_flags(saved)


def timed(fn, device):
    """Seconds of one call of ``fn``, with the work queued on a GPU ``device`` waited for
    before and after (its kernels run asynchronously)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def cpu_name():
    """The CPU's model name (/proc/cpuinfo), for records and benchmark tables."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def settings(device, amp=None):
    """What decides whether a run repeats bitwise, as checkpoints and run records keep
    it: the device and its name, the software, the thread count, the process group,
    autocast and the determinism switches (cuDNN's, TF32's, torch's)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    grouped = dist.is_available() and dist.is_initialized()
    out = {"device": device.type,
           "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
           "torch": torch.__version__, "threads": torch.get_num_threads(), "amp": amp,
           "world_size": world()[1], "process_group": dist.get_backend() if grouped else None,
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if cuda:
        out.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   cudnn_deterministic=torch.backends.cudnn.deterministic,
                   cudnn_benchmark=torch.backends.cudnn.benchmark, tf32_conv=torch.backends.cudnn.allow_tf32,
                   tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return out


def settings_differ(recorded, now):
    """The keys of :func:`settings` whose values differ between a checkpoint's record
    and this run (empty: a resumed run can end bitwise as an uninterrupted one)."""
    if not recorded:
        return []
    return [k for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]


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
