"""Compiles every Triton kernel of ``bckd_kernels.triton_ops`` with the real
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
8 for bfloat16/float16 rows of 68 channels), and counts the global loads and
stores of the PTX by width (``ld.global.v4.b32`` is 16 bytes). Pointers are
compiled as 16-byte aligned, as Triton specialises them at run time for fresh
tensors; integer arguments as unspecialised (the kernels pass the sizes that
must be multiples of the vector width themselves). ``--check`` exits non-zero
on any compile error, any spill and any main load or store that is not
vectorised as intended. ``--show-layouts`` prints every ``#blocked`` layout of
each kernel's default variant; ``--write`` writes the evidence as Markdown.

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
FLOAT32_POINTERS = {"w_ptr", "loss_ptr", "mad_ptr", "coef_ptr", "gl_ptr"}
FLOAT_SCALARS = {"beta", "eps"}


# The inputs whose reads, and the outputs whose writes, must be vector wide.
MAIN_LOADS = {"zs_ptr", "zt_ptr", "p_ptr", "t_ptr", "rs_ptr", "rt_ptr"}
MAIN_STORES = {"g_ptr", "gp_ptr", "gt_ptr"}
PATTERNS = {2: "channels contiguous", 1: "locations contiguous", 0: "other strides"}


def access_patterns(ops, dtype):
    """Per kernel family: ((LAYOUT, VEC) per pattern, the input it was planned
    for). The host's own planner decides, on meta tensors of a typical size."""
    import torch

    dt = getattr(torch, dtype)

    def maps(c):
        nchw = torch.empty(16, c, 100, 168, dtype=dt, device="meta")
        last = nchw.contiguous(memory_format=torch.channels_last)
        most = ops._DFL_VECTOR_BYTES[nchw.element_size()] if c == 68 else 16
        return [(p.layout, p.vec) for p in (ops._plan(x, x, channels=c, most_bytes=most) for x in (last, nchw))]

    boxes = torch.empty(358400, 4, dtype=dt, device="meta")
    giou = [ops._box_plan(b, b)[:2] for b in (boxes, boxes.t().contiguous().t())]
    return {"bcdl": maps(80) + [(0, 1)], "giou": giou + [(0, 1)], "dfl": maps(68) + [(0, 1)]}


def code_paths(ops, dtype):
    """Per kernel: the constexprs that select code, with the values the host
    passes; the first value of each is the default path. Every access pattern,
    beta mode, weight or none and bins-per-edge tile is compiled; of the class
    tiles, the widest and the narrowest (the code is the same between them)."""
    access = access_patterns(ops, dtype)
    block_c = sorted({ops._block_c(c) for c in (1, 128)}, reverse=True)
    layout, vec = access["dfl"][0]
    bins = sorted({ops._bins_block(r + 1, layout, vec) for r in range(1, ops.MAX_REG_MAX + 1)})
    bins.insert(0, bins.pop(bins.index(ops._bins_block(17, layout, vec))))
    lv = ("LAYOUT", "VEC")
    return {
        "_bcdl_fwd_kernel": {lv: access["bcdl"], "MODE": (1, 2, 0), "HAS_W": (True, False), "BLOCK_C": tuple(block_c)},
        "_bcdl_bwd_kernel": {lv: access["bcdl"], "MODE": (1, 2, 0), "HAS_W": (True, False), "BLOCK_C": tuple(block_c)},
        "_giou_fwd_kernel": {lv: access["giou"]},
        "_giou_bwd_kernel": {lv: access["giou"]},
        "_dfl_fwd_kernel": {lv: access["dfl"], "NB": tuple(bins)},
        "_dfl_bwd_kernel": {lv: access["dfl"], "NB": tuple(bins)},
    }


def _assign(constexprs, key, value):
    out = dict(constexprs)
    if isinstance(key, tuple):
        out.update(zip(key, value))
    else:
        out[key] = value
    return out


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


