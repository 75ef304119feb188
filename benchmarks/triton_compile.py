"""Compiles every Triton kernel of ``bckd_kernels.triton`` with the real
Triton compiler (not the interpreter) for NVIDIA GPUs, no GPU needed.

    python benchmarks/triton_compile.py [--arch 80 90] [--check] [--jobs N] [--show-layouts] [--write FILE]

The interpreter accepts code the compiler refuses (module globals inside
``@triton.jit`` code, for one), so this is the check that the kernels build on
a GPU. For each kernel, each target architecture and each input dtype
(float32, float16, bfloat16) it compiles

- every autotune configuration the kernel keeps for each of the two vector
  access patterns (channels contiguous: channels_last maps and contiguous
  ``[N, C]`` or boxes; locations contiguous: NCHW maps and column-major rows),
  with the vector width the host picks for a typical input of each (a 16 x 100 x
  168 map, 358,400 boxes), and the element-by-element pattern of other strides,
- every other code-path variant (beta mode, weight or none, bins per edge, the
  widest and narrowest class block) at the configuration with the most elements
  per thread, where register pressure is highest,

and reads the registers of each cubin and counts its spill stores (STL, local
memory stores, in the machine code; ``cuobjdump``). For the vector patterns it
also reads, from the TTGIR, the ``#blocked`` layout of every load of the main
inputs and store of the main outputs (``order`` must put the contiguous
dimension first, ``sizePerThread`` along it must be the vector width: 16 bytes,
8 for bfloat16/float16 rows of 68 channels), and, in the PTX, traces the
address of every global load and store back to the pointer argument it is
built from: each main input's loads and each gradient's stores must all be
that wide (``ld.global.v4.b32`` is 16 bytes), by themselves, so a scalar main
load cannot hide behind a vector load of the per-location weights. Pointers are
compiled as 16-byte aligned, as Triton specialises them at run time for fresh
tensors; integer arguments as unspecialised (the kernels pass the sizes that
must be multiples of the vector width themselves). ``--check`` exits non-zero
on any compile error, any spill and any main load or store that is not
vectorised as intended. ``--show-layouts`` prints every ``#blocked`` layout of
each kernel's default variant; ``--write`` writes the evidence as Markdown.
Reading the compiled code and its rules: benchmarks/triton_asm.py.

Run it without ``TRITON_INTERPRET``: the kernels must be defined for a GPU.
"""

import argparse
import collections
import concurrent.futures
import functools
import os
import sys
import tempfile
import time
import types

from triton_asm import (access_bytes, accesses_by_argument, blocked_layouts, fmt_reduction, global_accesses,
                        main_accesses, problems, reduction_mismatches, reductions, resource_usage, vector_problems)

DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}

# Pointers to per-location float32 vectors; every other pointer has the
# inputs' dtype (bckd_kernels.triton follows this naming).
FLOAT32_POINTERS = {"w_ptr", "loss_ptr", "mad_ptr", "coef_ptr", "gl_ptr"}
FLOAT_SCALARS = {"beta", "eps"}
# The access patterns' names in the reports, by their value of ACCESS
# (bckd_kernels.triton.common: CHANNELS, LOCATIONS, STRIDED).
PATTERNS = {2: "channels contiguous", 1: "locations contiguous", 0: "other strides"}


