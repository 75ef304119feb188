"""Checks of the CUDA kernels that need no GPU.

    python benchmarks/cuda_static.py                       # sm_80 and sm_90, table on stdout
    python benchmarks/cuda_static.py --md benchmarks/results/cuda_static.md

1. Compiles each csrc/cuda/*.cu the way the extension build does (torch's nvcc
   defines, -O3, C++20) for each architecture with ``-Xptxas -v`` and reads,
   per kernel: registers, spill stores/loads and stack frame (local memory).
2. Disassembles the objects (``cuobjdump --dump-sass``) and counts per kernel
   the global loads by width (LDG ... .128 = 16 bytes, .64 = 8 bytes, plain =
   4 bytes or less), 128-bit global stores and local-memory accesses (LDL/STL).
3. Builds and runs benchmarks/cuda_access_check.cpp, a host-only check of
   the rule that picks each call's access (csrc/cuda/access.h) and of every
   further decision of the launchers (csrc/cuda/launch.h).

Tools: nvcc from CUDA_HOME (default /usr/local/cuda); cuobjdump and nvdisasm
from PATH, CUDA_HOME/bin, or the pip packages nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm (``pip install --target DIR ...`` and ``--tools DIR/nvidia/cu13/bin``).
"""

import argparse
import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFINES = ["-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "--expt-relaxed-constexpr"]


def find_tool(name, dirs):
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return shutil.which(name)


def torch_includes():
    base = os.path.join(os.path.dirname(torch.__file__), "include")
    return [base, os.path.join(base, "torch", "csrc", "api", "include")]


def compile_cu(nvcc, src, archs, workdir):
    """(object path, ptxas report) of one .cu compiled for every arch."""
    obj = os.path.join(workdir, os.path.basename(src) + ".o")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    includes = [f"-I{p}" for p in torch_includes() + [os.path.join(os.path.dirname(os.path.dirname(nvcc)), "include")]]
    cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++20", "-Xptxas", "-v", "--compiler-options", "-fPIC",
           *DEFINES, *includes, *gencode]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"nvcc failed on {src}:\n{run.stderr[-4000:]}")
    return obj, run.stdout + run.stderr


def short_name(mangled, cache={}):
    if mangled not in cache:
        name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
        name = re.sub(r"bckd::cuda::\(anonymous namespace\)::", "", name)
        name = re.sub(r"c10::(BFloat16|Half)", lambda m: {"BFloat16": "bf16", "Half": "f16"}[m.group(1)], name)
        name = name.replace("float", "f32").replace("double", "f64").replace("(bckd::", "(")
        name = re.sub(r"\(.*\)$", "", name).replace("true", "T").replace("false", "F")
        cache[mangled] = name
    return cache[mangled]


def parse_ptxas(report):
    """{(kernel, arch): dict(regs, stack, spill_st, spill_ld)}, read function by function:
    each entry's registers from the "Used" line of its own block, its stack and spills from
    the "Function properties" line that names it (a callee's properties name the callee)."""
    out, props, entry = {}, {}, None
    lines = report.splitlines()
    for i, line in enumerate(lines):
        m = re.search(r"Compiling entry function '(\S+)' for '(sm_\d+)'", line)
        if m:
            entry = m.groups()
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m and i + 1 < len(lines):
            n = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", lines[i + 1])
            if n and entry is not None:
                props[(m.group(1), entry[1])] = dict(stack=int(n.group(1)), spill_st=int(n.group(2)),
                                                     spill_ld=int(n.group(3)))
            continue
        m = re.search(r"Used (\d+) registers", line)
        if m and entry is not None and entry in props:
            out[entry] = dict(props[entry], regs=int(m.group(1)))
            entry = None
    return out


# Bytes per element of each dtype as short_name writes it.
SIZE = {"f32": 4, "f16": 2, "bf16": 2, "f64": 8}