def live_configs(tuner, constexprs):
    """Indices of the configurations the kernel's own pruning keeps for these
    constexprs (all of them without pruning)."""
    prune = tuner.early_config_prune
    kept = prune(tuner.configs, {}, **constexprs) if prune else tuner.configs
    return [i for i, c in enumerate(tuner.configs) if c in kept]


def elements_per_thread(config, constexprs):
    per_loc = constexprs.get("BLOCK_C", constexprs.get("NB", 4))
    return config.kwargs["BLOCK_L"] * per_loc / (32 * config.num_warps)


def variants(ops):
    """(kernel, dtype, constexprs, config index, vector check) to compile, per
    architecture: float32 and bfloat16 in both vector access patterns at every
    configuration the kernel keeps for it (the vector check applies to these);
    float32 in every other code path at the heaviest configuration; float16,
    whose code is bfloat16's, at the default path."""
    found = kernels(ops)
    out = []
    for dtype in DTYPES:
        paths_of = code_paths(ops, dtype)
        missing = set(found) - set(paths_of)
        if missing:
            raise SystemExit(f"kernels without a code-path table here: {sorted(missing)}")
        for name, tuner in sorted(found.items()):
            paths = paths_of[name]
            default = {}
            for key, values in paths.items():
                default = _assign(default, key, values[0])
            seen = set()

            def add(ce, i, check):
                if (tuple(sorted(ce.items())), i) not in seen:
                    seen.add((tuple(sorted(ce.items())), i))
                    out.append((name, dtype, ce, i, check))

            def heaviest(ce):
                live = live_configs(tuner, ce)
                return max(live, key=lambda i: elements_per_thread(tuner.configs[i], ce))

            if dtype == "float16":
                add(default, heaviest(default), True)
                continue
            for key, values in paths.items():
                for v in values:
                    ce = _assign(default, key, v)
                    if isinstance(key, tuple) and ce["LAYOUT"] != 0:
                        for i in live_configs(tuner, ce):
                            add(ce, i, True)
                    elif dtype == "float32":
                        add(ce, heaviest(ce), isinstance(key, tuple))
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

    name, dtype, constexprs, config_index, vector_check, arch = job
    tuner = getattr(_ops(), name)
    config = tuner.configs[config_index]
    ce = dict(constexprs, **config.kwargs)
    row = dict(kernel=name, dtype=dtype, arch=arch, config=dict(config.kwargs, num_warps=config.num_warps, maxnreg=config.maxnreg),
               constexprs=constexprs, vector_check=vector_check, error=None, regs=None, stack=None, spill_stores=None, ttgir=None, access=None,
               ptx_loads=None, ptx_stores=None)
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
        row["access"] = main_accesses(row["ttgir"])
        row["ptx_loads"] = global_accesses(compiled.asm["ptx"], "ld")
        row["ptx_stores"] = global_accesses(compiled.asm["ptx"], "st")
    except Exception as exc:  # a compile error is a result to report, not a crash of the check
        row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    row["seconds"] = time.perf_counter() - start
    return row


def blocked_layouts(ttgir):
    return sorted(set(re.findall(r"#blocked\d* = #ttg\.blocked<\{[^}]*\}>", ttgir)))


def _layout_table(ttgir):
    table = {}
    for name, body in re.findall(r"^(#blocked\d*) = #ttg\.blocked<\{([^}]*)\}>", ttgir, re.M):
        fields = dict(re.findall(r"(\w+) = \[([\d, ]*)\]", body))
        table[name] = {k: [int(x) for x in v.split(",") if x.strip()] for k, v in fields.items()}
    return table


