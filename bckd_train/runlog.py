"""A run's log.jsonl: its per-iteration records, written as the run goes, and its curves, drawn at the end."""

import json

import torch


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


def plot_curves(log_path, png_path):
    """curves.png from log.jsonl: the losses per iteration, AP, AP50 and AP75 per evaluation."""
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