def access_patterns(ops, dtype):
    """Per kernel family: (ACCESS, VEC) per pattern, as the host's own planner
    decides on meta tensors: first for a typical input of each (the patterns
    whose accesses are checked for vector width), then, with locations
    contiguous, for location counts that allow only 1 or 2 elements per vector
    (an odd one, twice an odd one), whose reducing kernels keep configurations
    of their own (bckd_kernels.triton.common.IN_THREAD)."""
    import torch

    dt = getattr(torch, dtype)

    def maps(c, sizes):
        out = []
        for h, w in sizes:
            nchw = torch.empty(16, c, h, w, dtype=dt, device="meta")
            last = nchw.contiguous(memory_format=torch.channels_last)
            most = ops.dfl.DFL_VECTOR_BYTES[nchw.element_size()] if c == 68 else 16
            out += [(p.access, p.vec) for p in (ops.common.plan(x, x, channels=c, most_bytes=most) for x in (last, nchw))]
        return out

    def narrow(c):
        return [lv for lv in maps(c, [(99, 167), (99, 166)]) if lv[0] == 1]

    boxes = torch.empty(358400, 4, dtype=dt, device="meta")
    giou = [ops.giou.box_plan(b, b)[:2] for b in (boxes, boxes.t().contiguous().t())]
    return {"bcdl": (maps(80, [(100, 168)]) + [(0, 1)], narrow(80)), "giou": (giou + [(0, 1)], []),
            "dfl": (maps(68, [(100, 168)]) + [(0, 1)], narrow(68))}


def code_paths(ops, dtype):
    """Per kernel: the constexprs that select code, with the values the host
    passes; the first value of each is the default path. The access pattern
    comes with the channel tile the host picks for it (BLOCK_C, NB): for a
    typical input first (80 classes, 17 bins), then, in the typical inputs'
    patterns, every other tile it can pick (reg_max 1-64, any class count),
    for the BCDL backward the widest and the narrowest (it does not reduce,
    and its code is the same between them). Returns (paths, typical):
    typical, per kernel, the pattern values of the typical inputs."""
    from bckd_kernels import _contract

    patterns = access_patterns(ops, dtype)
    paths, typical = {}, {}

    def with_tiles(family, name, tile, typical_tile, tiles, narrow_vectors=True):
        main, narrow = patterns[family] if narrow_vectors else (patterns[family][0], [])
        values, first = [], []
        for access, vec in main + narrow:
            t0 = typical_tile(access, vec)
            if (access, vec) in main:
                first.append((access, vec, t0))
            others = sorted(tiles(access, vec) - {t0}, reverse=True) if (access, vec) in main else []
            values += [(access, vec, t) for t in [t0] + others]
        typical[name] = first
        return {("ACCESS", "VEC", tile): tuple(dict.fromkeys(first + values))}

    def class_tiles(access, vec):
        return {ops.bcdl.block_c(c, access, vec) for c in range(1, 129)}

    def bin_tiles(access, vec):
        return {ops.dfl.bins_block(r + 1, access, vec) for r in range(1, _contract.MAX_REG_MAX + 1)}

    bcdl = {"MODE": (1, 2, 0), "HAS_W": (True, False)}
    paths["_bcdl_fwd_kernel"] = {
        **with_tiles("bcdl", "_bcdl_fwd_kernel", "BLOCK_C", lambda l, v: ops.bcdl.block_c(80, l, v), class_tiles), **bcdl}
    paths["_bcdl_bwd_kernel"] = {
        **with_tiles("bcdl", "_bcdl_bwd_kernel", "BLOCK_C", lambda l, v: ops.bcdl.block_c(80),
                     lambda l, v: {ops.bcdl.block_c(1), ops.bcdl.block_c(128)}, narrow_vectors=False), **bcdl}
    for name in ("_dfl_fwd_kernel", "_dfl_bwd_kernel"):
        paths[name] = with_tiles("dfl", name, "NB", lambda l, v: ops.dfl.bins_block(17, l, v), bin_tiles)
    lv = ("ACCESS", "VEC")
    main, _ = patterns["giou"]
    paths["_giou_fwd_kernel"] = {lv: tuple(main)}
    paths["_giou_bwd_kernel"] = {lv: tuple(main), ("GRAD_P", "GRAD_T"): ((True, True), (True, False), (False, True))}
    typical["_giou_fwd_kernel"] = typical["_giou_bwd_kernel"] = list(main)
    return paths, typical


def _assign(constexprs, key, value):
    out = dict(constexprs)
    if isinstance(key, tuple):
        out.update(zip(key, value))
    else:
        out[key] = value
    return out


