"""Reads what the Triton compiler wrote for one kernel, and checks it
(benchmarks/triton_compile.py compiles the kernels and calls these): registers,
stack and spill stores from the cubin's machine code (``cuobjdump``); from the
TTGIR the ``#blocked`` layouts, the layout of every main load and store and the
spread of every reduction; from the PTX every global access by width, traced
back to the pointer argument its address is built from. No GPU needed.

Rows: one compiled variant each, as triton_compile.compile_one returns them.
"""

import collections
import os
import re
import subprocess
import tempfile

from bckd_kernels.triton.common import LOCATIONS, STRIDED

# The inputs whose reads, and the outputs whose writes, must be vector wide.
MAIN_LOADS = {"zs_ptr", "zt_ptr", "p_ptr", "t_ptr", "rs_ptr", "rt_ptr"}
MAIN_STORES = {"g_ptr", "gp_ptr", "gt_ptr"}
# The inputs' dtypes, by torch's name: Triton's name and bytes per element.
DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
ELEMENT_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


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


def blocked_layouts(ttgir):
    return sorted(set(re.findall(r"#blocked\d* = #ttg\.blocked<\{[^}]*\}>", ttgir)))


def _layout_table(ttgir):
    table = {}
    for name, body in re.findall(r"^(#blocked\d*) = #ttg\.blocked<\{([^}]*)\}>", ttgir, re.M):
        fields = dict(re.findall(r"(\w+) = \[([\d, ]*)\]", body))
        table[name] = {k: [int(x) for x in v.split(",") if x.strip()] for k, v in fields.items()}
    return table


_REDUCE = re.compile(r'"tt\.reduce"\((%[\w.#]+)\) <\{axis = (\d+) : i32\}> \(\{(.*?)\}\) : \((tensor<.*?)\) -> ', re.S)


def reductions(ttgir):
    """Every tt.reduce of the TTGIR, in program order: (combining ops, axis,
    extent of the reduced axis, and how its layout spreads that axis:
    sizePerThread, threadsPerWarp and warpsPerCTA along it, or the layout's
    text where it is not a #blocked one). Two compilations whose lists are
    equal add (and take maxima) in the same order: within a thread, then
    across its lanes, then across warps, each as the layout along the axis
    says."""
    layouts = _layout_table(ttgir)
    out = []
    for _, axis, region, operand in _REDUCE.findall(ttgir):
        m = re.match(r"tensor<([\dx]+)x\w+, (#[\w.]+)(.*)>$", operand.strip())
        if not m:
            raise ValueError(f"tt.reduce of an operand not understood: {operand}")
        shape, layout, rest = m.groups()
        axis = int(axis)
        combine = "+".join(sorted(set(re.findall(r"arith\.(\w+)", region))))
        extent = [int(x) for x in shape.split("x")][axis]
        fields = layouts.get(layout) if not rest else None
        if fields:
            spread = tuple(fields[k][axis] for k in ("sizePerThread", "threadsPerWarp", "warpsPerCTA"))
        else:
            spread = layout + rest
        out.append((combine, axis, extent, spread))
    return out


