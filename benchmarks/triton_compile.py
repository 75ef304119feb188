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
load cannot hide behind a vector load of the per-location weights. These
variants compile pointers as 16-byte aligned, as Triton specialises them at run
time for fresh tensors, and integer arguments as unspecialised (the kernels
pass the sizes that must be multiples of the vector width themselves). Then it
compiles the specialisations that really run (runtime_cases): Triton's own
rule applied to the arguments the ops pass for typical inputs, misaligned views
(a storage offset of one element), sizes of 1 (integers equal to 1 become
constants) and sizes and strides of 2^31 and more (64-bit integers).
``--check`` exits non-zero on any compile error, any spill, any main load or
store that is not vectorised as intended (where its pointer is aligned) and
any configurations of one pattern that reduce in different orders. ``--show-layouts`` prints every ``#blocked`` layout of
each kernel's default variant; ``--write`` writes the evidence as Markdown.
Reading the compiled code and its rules: benchmarks/triton_asm.py.

Run it without ``TRITON_INTERPRET``: the kernels must be defined for a GPU.
"""

import argparse
import concurrent.futures
import functools
import math
import os
import sys
import tempfile
import time
import types

from triton_asm import DTYPES, accesses_by_argument, global_accesses, main_accesses, reductions, resource_usage
from triton_report import print_report, write_markdown

# Pointers to per-location float32 vectors; every other pointer has the
# inputs' dtype (bckd_kernels.triton follows this naming).
FLOAT32_POINTERS = {"w_ptr", "loss_ptr", "mad_ptr", "coef_ptr", "gl_ptr"}
FLOAT_SCALARS = {"beta", "eps"}


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


# ------------------------------------------------- run-time specialisations ----
#
# Triton's launcher specialises every argument from its value: a pointer is
# marked 16-byte aligned only when it is, an integer equal to 1 becomes a
# constant of the code, one that is a multiple of 16 is marked so, and one of
# 2^31 or more is 64-bit. The variants above compile every pointer as aligned
# and every integer as a plain i32. The cases below compile what the launcher
# compiles for real inputs: each op runs on meta tensors up to its launch, and
# Triton's own rule (native_specialize_impl, which its binder calls) reads the
# arguments it passes.


def _meta(shape, dtype, layout="nchw", offset=0):
    """A meta tensor of ``shape`` in ``layout`` ("nchw" or "rows": row-major;
    "channels_last"; "rows_transposed": column-major) that starts ``offset``
    elements into its storage."""
    import torch

    order = {"channels_last": (0, 2, 3, 1), "rows_transposed": (1, 0)}.get(layout, tuple(range(len(shape))))
    buf = torch.empty(math.prod(shape) + offset, dtype=dtype, device="meta")[offset:]
    return buf.view([shape[d] for d in order]).permute(sorted(range(len(order)), key=order.__getitem__))


def runtime_cases(dtype):
    """(case, op, arguments) per op, forward and backward: typical inputs (their
    strides of 1 become constants), views one element into their storage
    (misaligned pointers, per-location weights and upstream gradients
    included), one location (sizes of 1) and sizes and strides of 2^31 and more
    (64-bit)."""
    import torch

    dt, f32 = getattr(torch, dtype), torch.float32
    big = 2 ** 31 + 16
    maps = [("typical", (16, 100, 168), "nchw", 0), ("typical", (16, 100, 168), "channels_last", 0),
            ("misaligned", (16, 100, 168), "nchw", 1), ("misaligned", (16, 100, 168), "channels_last", 1),
            ("one location", (1, 1, 1), "nchw", 0),
            ("64-bit", (2, 65536, 32800), "nchw", 0), ("64-bit", (2, 65536, 32800), "channels_last", 0)]
    boxes = [("typical", 358400, "rows", 0), ("typical", 358400, "rows_transposed", 0),
             ("misaligned", 358400, "rows", 1), ("misaligned", 358400, "rows_transposed", 1),
             ("one location", 1, "rows", 0), ("64-bit", big, "rows", 0), ("64-bit", big, "rows_transposed", 0)]
    out = []
    for case, (b, h, w), layout, offset in maps:
        per_loc = _meta((b, h, w), f32, offset=offset)
        s, t = (_meta((b, 80, h, w), dt, layout, offset) for _ in range(2))
        out += [(f"{case} {layout}", "bin_cls_distill_triton", (s, t, per_loc, 1.0)),
                (f"{case} {layout}", "_bin_cls_distill_backward_triton", (per_loc, s, t, per_loc, 1.0))]
        s, t = (_meta((b, 68, h, w), dt, layout, offset) for _ in range(2))
        out += [(f"{case} {layout}", "dfl_giou_distill_triton", (s, t, 16, 1e-6)),
                (f"{case} {layout}", "_dfl_giou_distill_backward_triton", (per_loc, s, t, 16, 1e-6))]
    for case, n, layout, offset in boxes:
        p, t = (_meta((n, 4), dt, layout, offset) for _ in range(2))
        g = _meta((n,), f32, offset=offset)
        out += [(f"{case} {layout}", "paired_giou_triton", (p, t, 1e-6)),
                (f"{case} {layout}", "_paired_giou_backward_triton", (g, p, t, 1e-6))]
    return out


class _Launched(Exception):
    """Raised by _Recorder at a launch, with the kernel and its arguments."""


class _Recorder:
    """Stands in for wrap_triton in the op modules: stops the op at its launch."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return self.launch

    def launch(self, *args, **kwargs):
        raise _Launched(self.kernel, args, kwargs)