def kernels(ops):
    """Every autotuned @triton.jit kernel the package's modules define, by name."""
    import triton

    found = {}
    for module in vars(ops).values():
        if not isinstance(module, types.ModuleType) or not module.__name__.startswith(ops.__name__ + "."):
            continue
        for name, obj in vars(module).items():
            if isinstance(obj, triton.runtime.Autotuner):
                found[name] = obj
            elif isinstance(obj, triton.runtime.JITFunction) and name.endswith("_kernel"):
                raise SystemExit(f"{name} is not autotuned: add it to the configurations checked here")
    return found


def live_configs(tuner, constexprs):
    """Indices of the configurations the kernel's own pruning keeps for these
    constexprs (all of them without pruning)."""
    prune = tuner.early_config_prune
    kept = prune(tuner.configs, {}, **constexprs) if prune else tuner.configs
    return [i for i, c in enumerate(tuner.configs) if any(c is k for k in kept)]


def elements_per_thread(config, constexprs):
    per_loc = constexprs.get("BLOCK_C", constexprs.get("NB", 4))
    return config.kwargs["BLOCK_L"] * per_loc / (32 * config.num_warps)


# The kernels that reduce over a tile's channels (tt.reduce), whose every
# access pattern and channel tile is compiled at every configuration kept.
REDUCING = {"_bcdl_fwd_kernel", "_dfl_fwd_kernel", "_dfl_bwd_kernel"}


def variants(ops):
    """(kernel, dtype, constexprs, config index, evidence) to compile, per
    architecture: float32 and bfloat16 in the typical inputs' vector patterns
    at every configuration the kernel keeps for them; float32 in every other
    pattern and channel tile (code_paths), at every configuration kept where
    the kernel reduces (REDUCING: the reduction check compares them) and at
    the heaviest elsewhere, and in every other code path (beta mode, weight or
    none, the GIoU backward's outputs) at the heaviest configuration; float16,
    whose code is bfloat16's, at the default path. ``evidence``: a typical
    input's pattern, whose accesses are checked for vector width and listed."""
    found = kernels(ops)
    out = []
    for dtype in DTYPES:
        paths_of, typical_of = code_paths(ops, dtype)
        missing = set(found) - set(paths_of)
        if missing:
            raise SystemExit(f"kernels without a code-path table here: {sorted(missing)}")
        for name, tuner in sorted(found.items()):
            paths = paths_of[name]
            pattern = next(k for k in paths if isinstance(k, tuple) and k[:2] == ("ACCESS", "VEC"))
            typical = typical_of[name]
            default = {}
            for key, values in paths.items():
                default = _assign(default, key, values[0])
            seen = set()

            def add(ce, i, evidence):
                if (tuple(sorted(ce.items())), i) not in seen:
                    seen.add((tuple(sorted(ce.items())), i))
                    out.append((name, dtype, ce, i, evidence))

            def heaviest(ce):
                live = live_configs(tuner, ce)
                return max(live, key=lambda i: elements_per_thread(tuner.configs[i], ce))

            if dtype == "float16":
                add(default, heaviest(default), True)
                continue
            for v in paths[pattern]:
                if dtype == "float32" or v in typical:
                    ce = _assign(default, pattern, v)
                    if name in REDUCING or (v in typical and v[0] != 0):
                        for i in live_configs(tuner, ce):
                            add(ce, i, v in typical)
                    else:
                        add(ce, heaviest(ce), v in typical)
            if dtype == "float32":
                for key, values in paths.items():
                    if key != pattern:
                        for v in values:
                            ce = _assign(default, key, v)
                            add(ce, heaviest(ce), False)
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