def main_accesses(ttgir):
    """Every tt.load of a MAIN_LOADS pointer and tt.store to a MAIN_STORES
    pointer: (kind, argument, element type, shape, layout fields), the pointer
    traced back through the ops that build a tensor of pointers."""
    defs = {}
    for line in ttgir.splitlines():
        m = re.match(r"\s*(%[\w.]+)(?::\d+)? = ([\w.]+) (.*)", line)
        if m:
            defs[m.group(1)] = (m.group(2), m.group(3))
    layouts = _layout_table(ttgir)

    def root(value):
        for _ in range(200):
            value = value.split("#")[0]
            if value not in defs:
                return value.lstrip("%")
            op, rest = defs[value]
            if op not in ("tt.addptr", "tt.splat", "tt.broadcast", "tt.expand_dims", "ttg.convert_layout", "tt.reshape"):
                return None
            value = re.match(r"(%[\w.#]+)", rest).group(1)
        return None

    found = []
    for line in ttgir.splitlines():
        m = re.search(r"tt\.(load|store) (%[\w.#]+).* : tensor<([\dx]+)x!tt\.ptr<(\w+)>, (#blocked\d*)>", line)
        if not m:
            continue
        kind, ptr, shape, ety, layout = m.groups()
        arg = root(ptr)
        if arg in (MAIN_LOADS if kind == "load" else MAIN_STORES):
            found.append((kind, arg, ety, [int(x) for x in shape.split("x")], layouts.get(layout, {})))
    return found


def global_accesses(ptx, op):
    """PTX global loads (op "ld") or stores ("st") by width: {"v4.b32": n, ...}."""
    counts = collections.Counter()
    for m in re.finditer(rf"\b{op}\.global((?:\.[a-z]+\d*)*?)(\.v\d)?\.(b\d+|[uf]\d+)\b", ptx):
        counts[((m.group(2) or ".v1") + "." + m.group(3))[1:]] += 1
    return dict(counts)


def _bytes(width):
    """Bytes of one PTX access, from its width key ("v4.b32" → 16)."""
    v, b = width.split(".")
    return int(v[1:]) * int(b[1:]) // 8


ELEMENT_BYTES = {"fp32": 4, "f32": 4, "fp16": 2, "f16": 2, "bf16": 2}


def vector_problems(row):
    """Why a vector-pattern variant's main accesses are not vector wide (empty if they are)."""
    layout, vec = row["constexprs"].get("LAYOUT", 0), row["constexprs"].get("VEC", 1)
    if row["error"] is not None or not row["vector_check"] or layout == 0 or vec == 1:
        return []
    problems = []
    if not any(kind == "load" for kind, *_ in row["access"]):
        problems.append("no main load found in the TTGIR")
    for kind, arg, ety, shape, fields in row["access"]:
        contiguous = 0 if layout == 1 or len(shape) == 1 else len(shape) - 1
        order, per = fields.get("order", []), fields.get("sizePerThread", [])
        if not order or order[0] != contiguous:
            problems.append(f"{kind} of {arg}: order {order} does not put dimension {contiguous} first")
        elif per[contiguous] < vec:
            problems.append(f"{kind} of {arg}: sizePerThread {per} gives fewer than {vec} contiguous elements")
    want = vec * ELEMENT_BYTES[DTYPES[row["dtype"]]]
    for kind, counts in (("load", row["ptx_loads"]), ("store", row["ptx_stores"])):
        n_main = sum(1 for k, *_ in row["access"] if k == kind)
        n_vec = sum(n for w, n in counts.items() if _bytes(w) >= want)
        if n_vec < n_main:
            problems.append(f"PTX: {n_vec} global {kind}s of {want} bytes or more for {n_main} main {kind}s")
    return problems


def _fmt_layout(fields):
    return f"order {fields.get('order')} sizePerThread {fields.get('sizePerThread')}"


def _fmt_counts(counts):
    return " ".join(f"{w}:{n}" for w, n in sorted(counts.items(), key=lambda kv: (-_bytes(kv[0]), kv[0]))) or "-"


