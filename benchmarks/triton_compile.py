"""Compiles every Triton kernel of ``bckd_kernels.triton_ops`` with the real
Triton compiler (not the interpreter) for NVIDIA GPUs, no GPU needed.

    python benchmarks/triton_compile.py [--arch 80 90] [--check] [--jobs N] [--show-layouts]

The interpreter accepts code the compiler refuses (module globals inside
``@triton.jit`` code, for one), so this is the check that the kernels build on
a GPU. For each kernel, each target architecture and each input dtype
(float32, float16, bfloat16) it compiles

- every autotune configuration, with the default code path, and
- every code-path variant (beta mode, weight or none, bins per edge, the widest
  and narrowest class block) at the configuration with the most elements per
  thread, where register pressure is highest,

and reads the registers of each cubin and counts its spill stores (STL, local
memory stores, in the machine code; ``cuobjdump``). ``--check`` exits non-zero on
any compile error and on any spill. ``--show-layouts`` prints the
``#blocked`` layouts of the TTGIR of each kernel's default variant, which say how
loads are spread over threads (``sizePerThread``, ``order``).

Run it without ``TRITON_INTERPRET``: the kernels must be defined for a GPU.
"""

import argparse
import collections
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
import time

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

# Pointers to per-location float32 vectors; every other pointer has the
# inputs' dtype (triton_ops follows this naming).
FLOAT32_POINTERS = {"w_ptr", "loss_ptr", "mad_ptr", "coef_ptr"}
FLOAT_SCALARS = {"beta", "eps"}


def code_paths(ops):
    """Per kernel: the constexprs that select code, with the values the host
    passes; the first value of each is the default path. Every beta mode,
    weight or none and bins-per-edge tile is compiled; of the class tiles, the
    widest and the narrowest (the code is the same between them)."""
    block_c = sorted({ops._block_c(c) for c in (1, 128)}, reverse=True)
    bins = sorted({ops._bins_block(r + 1) for r in range(1, ops.MAX_REG_MAX + 1)})
    bins.insert(0, bins.pop(bins.index(ops._bins_block(17))))
    return {
        "_bcdl_fwd_kernel": {"MODE": (1, 2, 0), "HAS_W": (True, False), "BLOCK_C": tuple(block_c)},
        "_bcdl_bwd_kernel": {"MODE": (1, 2, 0), "BLOCK_C": tuple(block_c)},
        "_giou_fwd_kernel": {},
        "_giou_bwd_kernel": {},
        "_dfl_fwd_kernel": {"NB": tuple(bins)},
        "_dfl_bwd_kernel": {"NB": tuple(bins)},
    }


def kernels(ops):
    """Every autotuned @triton.jit kernel the module defines, by name."""
    import triton

    found = {}
    for name, obj in vars(ops).items():
        if isinstance(obj, triton.runtime.Autotuner):
            found[name] = obj
        elif isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel"):
            raise SystemExit(f"{name} is not autotuned: add it to the configurations checked here")
    return found


def elements_per_thread(kernel_name, config, paths):
    per_loc = max(paths.get("BLOCK_C", paths.get("NB", (1,))))
    return config.kwargs["BLOCK_L"] * per_loc / (32 * config.num_warps)


def variants(ops):
    """(kernel, dtype, constexprs, config index) to compile, per architecture."""
    paths_of = code_paths(ops)
    found = kernels(ops)
    missing = set(found) - set(paths_of)
    if missing:
        raise SystemExit(f"kernels without a code-path table here: {sorted(missing)}")
    out = []
    for name, tuner in sorted(found.items()):
        paths = paths_of[name]
        default = {k: v[0] for k, v in paths.items()}
        heaviest = max(range(len(tuner.configs)), key=lambda i: elements_per_thread(name, tuner.configs[i], paths))
        for dtype in DTYPES:
            seen = set()
            for i in range(len(tuner.configs)):
                out.append((name, dtype, default, i))
                seen.add((tuple(sorted(default.items())), i))
            for key, values in paths.items():
                for v in values:
                    ce = dict(default, **{key: v})
                    if (tuple(sorted(ce.items())), heaviest) not in seen:
                        seen.add((tuple(sorted(ce.items())), heaviest))
                        out.append((name, dtype, ce, heaviest))
    return out