def reduction_mismatches(rows):
    """Pairs of compiled rows of one kernel, dtype, architecture, set of
    constexprs and run-time case (the configurations kept for one access
    pattern and channel tile) whose reductions (``reductions``) differ: (first
    row, other row)."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r["error"] is None and r.get("reductions") is not None:
            key = (r["kernel"], r["dtype"], r["arch"], tuple(sorted(r["constexprs"].items())), r.get("case"))
            groups[key].append(r)
    return [(rs[0], r) for rs in groups.values() for r in rs[1:] if r["reductions"] != rs[0]["reductions"]]


def fmt_reduction(reduction):
    combine, axis, extent, spread = reduction
    if isinstance(spread, tuple):
        return f"{extent} = {spread[0]}/{spread[1]}/{spread[2]}"
    return f"{extent} in {spread}"


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


def accesses_by_argument(ptx, params):
    """{argument: {"load" or "store": {width: count}}}: each PTX global access
    under the pointer argument its address comes from, traced back through the
    64-bit registers that build it to the kernel parameter it was loaded from
    (params: the kernel's parameters in order)."""
    entry = re.search(r"\.entry (\w+)\(", ptx).group(1)
    defs = collections.defaultdict(list)
    for line in ptx.splitlines():
        m = re.match(r"\s*(?:@!?%p\w+\s+)?([a-z][\w.]*)\s+(%rd\d+),\s*([^;]*);", line)
        if m:
            defs[m.group(2)].append((m.group(1), m.group(3)))

    def pointer_params(reg, seen):
        if reg in seen:
            return set()
        seen.add(reg)
        found = set()
        for op, operands in defs.get(reg, []):
            param = re.search(rf"{entry}_param_(\d+)", operands) if op.startswith("ld.param") else None
            if param:
                i = int(param.group(1))
                if i < len(params) and params[i].endswith("_ptr"):
                    found.add(params[i])
            else:
                for source in re.findall(r"%rd\d+", operands):
                    found |= pointer_params(source, seen)
        return found

    out = {}
    for m in re.finditer(r"\b(ld|st)\.global((?:\.[a-z]+\d*)*?)(\.v\d)?\.(b\d+|[uf]\d+)\s+([^;]*);", ptx):
        address = re.search(r"\[\s*(%rd\d+)", m.group(5))
        if address is None:
            continue
        width = ((m.group(3) or ".v1") + "." + m.group(4))[1:]
        for arg in pointer_params(address.group(1), set()):
            counts = out.setdefault(arg, {}).setdefault("load" if m.group(1) == "ld" else "store", {})
            counts[width] = counts.get(width, 0) + 1
    return out


def access_bytes(width):
    """Bytes of one PTX access, from its width key ("v4.b32" → 16)."""
    v, b = width.split(".")
    return int(v[1:]) * int(b[1:]) // 8


def vector_problems(row):
    """Why a vector-pattern variant's main accesses are not vector wide (empty if they are)."""
    access, vec = row["constexprs"].get("ACCESS", STRIDED), row["constexprs"].get("VEC", 1)
    if row["error"] is not None or not row["vector_check"] or access == STRIDED or vec == 1:
        return []
    problems = []
    if not any(kind == "load" for kind, *_ in row["main_accesses"]):
        problems.append("no main load found in the TTGIR")
    for kind, arg, ety, shape, fields in row["main_accesses"]:
        contiguous = 0 if access == LOCATIONS or len(shape) == 1 else len(shape) - 1
        order, per = fields.get("order", []), fields.get("sizePerThread", [])
        if not order or order[0] != contiguous:
            problems.append(f"{kind} of {arg}: order {order} does not put dimension {contiguous} first")
        elif per[contiguous] < vec:
            problems.append(f"{kind} of {arg}: sizePerThread {per} gives fewer than {vec} contiguous elements")
    want = vec * ELEMENT_BYTES[row["dtype"]]
    for kind, arg in sorted({(kind, arg) for kind, arg, *_ in row["main_accesses"]}):
        counts = (row["ptx_by_arg"] or {}).get(arg, {}).get(kind, {})
        narrow = {w: n for w, n in counts.items() if access_bytes(w) < want}
        if not counts:
            problems.append(f"PTX: no global {kind} traced to {arg}")
        elif narrow:
            problems.append(f"PTX: {kind}s of {arg} narrower than {want} bytes: {narrow}")
    return problems


# Spills the check finds in run-time cases and that are not fixed yet, by
# (kernel, case, BLOCK_L), with why: reported, not failed. An entry whose rows
# no longer spill fails the check, so that the list stays true.
KNOWN_SPILLS = {
    ("_dfl_fwd_kernel", "misaligned channels_last", 32):
        "sm_80 and sm_90, float32 and bfloat16: with scalar loads (the pointers are not 16-byte aligned) the "
        "32-location tile reaches maxnreg 160 with 48-49 local stores, the 16-location one does not (108-116 "
        "registers); the autotuner's key does not hold alignment, so it cannot keep 16 for misaligned maps only: "
        "that needs a kernel argument or another register limit, timed on a GPU",
}


def known_spill(row):
    """Why a row's spills are known (KNOWN_SPILLS), or None."""
    return KNOWN_SPILLS.get((row["kernel"], row.get("case"), row["config"]["BLOCK_L"]))


def _case(row):
    return f"({row['case']}: {row['specialised']}) " if row.get("case") else ""


def problems(rows):
    """Why --check fails, one line each: compile errors, spills (but those of
    KNOWN_SPILLS, and those that left it), main accesses that are not vector
    wide, and configurations kept for one access pattern and channel tile
    whose reductions differ (so that the autotuner's choice, which depends on
    timing, would change the bits of the result)."""
    out = []
    for r in rows:
        if r["error"] is not None:
            what = r["error"]
        elif r["spill_stores"] and not known_spill(r):
            what = f"spills: {r['spill_stores']} local stores, {r['regs']} registers, stack {r['stack']} B"
        elif vector_problems(r):
            what = "not vectorised: " + "; ".join(vector_problems(r))
        else:
            continue
        out.append(f"FAILED {r['kernel']} sm_{r['arch']} {r['dtype']} {_case(r)}{r['constexprs']} {r['config']}: {what}")
    for key in KNOWN_SPILLS:
        matching = [r for r in rows if r["error"] is None and (r["kernel"], r.get("case"), r["config"]["BLOCK_L"]) == key]
        if matching and not any(r["spill_stores"] for r in matching):
            out.append(f"FAILED KNOWN_SPILLS {key}: it no longer spills; remove it from the list")
    for a, b in reduction_mismatches(rows):
        fmt = lambda r: "; ".join(fmt_reduction(x) for x in r["reductions"]) or "none"  # noqa: E731
        out.append(f"FAILED {a['kernel']} sm_{a['arch']} {a['dtype']} {_case(a)}{a['constexprs']}: the configurations "
                   f"{a['config']} and {b['config']} reduce in different orders (extent = per thread/lanes/warps: "
                   f"{fmt(a)} vs {fmt(b)})")
    return out
