"""Is a one-pass BCDL worth it? Measured on the CPU kernels (AVX2, float32, β = 1).

    python benchmarks/onepass_cpu.py [--images 4] [--threads 1] [--repeat 15]

Two-pass (what the ops do today): the forward reads zs, zt and writes the loss;
the backward reads zs, zt again, recomputes the per-element pieces and writes
g·w·∂ℓ/∂zs. One-pass (benchmarks/onepass_cpu.cpp): the forward also writes
∂ℓ/∂zs (unscaled) from the same pieces; the backward only multiplies it by the
per-location g·w. Both move 5·L·C elements (one-pass: forward 2 read + 1 write,
backward 1 read + 1 write), so the difference is arithmetic, and memory: the
unscaled gradient, one [N, C] float32 tensor per call, lives from the forward
to the backward.
"""

import argparse
import os
import statistics
import time

import torch
from torch.utils.cpp_extension import load

import bckd_kernels  # noqa: F401  (torch.ops.bckd.*)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ext = load(
        "bckd_onepass_cpu",
        [os.path.join(ROOT, "benchmarks", "onepass_cpu.cpp")],
        extra_cflags=["-O3", "-mavx2", "-mfma", "-mf16c", "-mbmi", "-mbmi2", "-mlzcnt", "-fopenmp"],
        extra_ldflags=["-fopenmp"],
        verbose=False,
    )
    g = torch.Generator().manual_seed(0)
    shape = (args.images, 80, 160, 140)
    zs = torch.randn(shape, generator=g) * 2
    zt = torch.randn(shape, generator=g) * 2
    coef = torch.rand(args.images, 160, 140, generator=g)

    loss, mad = torch.ops.bckd.bin_cls_distill(zs, zt, None, 1.0)
    ref_grad = torch.ops.bckd._bin_cls_distill_backward(coef, zs, zt, None, 1.0)
    l1, m1, g1 = ext.forward_with_grad(zs, zt)
    one_grad = g1 * coef.unsqueeze(1)
    loss_err = ((l1 - loss).abs().max() / loss.abs().max()).item()
    assert torch.equal(m1, mad) and loss_err < 1e-6, "one-pass forward differs from the op"
    grad_err = (one_grad - ref_grad).abs().max().item()

    fwd2 = median_ms(lambda: torch.ops.bckd.bin_cls_distill(zs, zt, None, 1.0), args.repeat)
    bwd2 = median_ms(lambda: torch.ops.bckd._bin_cls_distill_backward(coef, zs, zt, None, 1.0), args.repeat)
    fwd1 = median_ms(lambda: ext.forward_with_grad(zs, zt), args.repeat)
    bwd1 = median_ms(lambda: g1 * coef.unsqueeze(1), args.repeat)
    n_el = zs.numel()
    print(f"BCDL float32 NCHW {list(shape)} ({n_el / 1e6:.1f} M elements), {args.threads} thread(s), "
          f"median of {args.repeat} [min-max] ms, torch {torch.__version__}")
    rows = [("two-pass forward (loss, max|d|)", fwd2), ("two-pass backward (recompute)", bwd2),
            ("one-pass forward (+ unscaled grad)", fwd1), ("one-pass backward (scale)", bwd1)]
    for name, (med, lo, hi) in rows:
        print(f"  {name:36s} {med:8.2f} [{lo:.2f}-{hi:.2f}]")
    two, one = fwd2[0] + bwd2[0], fwd1[0] + bwd1[0]
    print(f"  forward+backward: two-pass {two:.2f} ms, one-pass {one:.2f} ms ({two / one:.2f}x)")
    print(f"  one-pass vs the ops: loss max rel. difference {loss_err:.1e}, gradient max abs. difference {grad_err:.1e}")
    extra = n_el * 4 / 2**20
    print(f"  memory: the unscaled gradient, {extra:.1f} MiB here, is held from forward to backward; "
          f"the two-pass backward allocates a gradient of the same size only when it runs")


if __name__ == "__main__":
    main()