def signature(fn, dtype, constexprs):
    sig = {}
    for name, param in zip(fn.arg_names, fn.params):
        if param.is_constexpr:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = "*fp32" if name in FLOAT32_POINTERS else "*" + DTYPES[dtype]
        elif name in FLOAT_SCALARS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def resource_usage(cubin):
    """(registers, stack bytes, local stores) of a cubin's one kernel. Spilled
    registers go to local memory (STL/LDL in the machine code); a small stack
    frame alone is not a spill."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", "--dump-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    usage = dict(re.findall(r"(REG|STACK):(\d+)", text))
    return int(usage["REG"]), int(usage["STACK"]), len(re.findall(r"\bSTL(\.\w+)*\s", text))


_OPS = None


def _ops():
    global _OPS
    if _OPS is None:
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels for a GPU")
        from bckd_kernels import triton_ops

        _OPS = triton_ops
    return _OPS


def compile_one(job):
    """Compiles one variant; returns a result row (never raises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, dtype, constexprs, config_index, arch = job
    tuner = getattr(_ops(), name)
    config = tuner.configs[config_index]
    ce = dict(constexprs, **config.kwargs)
    row = dict(kernel=name, dtype=dtype, arch=arch, config=dict(config.kwargs, num_warps=config.num_warps, maxnreg=config.maxnreg),
               constexprs=constexprs, error=None, regs=None, stack=None, spill_stores=None, ttgir=None)
    start = time.perf_counter()
    try:
        src = ASTSource(tuner.fn, signature(tuner.fn, dtype, ce), ce)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        if config.maxnreg is not None:
            options["maxnreg"] = config.maxnreg
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        row["regs"], row["stack"], row["spill_stores"] = resource_usage(compiled.asm["cubin"])
        row["ttgir"] = compiled.asm["ttgir"]
    except Exception as exc:  # a compile error is a result to report, not a crash of the check
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    row["seconds"] = time.perf_counter() - start
    return row


def blocked_layouts(ttgir):
    return sorted(set(re.findall(r"#blocked\d* = #ttg\.blocked<\{[^}]*\}>", ttgir)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    parser.add_argument("--check", action="store_true", help="exit 1 on a compile error or a spill")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--show-layouts", action="store_true")
    args = parser.parse_args(argv)

    import triton
    import torch

    jobs = [(*v, arch) for arch in args.arch for v in variants(_ops())]
    start = time.perf_counter()
    # A cache of its own: every variant is compiled now, none read back from an
    # earlier run.
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        with concurrent.futures.ProcessPoolExecutor(max_workers=args.jobs) as pool:
            rows = list(pool.map(compile_one, jobs, chunksize=4))
    wall = time.perf_counter() - start

    print(f"triton {triton.__version__}, torch {torch.__version__}: {len(rows)} kernel variants, "
          f"{wall:.0f} s on {args.jobs} processes")
    by_kernel = collections.defaultdict(list)
    for r in rows:
        by_kernel[(r["kernel"], r["arch"])].append(r)
    print(f"{'kernel':<20} {'arch':>5} {'variants':>8} {'compiled':>8} {'registers':>10} {'spills':>6}")
    failures = []
    for (name, arch), rs in sorted(by_kernel.items()):
        ok = [r for r in rs if r["error"] is None]
        spills = [r for r in ok if r["spill_stores"]]
        regs = f"{min(r['regs'] for r in ok)}-{max(r['regs'] for r in ok)}" if ok else "-"
        print(f"{name:<20} {'sm_' + str(arch):>5} {len(rs):>8} {len(ok):>8} {regs:>10} {len(spills):>6}")
        failures += [r for r in rs if r["error"] is not None] + spills
    for arch in args.arch:
        n = sum(1 for r in rows if r["arch"] == arch and r["error"] is None)
        print(f"sm_{arch}: {n} of {sum(1 for r in rows if r['arch'] == arch)} variants compiled")
    for r in failures:
        what = r["error"] or f"spills: {r['spill_stores']} local stores, {r['regs']} registers, stack {r['stack']} B"
        print(f"FAILED {r['kernel']} sm_{r['arch']} {r['dtype']} {r['constexprs']} {r['config']}: {what}")
    if args.show_layouts:
        for (name, arch), rs in sorted(by_kernel.items()):
            first = next((r for r in rs if r["ttgir"]), None)
            if first is not None:
                print(f"{name} sm_{arch} {first['dtype']} {first['config']}:")
                for layout in blocked_layouts(first["ttgir"]):
                    print("    " + layout)
    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
