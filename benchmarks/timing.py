"""What the benchmarks share: the timer, the peak memory of a call, and the
environment a run records next to its numbers. Imported by the scripts beside
it (``python benchmarks/<script>.py`` puts this folder on sys.path)."""

import json
import os
import statistics
import subprocess
import tempfile
import time

import torch

from bckd_train.runtime import cpu_name

# Kineto logs every profiler_start/stop of the CPU memory trace at its USDT level (5),
# above ERROR (4): only 6 keeps the trace quiet (read when a profiler starts).
os.environ.setdefault("KINETO_LOG_LEVEL", "6")


class Timer:
    """Median milliseconds of a call: CUDA events with the L2 cache flushed before
    each call, as triton.testing.do_bench (warm-up and repetitions chosen by time);
    perf_counter on the CPU."""

    L2_FLUSH_BYTES = 256 * 2**20

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.flush = torch.empty(self.L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device) if self.cuda else None

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def measure(self, fn, setup=None, warmup=2, repeat=7, warmup_ms=25.0, rep_ms=100.0):
        """Median, min and max milliseconds of fn() (setup() runs untimed before each call).

        On the GPU warmup / repeat are lower bounds: the counts grow to fill
        warmup_ms / rep_ms, estimated from the first calls."""
        if not self.cuda:
            times = []
            for i in range(warmup + repeat):
                if setup is not None:
                    setup()
                t0 = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t0) * 1e3
                if i >= warmup:
                    times.append(ms)
            return statistics.median(times), min(times), max(times)
        first = self._events(fn, setup, 5)
        estimate = max(statistics.median(first), 1e-3)
        self._events(fn, setup, max(warmup, int(warmup_ms / estimate)))
        times = self._events(fn, setup, max(repeat, int(rep_ms / estimate)))
        return statistics.median(times), min(times), max(times)

    def _events(self, fn, setup, count):
        pairs = []
        for _ in range(count):
            if setup is not None:
                setup()
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in pairs]


def peak_extra_bytes(fn, device):
    """Peak allocation above what was allocated before fn() ran."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        path = f.name
    try:
        prof.export_chrome_trace(path)
        with open(path) as f:
            events = json.load(f)["traceEvents"]
    finally:
        os.remove(path)
    mem = sorted(
        (e["ts"], e["args"]["Total Allocated"], e["args"]["Bytes"])
        for e in events
        if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type", 0) == 0
    )
    if not mem:
        return 0
    base = mem[0][1] - mem[0][2]
    return max(total for _, total, _ in mem) - base


def environment(device):
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_name()
    return {
        "device": device.type,
        "device_name": name,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "triton": triton_version,
        "commit": commit,
    }
