"""Cross-process determinism of the fused ops, and torch.compile over the Triton ones.

    python benchmarks/gpu_determinism.py [--device cuda] [--implementations triton,extension] [--no-compile]

Two processes, side by side, compute the same ops on the same seeded inputs and
hash the bits of every output and gradient; the check passes when the
two processes' hashes are equal, and each process's repeat of a case too. Cases:
BCDL (``bcdl_loss``, per-location loss and max |sigma(zt) - sigma(zs)|, gradient of the
student), ILDL (``ildl_loss``) and paired GIoU (``giou_loss``), per-location outputs
(``reduction="none"``) under a random upstream gradient, in float32 and bfloat16
(float16 left out for time), head maps NCHW and channels_last, on each implementation (the
Triton kernels, autotuned afresh in each process, and the extension's CUDA ops when
it loaded).

Then, unless --no-compile, ``torch.compile(fullgraph=True)`` with inductor over
``bckd_loss`` on the Triton backend, forward and backward: no graph break, the loss
and gradients within float32 rounding of eager (inductor may sum in another order),
and the compiled results' bits equal in both processes too.

Without a CUDA GPU, --device cuda prints one line and exits 3 (skipped);
benchmarks/gpu_run.sh counts that as a failure on a GPU machine. --device cpu runs the
same check on the extension's CPU kernels (the Triton ones through the interpreter
with --implementations triton: slow), which is how the tests exercise it. Exit 0: passed,
1: a mismatch or an error (listed), 3: skipped.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

SKIPPED = 3
# bckd_kernels from this checkout (built in place), whatever the working directory
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def child_main(args):
    if args.device == "cpu" and "triton" in args.implementations:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the Triton kernels are defined
    import torch

    import bckd_kernels
    from bckd_kernels import functional as F

    device = torch.device(args.device)
    implementations = [i for i in args.implementations if i != "extension" or bckd_kernels.HAS_EXTENSION]
    result = {"cases": {}, "repeat_mismatch": [], "implementations": implementations, "errors": [],
              "extension": bool(bckd_kernels.HAS_EXTENSION)}

    def digest(tensors, perturb=False):
        h = hashlib.sha256()
        for i, t in enumerate(tensors):
            t = t.detach().contiguous().reshape(-1)
            if perturb and i == 0 and t.numel():
                t = t.clone()
                t.view(torch.int16 if t.element_size() == 2 else torch.int32)[0] ^= 1  # the lowest bit of one value
            h.update(t.view(torch.uint8).cpu().numpy().tobytes())
        return h.hexdigest()

    def inputs(loss, dtype, layout, seed):
        g = torch.Generator().manual_seed(seed)
        b, h, w = args.shape

        def rand(*shape, scale=3.0):
            t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
            return t.contiguous(memory_format=torch.channels_last) if layout == "channels_last" and t.dim() == 4 else t

        if loss == "giou":
            n = b * h * w
            xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
            pred = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 1], 1)
            target = pred + torch.randn(n, 4, generator=g, dtype=torch.float64) * 5
            weight = torch.rand(n, generator=g).to(device)
            gout = torch.randn(n, generator=g, dtype=torch.float64).to(dtype).to(device)
            return pred.to(dtype).to(device), target.to(dtype).to(device), weight, gout
        channels = 80 if loss == "bcdl" else 68
        s, t = rand(b, channels, h, w), rand(b, channels, h, w)
        weight = torch.rand(b, h, w, generator=g).to(device)
        gout = torch.randn(b, h, w, generator=g, dtype=torch.float64).to(dtype).to(device)
        return s, t, weight, gout

    def run(loss, implementation, dtype, layout, seed):
        s, t, weight, gout = inputs(loss, dtype, layout, seed)
        s = s.requires_grad_()
        name = device.type if implementation == "extension" else implementation
        if loss == "bcdl":
            out, mad = F.bcdl_loss(s, t, weight, reduction="none", return_max_abs_diff=True, backend=name)
            outs = [out, mad]
        elif loss == "ildl":
            outs = [F.ildl_loss(s, t, weight, reduction="none", backend=name)]
        else:
            outs = [F.giou_loss(s, t, weight, reduction="none", backend=name)]
        outs[0].backward(gout.to(outs[0].dtype))
        return outs + [s.grad]

    seed = 0
    for implementation in implementations:
        for loss in ("bcdl", "ildl", "giou"):
            for dtype in (torch.float32, torch.bfloat16):
                for layout in (("nchw",) if loss == "giou" else ("nchw", "channels_last")):
                    seed += 1
                    case = f"{loss} {implementation} {str(dtype).replace('torch.', '')} {layout}"
                    try:
                        first = digest(run(loss, implementation, dtype, layout, seed), perturb=args.perturb)
                        if digest(run(loss, implementation, dtype, layout, seed), perturb=args.perturb) != first:
                            result["repeat_mismatch"].append(case)
                        result["cases"][case] = first
                    except Exception as exc:  # one broken case is reported, the others still run
                        result["errors"].append(f"{case}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    if args.compile:
        result["compile"] = compile_check(torch, F, device, inputs, digest)
    with open(args.child, "w") as f:
        json.dump(result, f)
    return 0


def compile_check(torch, F, device, inputs, digest):
    """bckd_loss on the Triton backend under torch.compile(fullgraph=True) with inductor."""

    def loss_fn(cs, ct, rs, rt, valid, avg):
        out = F.bckd_loss(cs, ct, rs, rt, valid, avg_factor=avg, backend="triton")
        return out["loss_bcdl"] + out["loss_ildl"]

    report = {}
    try:
        torch._dynamo.reset()
        compiled = torch.compile(loss_fn, fullgraph=True, backend="inductor")
        cs, ct, valid, _ = inputs("bcdl", torch.float32, "channels_last", 101)
        rs, rt, _, _ = inputs("ildl", torch.float32, "channels_last", 102)
        avg = torch.tensor(37.0, device=device)
        grads = []
        values = []
        for fn in (loss_fn, compiled):
            a, b = cs.detach().clone().requires_grad_(), rs.detach().clone().requires_grad_()
            value = fn(a, ct, b, rt, valid, avg)
            value.backward()
            values.append(value.detach())
            grads.append((a.grad, b.grad))
        diff = max((values[0] - values[1]).abs().max().item(),
                   *((x - y).abs().max().item() / max(x.abs().max().item(), 1e-30) for x, y in zip(*grads)))
        report.update(ok=True, max_rel_diff=diff, within=bool(diff <= 1e-5),
                      bits=digest([values[1], *grads[1]]))
    except Exception as exc:
        report.update(ok=False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400]}")
    return report


def parent_main(args):
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("determinism check skipped: no CUDA GPU here (torch.cuda.is_available() is False)")
            return SKIPPED
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        procs, paths = [], []
        for k in range(2):  # at the same time: each autotunes the Triton kernels while the other runs
            paths.append(os.path.join(tmp, f"process{k}.json"))
            cmd = [sys.executable, os.path.abspath(__file__), "--child", paths[k], "--device", args.device,
                   "--implementations", ",".join(args.implementations), "--shape", *map(str, args.shape)]
            cmd += [] if args.compile else ["--no-compile"]
            cmd += ["--perturb"] if args.self_test_mismatch and k == 1 else []
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        errors = [proc.communicate()[1] for proc in procs]
        for k, (proc, path) in enumerate(zip(procs, paths)):
            if proc.returncode != 0 or not os.path.exists(path):
                print(f"determinism check FAILED: process {k + 1} exited {proc.returncode}:\n{errors[k][-3000:]}")
                return 1
            with open(path) as f:
                results.append(json.load(f))
    a, b = results
    problems = [f"error in process {k + 1}: {e}" for k, r in enumerate(results) for e in r["errors"]]
    problems += [f"not repeatable within process {k + 1}: {c}" for k, r in enumerate(results) for c in r["repeat_mismatch"]]
    differ = sorted(c for c in a["cases"] if b["cases"].get(c) != a["cases"][c])
    problems += [f"bits differ between the 2 processes: {c}" for c in differ]
    if args.device.startswith("cuda") and "extension" in args.implementations and not a["extension"]:
        problems.append("the extension did not load: its CUDA ops were not checked")
    print(f"determinism: {len(a['cases'])} cases (BCDL, ILDL, GIoU x {', '.join(a['implementations'])} x float32, bfloat16 "
          f"x NCHW, channels_last) on {args.device}, outputs and gradients hashed, in 2 processes and "
          f"repeated in each: {len(a['cases']) - len(differ)} equal across processes")
    if args.compile:
        ca, cb = a.get("compile", {}), b.get("compile", {})
        if not ca.get("ok"):
            problems.append(f"torch.compile(fullgraph=True, inductor) over the Triton ops failed: {ca.get('error')}")
        else:
            print(f"compile: torch.compile(fullgraph=True, backend=inductor) over bckd_loss(backend='triton'), "
                  f"forward+backward: largest difference to eager {ca['max_rel_diff']:.3g} (relative), "
                  f"compiled bits {'equal' if ca['bits'] == cb.get('bits') else 'DIFFERENT'} in the 2 processes")
            if not ca["within"]:
                problems.append(f"compiled result differs from eager by {ca['max_rel_diff']:.3g} (> 1e-5)")
            if ca["bits"] != cb.get("bits"):
                problems.append("the compiled results' bits differ between the 2 processes")
    for line in problems:
        print(f"  FAIL {line}")
    print("determinism check: " + ("passed" if not problems else f"FAILED ({len(problems)} problems)"))
    return 1 if problems else 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--implementations", default="triton,extension", type=lambda s: s.split(","),
                        help="comma-separated: triton, extension (default both)")
    parser.add_argument("--shape", type=int, nargs=3, default=[2, 48, 70], metavar=("B", "H", "W"),
                        help="head maps [B, C, H, W] (C = 80 or 68); B*H*W boxes for GIoU (default 2 48 70)")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="leave out the torch.compile check")
    parser.add_argument("--self-test-mismatch", action="store_true",
                        help="flip one bit in the second process's first output (the check must fail)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--perturb", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in args.implementations:
        if name not in ("triton", "extension"):
            parser.error(f"--implementations: {name!r} is not triton or extension")
    return child_main(args) if args.child else parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