@functools.cache
def _ops():
    """The package bckd_kernels.triton, its modules (common, bcdl, giou, dfl) as attributes."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels for a GPU")
    import bckd_kernels.triton

    return bckd_kernels.triton


def compile_one(job):
    """Compiles one variant; returns a result row (never raises)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, dtype, constexprs, config_index, vector_check, arch = job
    tuner = kernels(_ops())[name]
    config = tuner.configs[config_index]
    ce = dict(constexprs, **config.kwargs)
    row = dict(kernel=name, dtype=dtype, arch=arch, config=dict(config.kwargs, num_warps=config.num_warps, maxnreg=config.maxnreg),
               constexprs=constexprs, vector_check=vector_check, error=None, regs=None, stack=None, spill_stores=None, ttgir=None, main_accesses=None,
               ptx_loads=None, ptx_stores=None, ptx_by_arg=None, reductions=None)
    start = time.perf_counter()
    try:
        aligned = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(tuner.fn.arg_names) if n.endswith("_ptr")}
        src = ASTSource(tuner.fn, signature(tuner.fn, dtype, ce), ce, aligned)
        options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
        if config.maxnreg is not None:
            options["maxnreg"] = config.maxnreg
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
        row["regs"], row["stack"], row["spill_stores"] = resource_usage(compiled.asm["cubin"])
        row["ttgir"] = compiled.asm["ttgir"]
        row["main_accesses"] = main_accesses(row["ttgir"])
        row["reductions"] = reductions(row["ttgir"])
        row["ptx_loads"] = global_accesses(compiled.asm["ptx"], "ld")
        row["ptx_stores"] = global_accesses(compiled.asm["ptx"], "st")
        params = [n for n, p in zip(tuner.fn.arg_names, tuner.fn.params) if not p.is_constexpr]
        row["ptx_by_arg"] = accesses_by_argument(compiled.asm["ptx"], params)
    except Exception as exc:  # a compile error is a result to report, not a crash of the check
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    row["seconds"] = time.perf_counter() - start
    return row


def _fmt_layout(fields):
    return f"order {fields.get('order')} sizePerThread {fields.get('sizePerThread')}"


def _fmt_counts(counts):
    return " ".join(f"{w}:{n}" for w, n in sorted(counts.items(), key=lambda kv: (-access_bytes(kv[0]), kv[0]))) or "-"


def evidence_rows(rows):
    """One line per kernel, dtype, pattern and architecture, over its configurations."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r["error"] is None and r["vector_check"]:
            ce = r["constexprs"]
            groups[(r["kernel"], r["dtype"], ce["ACCESS"], ce["VEC"], r["arch"])].append(r)
    out = []
    for (name, dtype, access, vec, arch), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2], kv[0][4])):
        loads = sorted({f"{a} {_fmt_layout(f)}" for k, a, e, s, f in rs[0]["main_accesses"] if k == "load"})
        stores = sorted({f"{a} {_fmt_layout(f)}" for k, a, e, s, f in rs[0]["main_accesses"] if k == "store"})
        out.append(dict(kernel=name, dtype=dtype, pattern=PATTERNS[access], vec=vec, arch=arch,
                        configs=len(rs), regs=(min(r["regs"] for r in rs), max(r["regs"] for r in rs)),
                        spills=sum(bool(r["spill_stores"]) for r in rs),
                        loads="; ".join(loads), stores="; ".join(stores),
                        ptx_loads=_fmt_counts(rs[0]["ptx_loads"]), ptx_stores=_fmt_counts(rs[0]["ptx_stores"]),
                        vector_ok=not any(vector_problems(r) for r in rs)))
    return out


def reduction_rows(rows):
    """One line per reducing kernel, dtype and access pattern (VEC included),
    over its channel tiles, configurations and architectures: the tiles
    compiled, the configurations kept for each, the layouts of the reduced
    axis, and whether every tile's configurations reduce alike."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r["error"] is None and r["reductions"]:
            ce = r["constexprs"]
            groups[(r["kernel"], r["dtype"], ce["ACCESS"], ce["VEC"])].append(r)
    bad = {id(b) for _, b in reduction_mismatches(rows)}
    out = []
    for (name, dtype, access, vec), rs in sorted(groups.items(), key=lambda kv: (*kv[0][:2], -kv[0][2], -kv[0][3])):
        tile = "BLOCK_C" if "BLOCK_C" in rs[0]["constexprs"] else "NB"
        per_tile = collections.defaultdict(set)
        for r in rs:  # other code paths take one of these configurations
            per_tile[r["constexprs"][tile]].add(tuple(sorted(r["config"].items(), key=str)))
        spreads = sorted({fmt_reduction(x) for r in rs for x in r["reductions"]},
                         key=lambda t: -int(t.split()[0]))
        out.append(dict(kernel=name, dtype=dtype, pattern=PATTERNS[access], vec=vec, tile=tile,
                        tiles=", ".join(f"{t} ({len(c)})" for t, c in sorted(per_tile.items(), reverse=True)),
                        spreads="; ".join(spreads), same=not any(id(r) in bad for r in rs)))
    return out