def expected_vectors(name):
    """The least count of each vector access a kernel variant must show in its machine code,
    from its template arguments (short_name): a vector variant that fell back to narrower
    accesses fails the check. {} for the scalar variants."""
    m = re.fullmatch(r"void bcdl_(forward|backward)_(?:loc|chan)<(\w+), \d+, (\d+)>", name)
    if m:
        if int(m.group(3)) == 1:
            return {}
        return {"ldg128": 1, **({"stg128": 1} if m.group(1) == "backward" else {})}
    m = re.fullmatch(r"void dfl_chan<(\w+), (\d+), ([TF])>", name)
    if m:
        width = int(m.group(2)) * SIZE[m.group(1)]
        backward = m.group(3) == "T"
        if width == 16:
            return {"ldg128": 1, **({"stg128": 1} if backward else {})}
        return {"ldg64": 1} if width == 8 else {}
    m = re.fullmatch(r"void giou_(forward|backward)_kernel<(\w+), T>", name)
    if m:
        box = 4 * SIZE[m.group(2)]  # one box's bytes, read as 16- or 8-byte words
        loads = {"ldg128": 2 * box // 16} if box >= 16 else {"ldg64": 2}
        stores = {"stg128": box // 16} if m.group(1) == "backward" and box >= 16 else {}
        return {**loads, **stores}
    return {}


def vector_problems(name, counts):
    """What a kernel's counts miss of expected_vectors(name), one line each."""
    return [f"{name}: {counts.get(k, 0)} {k.upper().replace('128', '.128').replace('64', '.64')}, expected >= {n}"
            for k, n in expected_vectors(name).items() if counts.get(k, 0) < n]


def parse_sass(cuobjdump, obj, arch):
    """{kernel: counts} of one arch's machine code."""
    run = subprocess.run([cuobjdump, "--dump-sass", "-arch", arch, obj], capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"cuobjdump failed on {obj}: {run.stderr[-2000:]}")
    out, name = {}, None
    for line in run.stdout.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[name] = dict(ldg128=0, ldg64=0, ldg=0, stg128=0, local=0)
            continue
        if name is None:
            continue
        m = re.search(r"\b(LDG|STG|LDL|STL)(\.[A-Z0-9_]+)*", line)
        if not m:
            continue
        op, mods = m.group(1), m.group(0)
        c = out[name]
        if op == "LDG":
            c["ldg128" if ".128" in mods else "ldg64" if ".64" in mods else "ldg"] += 1
        elif op == "STG" and ".128" in mods:
            c["stg128"] += 1
        elif op in ("LDL", "STL"):
            c["local"] += 1
    return out


def access_check():
    src = os.path.join(ROOT, "benchmarks", "cuda_access_check.cpp")
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "access_check")
        cxx = os.environ.get("CXX", "c++")
        build = subprocess.run([cxx, "-std=c++20", "-O1", *[f"-I{p}" for p in torch_includes()], src, "-o", exe],
                               capture_output=True, text=True)
        if build.returncode != 0:
            return False, build.stderr[-3000:]
        run = subprocess.run([exe], capture_output=True, text=True)
        return run.returncode == 0, run.stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default="80,90", help="compute capabilities, comma-separated")
    parser.add_argument("--tools", action="append", default=[], help="a folder holding cuobjdump / nvdisasm")
    parser.add_argument("--md", default=None, help="also write the report to this Markdown file")
    args = parser.parse_args(argv)

    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    dirs = args.tools + [os.path.join(cuda_home, "bin")]
    nvcc = find_tool("nvcc", [os.path.join(cuda_home, "bin")])
    cuobjdump = find_tool("cuobjdump", dirs)
    nvdisasm = find_tool("nvdisasm", dirs)
    if nvcc is None or cuobjdump is None or nvdisasm is None:
        sys.exit("needs nvcc, cuobjdump and nvdisasm: see this script's docstring")
    os.environ["PATH"] = os.path.dirname(nvdisasm) + os.pathsep + os.environ["PATH"]  # cuobjdump runs nvdisasm
    archs = args.archs.split(",")
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
    sources = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))

    lines = [f"nvcc: {version}; torch {torch.__version__}; archs sm_{', sm_'.join(archs)}", ""]
    with tempfile.TemporaryDirectory() as workdir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            compiled = list(pool.map(lambda s: compile_cu(nvcc, s, archs, workdir), sources))
        problems = []
        for src, (obj, report) in zip(sources, compiled):
            ptxas = parse_ptxas(report)
            lines += [f"## {os.path.relpath(src, ROOT)}", "",
                      "| kernel | arch | regs | spill st/ld B | stack B | LDG.128 | LDG.64 | LDG ≤32 | STG.128 | LDL+STL |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for arch in archs:
                sass = parse_sass(cuobjdump, obj, f"sm_{arch}")
                for kernel in sorted(sass, key=short_name):
                    r = ptxas.get((kernel, f"sm_{arch}"))
                    c = sass[kernel]
                    if r is None:
                        problems.append(f"no ptxas report for {kernel} sm_{arch}")
                        continue
                    if r["spill_st"] or r["spill_ld"] or r["stack"] or c["local"]:
                        problems.append(f"local memory in {short_name(kernel)} sm_{arch}")
                    problems += [f"{p} (sm_{arch})" for p in vector_problems(short_name(kernel), c)]
                    lines.append(
                        f"| {short_name(kernel)} | sm_{arch} | {r['regs']} | {r['spill_st']}/{r['spill_ld']} | "
                        f"{r['stack']} | {c['ldg128']} | {c['ldg64']} | {c['ldg']} | {c['stg128']} | {c['local']} |"
                    )
            lines.append("")
    ok, text = access_check()
    lines += ["## access rule (benchmarks/cuda_access_check.cpp, host only)", "", text, ""]
    if not ok:
        problems.append("access rule check failed")
    lines += ["## problems", ""] + ([f"- {p}" for p in problems] or ["none: no spills, no stack frame, no LDL/STL"])
    report = "\n".join(lines)
    print(report)
    if args.md:
        with open(args.md, "w") as f:
            f.write("# Static checks of the CUDA kernels (no GPU)\n\n")
            f.write("Written by `python benchmarks/cuda_static.py --md benchmarks/results/cuda_static.md`.\n\n")
            f.write(report + "\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