def launch(ops, op, args):
    """(kernel, arguments, keyword arguments) of the launch torch.ops.bckd.<op>
    makes for ``args``, through its own checks and planning."""
    import torch

    modules = [m for m in vars(ops).values() if isinstance(m, types.ModuleType) and hasattr(m, "wrap_triton")]
    saved = [m.wrap_triton for m in modules]
    try:
        for m in modules:
            m.wrap_triton = _Recorder
        getattr(torch.ops.bckd, op)(*args)
    except _Launched as launched:
        return launched.args
    finally:
        for m, w in zip(modules, saved):
            m.wrap_triton = w
    raise SystemExit(f"{op} launched no kernel")


def specialisation(fn, args, kwargs):
    """What Triton's launcher compiles ``fn`` as for these arguments:
    (signature, constants, attributes, what), ``what`` naming the pointers not
    marked aligned, the integers made constants and the 64-bit ones."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    values = dict(zip(fn.arg_names, args), **kwargs)
    sig, consts, attrs = {}, {}, {}
    for i, (name, p) in enumerate(zip(fn.arg_names, fn.params)):
        if p.is_constexpr:
            sig[name] = "constexpr"
            if name in values:
                consts[name] = values[name]
            continue
        sig[name], attr = native_specialize_impl(CUDABackend, values[name], p.is_const, not p.do_not_specialize,
                                                 not p.do_not_specialize_on_alignment)
        if sig[name] == "constexpr":
            consts[name] = values[name]
        elif isinstance(attr, str):
            attrs[(i,)] = CUDABackend.parse_attr(attr)
    what = {"misaligned": [n for i, n in enumerate(fn.arg_names) if n.endswith("_ptr") and not attrs.get((i,))],
            "= 1": [n for n in fn.arg_names[:len(args)] if sig[n] == "constexpr"],
            "i64": [n for n in fn.arg_names if sig[n] == "i64"]}
    return sig, consts, attrs, what


def runtime_jobs(ops, archs):
    """Compile jobs of the run-time cases, in float32, and in bfloat16 (whose
    vectors hold 8 elements) the typical and misaligned ones: every
    configuration the kernel keeps where it reduces over a channel tile
    (REDUCING), the heaviest elsewhere. Main accesses are checked for vector
    width where their pointers are aligned."""
    from triton_asm import MAIN_LOADS, MAIN_STORES

    names = {id(t): n for n, t in kernels(ops).items()}
    jobs = []
    for dtype in ("float32", "bfloat16"):
        for case, op, args in runtime_cases(dtype):
            if dtype != "float32" and not case.startswith(("typical", "misaligned")):
                continue
            tuner, call, kwargs = launch(ops, op, args)
            name = names[id(tuner)]
            sig, consts, attrs, what = specialisation(tuner.fn, call, kwargs)
            live = live_configs(tuner, kwargs)
            if name not in REDUCING:
                live = [max(live, key=lambda i: elements_per_thread(tuner.configs[i], kwargs))]
            aligned = not set(what["misaligned"]) & (MAIN_LOADS | MAIN_STORES)
            described = "; ".join(f"{k} {', '.join(v)}" for k, v in what.items() if v) or "-"
            jobs += [(name, dtype, kwargs, i, aligned, arch, (case, sig, consts, attrs, described))
                     for arch in archs for i in live]
    return jobs


@functools.cache
def _ops():
    """The package bckd_kernels.triton, its modules (common, bcdl, giou, dfl) as attributes."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("unset TRITON_INTERPRET: this compiles the kernels for a GPU")
    import bckd_kernels.triton

    return bckd_kernels.triton


def compile_one(job):
    """Compiles one variant; returns a result row (never raises). ``case``: None
    for a variant (every pointer aligned, every integer an i32), else a
    run-time case's (name, signature, constants, attributes, description)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, dtype, constexprs, config_index, vector_check, arch, case = job
    tuner = kernels(_ops())[name]
    config = tuner.configs[config_index]
    if case is None:
        ce = dict(constexprs, **config.kwargs)
        sig = signature(tuner.fn, dtype, ce)
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(tuner.fn.arg_names) if n.endswith("_ptr")}
    else:
        _, sig, consts, attrs, _ = case
        ce = dict(consts, **config.kwargs)
    row = dict(kernel=name, dtype=dtype, arch=arch, config=dict(config.kwargs, num_warps=config.num_warps, maxnreg=config.maxnreg),
               constexprs=constexprs, vector_check=vector_check, error=None, regs=None, stack=None, spill_stores=None, ttgir=None, main_accesses=None,
               ptx_loads=None, ptx_stores=None, ptx_by_arg=None, reductions=None,
               case=None if case is None else case[0], specialised=None if case is None else case[4])
    start = time.perf_counter()
    try:
        src = ASTSource(tuner.fn, sig, ce, attrs)
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

    jobs = [(*v, arch, None) for arch in args.arch for v in variants(_ops())] + runtime_jobs(_ops(), args.arch)
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
    failures = print_report(rows, args.arch, args.show_layouts)
    if args.write:
        write_markdown(args.write, rows, f"triton {triton.__version__}, torch {torch.__version__}", args.arch)
    if args.check and failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