MARKDOWN_INTRO = """# Triton kernels: static evidence

Written by `python benchmarks/triton_compile.py --write {path}`, which compiled the
kernels of `bckd_kernels/triton/` with the real Triton compiler on a machine
without a GPU ({versions}; targets {targets}; {n} variants). No GPU timings were
measured and none are given here: what a GPU run takes stays to be measured
(`benchmarks/bench_losses.py`).

One row per kernel, input dtype, access pattern and target, over the autotune
configurations the kernel keeps for that pattern (`configs`). The pattern and the
vector width `VEC` (elements) are what the host picks for a typical input: head maps
`[16, C, 100, 168]` (C = 80 for BCDL, 68 for DFL) in channels_last (channels
contiguous) and NCHW (locations contiguous) memory format, and 358,400 boxes
`[N, 4]`, contiguous and column-major. DFL maps of 16-bit types use 8-byte vectors
(`dfl.DFL_VECTOR_BYTES`). Main loads and stores are those of the inputs (`zs`, `zt`,
`p`, `t`, `rs`, `rt`) and of the full-size gradients (`g`, `gp`, `gt`), with the
`#blocked` layout of their TTGIR: `order` lists the dimensions fastest first, and
`sizePerThread` along the first must be `VEC`. PTX global accesses (of the row's
first configuration, per-location weights, gradients and losses included) are
counted per instruction by width (`v4.b32` is 16 bytes, `v2.b32` 8, `v1.b16` one
16-bit element); the check itself traces each access's address to its pointer
argument and requires every access of each main input and gradient to be `VEC`
wide by itself.
`vectorised` is the `--check` verdict; "-" for the element-by-element pattern.
Registers and spills are those of every compiled configuration; other code paths
(beta modes, weight or none, class and bin tiles, the GIoU backward's output mask)
are compiled by the check too and are not listed.
"""

REDUCTION_INTRO = """
## Reductions: the same order in every configuration kept

The autotuner picks a configuration by timing, so two processes may run different
ones. The kernels that reduce over a tile of channels (the BCDL forward's sum and
maximum over a class tile, the DFL decode's over a tile of bins) give the same bits
in every configuration only if each spreads the reduced axis over registers, lanes
and warps alike, the order in which the reduction combines the values
(`bckd_kernels.triton.common.IN_THREAD`). The check reads every `tt.reduce` of the TTGIR and fails
if the configurations kept for one access pattern and channel tile differ in any.
One row per kernel, dtype and access pattern, over both targets: the channel tiles
compiled (`BLOCK_C`, `NB`, with the number of configurations kept for each), each at
every configuration kept: in float32 every tile the host can pass, and with locations
contiguous also the vector widths of location counts that are not a multiple of 4;
in bfloat16 the typical input's tile; float16, whose code is bfloat16's, at one
configuration. Then the layouts of the reduced axes, as
`extent = sizePerThread/threadsPerWarp/warpsPerCTA` along the axis (`4 = 1/1/1`: a
thread holds the 4 values and combines them in order).
"""