def evidence_rows(rows):
    """One line per kernel, dtype, pattern and architecture, over its configurations."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r["error"] is None and r["vector_check"]:
            ce = r["constexprs"]
            groups[(r["kernel"], r["dtype"], ce["LAYOUT"], ce["VEC"], r["arch"])].append(r)
    out = []
    for (name, dtype, layout, vec, arch), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2], kv[0][4])):
        loads = sorted({f"{a} {_fmt_layout(f)}" for k, a, e, s, f in rs[0]["access"] if k == "load"})
        stores = sorted({f"{a} {_fmt_layout(f)}" for k, a, e, s, f in rs[0]["access"] if k == "store"})
        out.append(dict(kernel=name, dtype=dtype, pattern=PATTERNS[layout], vec=vec, arch=arch,
                        configs=len(rs), regs=(min(r["regs"] for r in rs), max(r["regs"] for r in rs)),
                        spills=sum(bool(r["spill_stores"]) for r in rs),
                        loads="; ".join(loads), stores="; ".join(stores),
                        ptx_loads=_fmt_counts(rs[0]["ptx_loads"]), ptx_stores=_fmt_counts(rs[0]["ptx_stores"]),
                        vector_ok=not any(vector_problems(r) for r in rs)))
    return out


MARKDOWN_INTRO = """# Triton kernels: static evidence

Written by `python benchmarks/triton_compile.py --write {path}`, which compiled the
kernels of `bckd_kernels/triton_ops.py` with the real Triton compiler on a machine
without a GPU ({versions}; targets {targets}; {n} variants). No GPU timings were
measured and none are given here: what a GPU run takes stays to be measured
(`benchmarks/bench_losses.py`).

One row per kernel, input dtype, access pattern and target, over the autotune
configurations the kernel keeps for that pattern (`configs`). The pattern and the
vector width `VEC` (elements) are what the host picks for a typical input: head maps
`[16, C, 100, 168]` (C = 80 for BCDL, 68 for DFL) in channels_last (channels
contiguous) and NCHW (locations contiguous) memory format, and 358,400 boxes
`[N, 4]`, contiguous and column-major. DFL maps of 16-bit types use 8-byte vectors
(`_DFL_VECTOR_BYTES`). Main loads and stores are those of the inputs (`zs`, `zt`,
`p`, `t`, `rs`, `rt`) and of the full-size gradients (`g`, `gp`, `gt`), with the
`#blocked` layout of their TTGIR: `order` lists the dimensions fastest first, and
`sizePerThread` along the first must be `VEC`. PTX global accesses (of the row's
first configuration, per-location weights, gradients and losses included) are
counted per instruction by width (`v4.b32` is 16 bytes, `v2.b32` 8, `v1.b16` one
16-bit element).
`vectorised` is the `--check` verdict; "-" for the element-by-element pattern.
Registers and spills are those of every compiled configuration; other code paths
(beta modes, weight or none, class and bin tiles) are compiled by the check too
and are not listed.
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
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities (default 80 90)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a compile error, a spill or a main access that is not vector wide")
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
    failures = []
    for (name, arch), rs in sorted(by_kernel.items()):
        ok = [r for r in rs if r["error"] is None]
        spills = [r for r in ok if r["spill_stores"]]
        regs = f"{min(r['regs'] for r in ok)}-{max(r['regs'] for r in ok)}" if ok else "-"
        print(f"{name:<20} {'sm_' + str(arch):>5} {len(rs):>8} {len(ok):>8} {regs:>10} {len(spills):>6}")
        failures += [r for r in rs if r["error"] is not None] + spills
        failures += [r for r in ok if not r["spill_stores"] and vector_problems(r)]
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
    for r in failures:
        what = r["error"] or (f"spills: {r['spill_stores']} local stores, {r['regs']} registers, stack {r['stack']} B"
                              if r["spill_stores"] else "not vectorised: " + "; ".join(vector_problems(r)))
        print(f"FAILED {r['kernel']} sm_{r['arch']} {r['dtype']} {r['constexprs']} {r['config']}: {what}")
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
