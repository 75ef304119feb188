"""The tables of benchmarks/triton_compile.py: printed, and written as Markdown
(benchmarks/results/triton_static.md)."""

import collections

from bckd_kernels.triton.common import STRIDED
from triton_asm import (DTYPES, access_bytes, blocked_layouts, fmt_reduction, known_spill, problems,
                        reduction_mismatches, vector_problems)

# The access patterns' names, by their value of ACCESS (bckd_kernels.triton.common:
# CHANNELS, LOCATIONS, STRIDED).
PATTERNS = {2: "channels contiguous", 1: "locations contiguous", 0: "other strides"}


def _fmt_layout(fields):
    return f"order {fields.get('order')} sizePerThread {fields.get('sizePerThread')}"


def _fmt_counts(counts):
    return " ".join(f"{w}:{n}" for w, n in sorted(counts.items(), key=lambda kv: (-access_bytes(kv[0]), kv[0]))) or "-"


def evidence_rows(rows):
    """One line per kernel, dtype, pattern and architecture, over its configurations."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r["error"] is None and r["vector_check"] and r.get("case") is None:
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
        if r["error"] is None and r["reductions"] and r.get("case") is None:
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



def case_rows(rows):
    """One line per run-time case, kernel, dtype and architecture, over its
    configurations: the access pattern and VEC the host picked, how Triton
    specialised the arguments, registers, spills, whether the main accesses
    are vector wide ("-" where a main pointer is misaligned or the pattern has
    no vectors) and whether the configurations reduce alike."""
    groups = collections.defaultdict(list)
    for r in rows:
        if r.get("case") is not None:
            groups[(r["case"], r["kernel"], r["dtype"], r["arch"])].append(r)
    bad = {id(r) for pair in reduction_mismatches(rows) for r in pair}
    out = []
    for (case, name, dtype, arch), rs in sorted(groups.items()):
        ok = [r for r in rs if r["error"] is None]
        ce = rs[0]["constexprs"]
        unchecked = not rs[0]["vector_check"] or ce["ACCESS"] == STRIDED or ce["VEC"] == 1
        out.append(dict(case=case, kernel=name, dtype=dtype, arch=arch, pattern=PATTERNS[ce["ACCESS"]], vec=ce["VEC"],
                        specialised=rs[0]["specialised"], configs=len(rs), compiled=len(ok),
                        regs="-".join(sorted({str(min(r["regs"] for r in ok)), str(max(r["regs"] for r in ok))},
                                             key=int)) if ok else "-",
                        spills=sum(bool(r["spill_stores"]) for r in ok),
                        known="; ".join(sorted({known_spill(r) for r in ok if r["spill_stores"] and known_spill(r)})),
                        vectorised="-" if unchecked else ("yes" if not any(vector_problems(r) for r in rs) else "no"),
                        same=not any(id(r) in bad for r in rs)))
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


CASES_INTRO = """
## Run-time specialisations

Triton's launcher specialises every argument from its value: a pointer is marked 16-byte
aligned only when it is, an integer equal to 1 becomes a constant of the code, one that is a
multiple of 16 is marked so, and one of 2^31 or more is 64-bit. The tables above compile every
pointer as aligned and every integer as a plain 32-bit one; the check also compiles what the
launcher compiles for these inputs: each op runs on meta tensors up to its launch and Triton's
own rule reads the arguments it passes. Cases: the typical inputs above (their strides of 1
become constants), the same views one element into their storage (`misaligned`: inputs,
per-location weights and upstream gradients; their loads cannot be vector wide and are not
checked for it), one location (sizes of 1), and maps `[2, C, 65536, 32800]` and
2^31 + 16 boxes (`64-bit`). In float32, and in bfloat16 the typical and misaligned cases; every
configuration kept where the kernel reduces over a channel tile, the heaviest elsewhere.
Reductions are compared between the configurations of one case: the compiler spreads a tile
by its pointers' alignment, so a misaligned view may reduce in another order than an aligned
tensor of the same values. Spills marked known are listed, with why, in
`triton_asm.KNOWN_SPILLS`.
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
    lines += [CASES_INTRO,
              "| case | kernel | dtype | arch | pattern | VEC | specialised | configs | registers | spills "
              "| vectorised | same order |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in case_rows(rows):
        lines.append(f"| {e['case']} | {e['kernel']} | {DTYPES[e['dtype']]} | sm_{e['arch']} | {e['pattern']} | "
                     f"{e['vec']} | {e['specialised']} | {e['configs']} | {e['regs']} | "
                     f"{e['spills']}{' (known)' if e['known'] else ''} | "
                     f"{e['vectorised']} | {'yes' if e['same'] else '**no**'} |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def print_report(rows, archs, show_layouts=False):
    """Prints the tables of the compiled rows and every problem; returns the problems."""
    by_kernel = collections.defaultdict(list)
    for r in rows:
        by_kernel[(r["kernel"], r["arch"])].append(r)
    print(f"{'kernel':<20} {'arch':>5} {'variants':>8} {'compiled':>8} {'registers':>10} {'spills':>6}")
    for (name, arch), rs in sorted(by_kernel.items()):
        ok = [r for r in rs if r["error"] is None]
        spills = [r for r in ok if r["spill_stores"]]
        regs = f"{min(r['regs'] for r in ok)}-{max(r['regs'] for r in ok)}" if ok else "-"
        print(f"{name:<20} {'sm_' + str(arch):>5} {len(rs):>8} {len(ok):>8} {regs:>10} {len(spills):>6}")
    for arch in archs:
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
    print(f"{'run-time case':<26} {'kernel':<17} {'dtype':>5} {'arch':>5} {'VEC':>3} {'registers':>9} {'spills':>6} "
          f"vectorised same order  specialised")
    for e in case_rows(rows):
        print(f"{e['case']:<26} {e['kernel']:<17} {DTYPES[e['dtype']]:>5} {'sm_' + str(e['arch']):>5} {e['vec']:>3} "
              f"{e['regs']:>9} {str(e['spills']) + ('*' if e['known'] else ''):>6} {e['vectorised']:<10} {'yes' if e['same'] else 'NO':<10} "
              f"{e['specialised']}")
    for why in sorted({e["known"] for e in case_rows(rows) if e["known"]}):
        print(f"* known spill: {why}")
    failures = problems(rows)
    for line in failures:
        print(line)
    if show_layouts:
        for (name, arch), rs in sorted(by_kernel.items()):
            first = next((r for r in rs if r["ttgir"]), None)
            if first is not None:
                print(f"{name} sm_{arch} {first['dtype']} {first['config']}:")
                for layout in blocked_layouts(first["ttgir"]):
                    print("    " + layout)
    return failures
