"""Fused BCKD losses against reference PyTorch: time, bytes, bandwidth, memory.

    python benchmarks/bench_losses.py            # full run on the default device
    python benchmarks/bench_losses.py --quick    # one COCO-like batch, about a minute on 2 cores
    python benchmarks/bench_losses.py --layout channels_last --dtype bfloat16

Layouts of the head maps (--layout, comma-separated; default nchw,channels_last,
and nchw alone with --quick): nchw = contiguous [B, C, H, W], channels_last =
[B, C, H, W] with channels contiguous (what bckd_train's detector produces),
rows = [N, C] rows. Paired GIoU always takes [N, 4] boxes ("boxes"). Dtypes (--dtype): float32 and bfloat16 on a GPU, float32
on the CPU by default.

Providers, side by side in one run:
    reference      bckd_kernels.reference, eager PyTorch autograd
    torch_compile  the same reference under torch.compile (inductor)
    extension      the fused C++ (CPU) or CUDA ops of the extension (torch.ops.bckd.*)
    triton         the fused Triton ops (on a GPU)

Every loss is called as the training loop calls it: head maps [B, C, H, W]
read in place, a valid mask, a tensor avg_factor. Modes: forward (with
autograd recording), backward (alone, on a retained graph) and forward+backward.
GPU times are triton.testing.do_bench's way: CUDA events around each call,
the L2 cache flushed (a 256 MB buffer overwritten) before each, about 100 ms
of calls after 25 ms of warm-up, the median. CPU times: perf_counter, median.

Bytes are those the loss must move (e = bytes per input element, L = locations):
    bcdl   fwd 2·L·C·e + 3·L·4        bwd 3·L·C·e + 2·L·4
    giou   fwd 8·L·e + L·4            bwd 12·L·e + L·4    (pred gets a gradient, target not)
    ildl   fwd 2·L·68·e + 2·L·4       bwd 3·L·68·e + 2·L·4
    bckd   bcdl + ildl
(the 4-byte terms: per-location loss, mask / ω and upstream gradient). The
bandwidth floor is a plain tensor copy moving the same number of bytes,
timed in the same run; pct_bw = 100 · floor / time. On a GPU the run ends
with the GPU targets, as ratios measured in this run: CUDA and Triton at
least 1.5x torch.compile(reference), BCDL at least 70% of copy bandwidth. On
the CPU it ends with the CPU targets: the extension at least 1.5x
torch.compile in every layout, and within 1.15x of its NCHW time. Peak extra memory is the allocator's peak above what
was allocated before the call (inputs included there), from the CUDA caching
allocator on GPU and from the profiler's CPU allocation trace on CPU.
"""

import argparse
import csv
import datetime
import importlib.util
import logging
import os

import torch
from timing import Timer, environment, peak_extra_bytes

from bckd_kernels import functional as F

# torch.compile's C++ build on CPU imports cpp_extension, which warns that it found a
# CUDA toolkit but no GPU: irrelevant to a run that has no GPU to use.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)

LOCATIONS_PER_IMAGE = 22400  # FPN P3-P7 of one 1333x800 image
NUM_CLASSES = 80
REG_CHANNELS = 68
MODES = ("forward", "backward", "forward+backward")


# ----------------------------------------------------------------- inputs ----


LAYOUTS = ("nchw", "channels_last", "rows")


def in_layout(x, layout):
    """A [B, C, H, W] map as the given layout: contiguous, channels_last, or [B·H·W, C] rows."""
    if layout == "nchw":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).contiguous()