def write_markdown(path, rows, versions, archs):
    ev = evidence_rows(rows)
    lines = [MARKDOWN_INTRO.format(path=path, versions=versions, targets=", ".join(f"sm_{a}" for a in archs),
                                   n=len(rows)),
             "| kernel | dtype | pattern | VEC | arch | configs | registers | spills | main loads (TTGIR layout) "
             "| main stores | PTX global loads | PTX global stores | vectorised |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in ev:
        regs = f"{e['regs'][0]}-{e['regs'][1]}" if e["regs"][0] != e["regs"][1] else str(e["regs"][0])
        ok = "-" if e["vec"] == 1 else ("yes" if e["vector_ok"] else "**no**")
        lines.append(f"| {e['kernel']} | {DTYPES[e['dtype']]} | {e['pattern']} | {e['vec']} | sm_{e['arch']} | "
                     f"{e['configs']} | {regs} | {e['spills']} | {e['loads'] or '-'} | {e['stores'] or '-'} | "
                     f"{e['ptx_loads']} | {e['ptx_stores']} | {ok} |")
    lines += [REDUCTION_INTRO,
              "| kernel | dtype | pattern | VEC | channel tiles (configurations) | reduced axes | same order |",
              "|---|---|---|---|---|---|---|"]
    for e in reduction_rows(rows):
        lines.append(f"| {e['kernel']} | {DTYPES[e['dtype']]} | {e['pattern']} | {e['vec']} | "
                     f"{e['tile']} {e['tiles']} | {e['spreads']} | {'yes' if e['same'] else '**no**'} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a compile error, a spill, a main access that is not vector wide or "
                             "configurations of one pattern that reduce in different orders")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--show-layouts", action="store_true")
    parser.add_argument("--write", metavar="FILE", help="write the per-pattern evidence table as Markdown")
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
    for (name, arch), rs in sorted(by_kernel.items()):
        ok = [r for r in rs if r["error"] is None]
        spills = [r for r in ok if r["spill_stores"]]
        regs = f"{min(r['regs'] for r in ok)}-{max(r['regs'] for r in ok)}" if ok else "-"
        print(f"{name:<20} {'sm_' + str(arch):>5} {len(rs):>8} {len(ok):>8} {regs:>10} {len(spills):>6}")
    for arch in args.arch:
        n = sum(1 for r in rows if r["arch"] == arch and r["error"] is None)
        print(f"sm_{arch}: {n} of {sum(1 for r in rows if r['arch'] == arch)} variants compiled")
    print(f"{'kernel':<20} {'dtype':>5} {'pattern':<21} {'VEC':>3} {'arch':>5} {'registers':>9} {'spills':>6} "
          f"{'PTX loads':<24} {'PTX stores':<24} vectorised")
    for e in evidence_rows(rows):
        regs = f"{e['regs'][0]}-{e['regs'][1]}"
        ok = "-" if e["vec"] == 1 else ("yes" if e["vector_ok"] else "NO")
        print(f"{e['kernel']:<20} {DTYPES[e['dtype']]:>5} {e['pattern']:<21} {e['vec']:>3} {'sm_' + str(e['arch']):>5} "
              f"{regs:>9} {e['spills']:>6} {e['ptx_loads']:<24} {e['ptx_stores']:<24} {ok}")
    print(f"{'kernel':<20} {'dtype':>5} {'pattern':<21} {'VEC':>3} {'tiles (configurations)':<34} same order")
    for e in reduction_rows(rows):
        print(f"{e['kernel']:<20} {DTYPES[e['dtype']]:>5} {e['pattern']:<21} {e['vec']:>3} "
              f"{e['tile'] + ' ' + e['tiles']:<34} {'yes' if e['same'] else 'NO'}  {e['spreads']}")
    failures = problems(rows)
    for line in failures:
        print(line)
    if args.show_layouts:
        for (name, arch), rs in sorted(by_kernel.items()):
            first = next((r for r in rs if r["ttgir"]), None)
            if first is not None:
                print(f"{name} sm_{arch} {first['dtype']} {first['config']}:")
                for layout in blocked_layouts(first["ttgir"]):
                    print("    " + layout)
    if args.write:
        write_markdown(args.write, rows, f"triton {triton.__version__}, torch {torch.__version__}", args.arch)
    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