def make_inputs(loss, n, device, dtype, layout="nchw", seed=0):
    """Tensors of one call for n locations, as [B, C, H, W] maps (B = n / 22400) in `layout`."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    b = max(1, n // LOCATIONS_PER_IMAGE)
    hw = n // b
    w = 140 if hw % 140 == 0 else hw
    h = hw // w

    def rand(*shape):
        return (torch.randn(shape, generator=g) * 2).to(device=device, dtype=dtype)

    def per_location(v):
        return v.reshape(-1) if layout == "rows" else v

    x = {"avg_factor": torch.tensor(float(max(b * 20, 1)), device=device)}
    x["valid"] = per_location(torch.ones(b, h, w, device=device))
    if loss in ("bcdl", "bckd"):
        x["cls_s"] = in_layout(rand(b, NUM_CLASSES, h, w), layout)
        x["cls_t"] = in_layout(rand(b, NUM_CLASSES, h, w), layout)
    if loss in ("ildl", "bckd"):
        x["reg_s"] = in_layout(rand(b, REG_CHANNELS, h, w), layout)
        x["reg_t"] = in_layout(rand(b, REG_CHANNELS, h, w), layout)
        x["omega"] = per_location(torch.rand(b, h, w, generator=g).to(device))
    if loss == "giou":
        xy = torch.rand(n, 2, generator=g) * 500
        wh = torch.rand(n, 2, generator=g) * 100 + 1
        x["pred"] = torch.cat([xy, xy + wh], 1).to(device=device, dtype=dtype)
        x["target"] = (x["pred"].float() + torch.randn(n, 4, generator=g).to(device) * 5).to(dtype)
        x["valid"] = torch.ones(n, device=device)
    return x


def grad_leaves(loss):
    return {"bcdl": ["cls_s"], "giou": ["pred"], "ildl": ["reg_s"], "bckd": ["cls_s", "reg_s"]}[loss]


def loss_fn(loss, backend):
    """The scalar loss as the training loop computes it, on one backend."""
    if loss == "bcdl":
        return lambda x: F.bcdl_loss(
            x["cls_s"], x["cls_t"], x["valid"], avg_factor=x["avg_factor"], backend=backend
        )
    if loss == "giou":
        return lambda x: F.giou_loss(x["pred"], x["target"], x["valid"], avg_factor=x["avg_factor"], backend=backend)
    if loss == "ildl":
        return lambda x: F.ildl_loss(x["reg_s"], x["reg_t"], x["omega"], avg_factor=x["avg_factor"], backend=backend)
    if loss == "bckd":

        def both(x):
            out = F.bckd_loss(
                x["cls_s"], x["cls_t"], x["reg_s"], x["reg_t"], x["valid"], avg_factor=x["avg_factor"], backend=backend
            )
            return out["loss_bcdl"] + out["loss_ildl"]

        return both
    raise ValueError(loss)


def bytes_moved(loss, mode, n, elem):
    """Bytes the loss must move (see the module docstring)."""
    fwd = {"bcdl": 2 * n * NUM_CLASSES * elem + 3 * n * 4, "giou": 8 * n * elem + n * 4,
           "ildl": 2 * n * REG_CHANNELS * elem + 2 * n * 4}
    bwd = {"bcdl": 3 * n * NUM_CLASSES * elem + 2 * n * 4, "giou": 12 * n * elem + n * 4,
           "ildl": 3 * n * REG_CHANNELS * elem + 2 * n * 4}
    fwd["bckd"], bwd["bckd"] = fwd["bcdl"] + fwd["ildl"], bwd["bcdl"] + bwd["ildl"]
    return {"forward": fwd[loss], "backward": bwd[loss], "forward+backward": fwd[loss] + bwd[loss]}[mode]


# --------------------------------------------------------------- measuring ----


def copy_floor_ms(timer, nbytes, device):
    """Time to stream nbytes through a plain copy (reads nbytes/2, writes nbytes/2)."""
    n = max(1, nbytes // 8)
    src = torch.empty(n, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return timer.measure(lambda: dst.copy_(src), warmup=3, repeat=9)[0]


def run_case(timer, loss, fn, x, mode, device):
    """(median, min, max) ms and peak extra bytes of one mode."""
    leaves = grad_leaves(loss)

    def fresh():
        for k in leaves:
            x[k] = x[k].detach().requires_grad_()

    def fwd():
        return fn(x)

    def fwd_bwd():
        fn(x).backward()

    if mode == "forward":
        fresh()
        return timer.measure(fwd), peak_extra_bytes(fwd, device)
    if mode == "forward+backward":
        fresh()
        result = timer.measure(fwd_bwd, setup=fresh)
        fresh()
        return result, peak_extra_bytes(fwd_bwd, device)
    fresh()
    out = fn(x)

    def bwd():
        out.backward(retain_graph=True)

    def clear():
        for k in leaves:
            x[k].grad = None

    result = timer.measure(bwd, setup=clear)
    clear()
    return result, peak_extra_bytes(bwd, device)


# ---------------------------------------------------------------- running ----


def providers_for(device):
    names = ["reference", "torch_compile", "extension"]
    if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
        names.append("triton")
    return names


def make_fn(loss, provider, device):
    if provider == "reference":
        return loss_fn(loss, "reference")
    if provider == "torch_compile":
        return torch.compile(loss_fn(loss, "reference"), dynamic=False)
    return loss_fn(loss, device.type if provider == "extension" else provider)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None,
                        help="comma-separated float32, float16, bfloat16 (default: float32,bfloat16 on a GPU, "
                             "float32 on the CPU)")
    parser.add_argument("--layout", default=None,
                        help=f"comma-separated head-map layouts from {LAYOUTS} (default: nchw,channels_last; nchw with --quick)")
    parser.add_argument("--quick", action="store_true", help="one COCO-like batch (4 images) and a short sweep")
    parser.add_argument("--losses", default="bcdl,giou,ildl,bckd")
    parser.add_argument("--csv", default=None, help="append the rows to this CSV")
    parser.add_argument("--plot", default=None, help="draw time vs N (log-log) from the CSV into this PNG")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtypes = (args.dtype or ("float32,bfloat16" if device.type == "cuda" else "float32")).split(",")
    layouts = (args.layout or ("nchw" if args.quick else "nchw,channels_last")).split(",")
    for name in dtypes:
        if name not in ("float32", "float16", "bfloat16"):
            parser.error(f"--dtype: {name!r} is not float32, float16 or bfloat16")
    for name in layouts:
        if name not in LAYOUTS:
            parser.error(f"--layout: {name!r} is not one of {LAYOUTS}")
    env = environment(device)
    timer = Timer(device)
    losses = args.losses.split(",")
    providers = providers_for(device)
    batches = [4] if args.quick else [1, 4, 16]
    sweep = [1400, 5600, 22400] if args.quick else [1400, 5600, 22400, 89600, 358400]
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    print(
        f"bckd loss benchmark: {env['device_name']} ({env['device']}, {env['threads']} threads), "
        f"torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, commit {env['commit']}, "
        f"dtypes {','.join(dtypes)}, layouts {','.join(layouts)}"
    )
    rows = []
    cases = [(loss, b * LOCATIONS_PER_IMAGE, MODES, "coco") for loss in losses for b in batches]
    cases += [("bcdl", n, ("forward+backward",), "sweep") for n in sweep if n not in [b * LOCATIONS_PER_IMAGE for b in batches]]
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        elem = torch.empty((), dtype=dtype).element_size()
        for loss, n, modes, kind in cases:
            # Paired GIoU has one layout, [N, 4] boxes.
            for layout in ["boxes"] if loss == "giou" else layouts:
                x = make_inputs(loss, n, device, dtype, "nchw" if loss == "giou" else layout)
                fns = {provider: make_fn(loss, provider, device) for provider in providers}
                for mode in modes:
                    nbytes = bytes_moved(loss, mode, n, elem)
                    floor = copy_floor_ms(timer, nbytes, device)
                    for provider, fn in fns.items():
                        (med, lo, hi), peak = run_case(timer, loss, fn, x, mode, device)
                        rows.append(
                            dict(env, timestamp=stamp, kind=kind, loss=loss, provider=provider, mode=mode,
                                 dtype=dtype_name, layout=layout, locations=n, median_ms=med, min_ms=lo, max_ms=hi,
                                 bytes=nbytes, gbps=nbytes / med / 1e6, floor_ms=floor, x_floor=med / floor,
                                 pct_bw=100 * floor / med, peak_extra_bytes=peak)
                        )
                        print(f"  {loss:5s} {dtype_name:8s} {layout:13s} N={n:7d} {mode:16s} {provider:13s} "
                              f"{med:9.3f} ms", flush=True)
    print()
    print(format_table(rows))
    print()
    print("\n".join(targets(rows) if device.type == "cuda" else cpu_targets(rows)))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"\nappended {len(rows)} rows to {args.csv}")
    if args.plot:
        plot(args.csv, args.plot, rows)
        print(f"plot: {args.plot}")
    return rows


def format_table(rows):
    """Markdown table; speed-ups are other provider's time / this provider's time."""
    by_case = {}
    for r in rows:
        by_case.setdefault((r["loss"], r["dtype"], r["layout"], r["locations"], r["mode"]), {})[r["provider"]] = r
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    head = ["loss", "dtype", "layout", "N", "mode", "provider", "median ms [min-max]", "MB moved", "GB/s",
            "x copy floor", "% copy bw", "peak extra MB"]
    head += [f"vs {p}" for p in providers]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (loss, dtype, layout, n, mode), case in by_case.items():
        for p, r in case.items():
            cells = [loss, dtype, layout, str(n), mode, p, f"{r['median_ms']:.3f} [{r['min_ms']:.3f}-{r['max_ms']:.3f}]",
                     f"{r['bytes'] / 1e6:.1f}", f"{r['gbps']:.1f}", f"{r['x_floor']:.2f}", f"{r['pct_bw']:.1f}",
                     f"{r['peak_extra_bytes'] / 1e6:.1f}"]
            cells += [f"{case[o]['median_ms'] / r['median_ms']:.2f}x" if o in case else "" for o in providers]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# The GPU targets, forward+backward: (loss, minimum speed-up over
# torch.compile(reference), minimum % of copy bandwidth or None).
TARGETS = {"bcdl": (1.5, 70.0), "ildl": (1.5, None), "giou": (1.5, None), "bckd": (1.5, None)}


def targets(rows):
    """One line per fused provider and case: the ratios of this run against the targets."""
    by_case = {}
    for r in rows:
        if r["mode"] == "forward+backward" and r["kind"] == "coco":
            by_case.setdefault((r["loss"], r["dtype"], r["layout"], r["locations"]), {})[r["provider"]] = r
    lines = ["targets (forward+backward, ratios measured in this run):"]
    for (loss, dtype, layout, n), case in by_case.items():
        speedup, bw = TARGETS[loss]
        for p in ("extension", "triton"):
            if p not in case or "torch_compile" not in case:
                continue
            ratio = case["torch_compile"]["median_ms"] / case[p]["median_ms"]
            text = f"  {loss:5s} {dtype:8s} {layout:13s} N={n:7d} {p:9s} {ratio:5.2f}x torch.compile " \
                   f"({'met' if ratio >= speedup else 'MISSED'}, >= {speedup}x)"
            if bw is not None:
                pct = case[p]["pct_bw"]
                text += f", {pct:5.1f}% copy bw ({'met' if pct >= bw else 'MISSED'}, >= {bw:.0f}%)"
            lines.append(text)
    return lines


# The CPU targets, forward+backward, in every layout: the extension at least
# CPU_SPEEDUP x torch.compile(reference), and within CPU_LAYOUT_SLOWDOWN x its
# own NCHW time.
CPU_SPEEDUP = 1.5
CPU_LAYOUT_SLOWDOWN = 1.15


def cpu_targets(rows):
    """One line per loss, layout and size: the extension against torch.compile and against NCHW."""
    by_case = {}
    for r in rows:
        if r["mode"] == "forward+backward" and r["provider"] in ("extension", "torch_compile"):
            by_case.setdefault((r["loss"], r["dtype"], r["locations"]), {}).setdefault(r["layout"], {})[r["provider"]] = r
    lines = [f"targets (forward+backward, ratios measured in this run): extension >= {CPU_SPEEDUP}x torch.compile, "
             f"<= {CPU_LAYOUT_SLOWDOWN}x its NCHW time"]
    for (loss, dtype, n), by_layout in by_case.items():
        nchw = by_layout.get("nchw", {}).get("extension")
        for layout, case in by_layout.items():
            if "extension" not in case:
                continue
            ext = case["extension"]["median_ms"]
            text = f"  {loss:5s} {dtype:8s} {layout:13s} N={n:7d}"
            if "torch_compile" in case:
                ratio = case["torch_compile"]["median_ms"] / ext
                text += f" {ratio:5.2f}x torch.compile ({'met' if ratio >= CPU_SPEEDUP else 'MISSED'})"
            if nchw is not None and layout != "nchw":
                slow = ext / nchw["median_ms"]
                text += f", {slow:5.2f}x NCHW ({'met' if slow <= CPU_LAYOUT_SLOWDOWN else 'MISSED'})"
            lines.append(text)
    return lines


def write_csv(rows, path):
    """Appends rows; a file with other columns is rewritten with the union of both."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fields = list(rows[0])
    old = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_fields = reader.fieldnames or []
            if old_fields != fields:
                old = list(reader)
                fields = old_fields + [k for k in fields if k not in old_fields]
            else:
                fields = old_fields
    if old or not os.path.exists(path):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(old)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writerows(rows)


def plot(csv_path, png_path, rows):
    """Time vs N per provider, log-log, for BCDL forward+backward (from the CSV when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if csv_path:
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        commit = rows[-1]["commit"]
        rows = [r for r in rows if r["commit"] == commit and r["timestamp"] == rows[-1]["timestamp"]]
    points = {}
    first = next(r for r in rows if r["loss"] == "bcdl")
    for r in rows:
        if (r["loss"] == "bcdl" and r["mode"] == "forward+backward" and r.get("layout", "nchw") == first.get("layout", "nchw")
                and r["dtype"] == first["dtype"]):
            points.setdefault(r["provider"], []).append((int(r["locations"]), float(r["median_ms"])))
    fig, ax = plt.subplots(figsize=(6, 4))
    for provider, pts in points.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=provider)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("locations N (C = 80)")
    ax.set_ylabel("BCDL forward+backward, median ms")
    ax.set_title(f"{first['device_name']} ({first['dtype']}, {first.get('layout', 'nchw')})", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)


if __name__ == "__main__":
    main()
