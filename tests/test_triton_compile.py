"""Every Triton kernel compiles with the real Triton compiler for sm_80 and
sm_90, every autotune configuration, input dtype and code-path variant, and
as Triton's launcher specialises it for real inputs (misaligned, sizes of 1,
64-bit), with no register spills but the known ones, and the configurations
kept for each access pattern reduce in one order (benchmarks/triton_compile.py;
no GPU needed). The interpreter the other Triton tests use without a GPU
accepts code this compiler refuses."""

import importlib.util
import os
import subprocess
import sys

import pytest
from conftest import ROOT

pytest.importorskip("triton")
from bckd_kernels.triton.common import LOCATIONS  # noqa: E402


def test_every_triton_kernel_compiles_for_sm80_and_sm90_without_spills(capsys):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in sys.path if p])
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "triton_compile.py"), "--check"],
                          capture_output=True, text=True, env=env, timeout=1500)
    with capsys.disabled():
        print("\n" + proc.stdout.strip())
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    for arch in (80, 90):
        assert f"sm_{arch}: " in proc.stdout


def _compile_check_module():
    """benchmarks/triton_asm.py: the compile check's reading of the compiled code, and its rules."""
    path = os.path.join(ROOT, "benchmarks", "triton_asm.py")
    spec = importlib.util.spec_from_file_location("triton_asm", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A reduction as the compiler writes it in TTGIR: the BCDL forward's sum over
# its class tile, whose layout the rows below fill in.
TTGIR = """#blocked = #ttg.blocked<{sizePerThread = [SPT], threadsPerWarp = [TPW], warpsPerCTA = [WPC], order = [0, 1]}>
module attributes {"ttg.num-warps" = 4 : i32} {
      %acc_89 = "tt.reduce"(%acc_88) <{axis = 1 : i32}> ({
      ^bb0(%acc_94: f32 loc(unknown), %acc_95: f32 loc(unknown)):
        %acc_96 = arith.addf %acc_94, %acc_95 : f32 loc(#loc219)
        tt.reduce.return %acc_96 : f32 loc(#loc197)
      }) : (tensor<ROWSx16xf32, #blocked>) -> tensor<ROWSxf32, #ttg.slice<{dim = 1, parent = #blocked}>> loc(#loc197)
}
"""


def _row(check, rows, spt, tpw, wpc):
    ttgir = (TTGIR.replace("ROWS", str(rows)).replace("SPT", spt).replace("TPW", tpw).replace("WPC", wpc))
    return dict(kernel="_bcdl_fwd_kernel", dtype="float32", arch=90, config={"BLOCK_L": rows, "num_warps": 4},
                constexprs={"ACCESS": int(LOCATIONS), "VEC": 4, "BLOCK_C": 16}, error=None, regs=40, stack=0, spill_stores=0,
                vector_check=False, reductions=check.reductions(ttgir))


def test_compile_check_fails_configurations_that_reduce_in_different_orders():
    """The failure path of --check's reduction comparison, on the layouts the
    BCDL forward had with locations contiguous before its configurations were
    restricted (BLOCK_L 32 and 64, 4 warps: the 16 classes over 4 and over 2
    lanes); and its pass where only the other axis differs."""
    check = _compile_check_module()
    a = _row(check, 32, "4, 1", "8, 4", "1, 4")
    b = _row(check, 64, "4, 1", "16, 2", "1, 4")
    assert a["reductions"] == [("addf", 1, 16, (1, 4, 4))]
    assert b["reductions"] == [("addf", 1, 16, (1, 2, 4))]
    failed = check.problems([a, b])
    assert len(failed) == 1 and "reduce in different orders" in failed[0], failed
    same = _row(check, 64, "8, 1", "8, 4", "1, 4")  # more locations per thread, the classes spread alike
    assert check.problems([a, same]) == []
    other = dict(b, constexprs={"ACCESS": int(LOCATIONS), "VEC": 4, "BLOCK_C": 8})  # another tile: compared apart
    assert check.problems([a, other]) == []


# A BCDL backward's PTX as Triton writes it: the student's logits read 16 bytes at
# a time through a register built from parameter 0, the teacher's (parameter 1)
# WIDTH, and the per-location upstream gradient (parameter 2) one word at a time.
PTX = """.visible .entry _bcdl_bwd_kernel(
	.param .u64 .ptr .global .align 1 _bcdl_bwd_kernel_param_0,
	.param .u64 .ptr .global .align 1 _bcdl_bwd_kernel_param_1,
	.param .u64 .ptr .global .align 1 _bcdl_bwd_kernel_param_2,
	.param .u32 _bcdl_bwd_kernel_param_3
)
{
	ld.param.b64 	%rd1, [_bcdl_bwd_kernel_param_0];
	ld.param.b64 	%rd2, [_bcdl_bwd_kernel_param_1];
	ld.param.b64 	%rd3, [_bcdl_bwd_kernel_param_2];
	ld.param.s32 	%rd4, [_bcdl_bwd_kernel_param_3];
	mad.wide.s32 	%rd5, %r1, 4, %rd1;
	add.s64 	%rd6, %rd2, %rd4;
	mov.b64 	%rd7, %rd6;
	mad.wide.s32 	%rd8, %r2, 4, %rd3;
	@%p1 ld.global.v4.b32 { %r3, %r4, %r5, %r6 }, [ %rd5 + 0 ];
	@%p1 ld.global.WIDTH, [ %rd7 + 0 ];
	@%p1 ld.global.b32 { %r11 }, [ %rd8 + 0 ];
}
"""


def test_compile_check_fails_a_main_load_that_is_not_vector_wide():
    """Each main load is checked by itself: the teacher's scalar reads fail the check even
    though the student's and the per-location vector give as many 16-byte loads."""
    check = _compile_check_module()
    params = ["zs_ptr", "zt_ptr", "gl_ptr", "n"]
    row = dict(kernel="_bcdl_bwd_kernel", dtype="float32", constexprs={"ACCESS": int(LOCATIONS), "VEC": 4}, error=None,
               vector_check=True, main_accesses=[("load", "zs_ptr", "f32", [64, 16], {"order": [0, 1], "sizePerThread": [4, 1]}),
                                          ("load", "zt_ptr", "f32", [64, 16], {"order": [0, 1], "sizePerThread": [4, 1]})])
    wide = check.accesses_by_argument(PTX.replace("WIDTH", "v4.b32 { %r7, %r8, %r9, %r10 }"), params)
    assert wide == {"zs_ptr": {"load": {"v4.b32": 1}}, "zt_ptr": {"load": {"v4.b32": 1}},
                    "gl_ptr": {"load": {"v1.b32": 1}}}
    assert check.vector_problems(dict(row, ptx_by_arg=wide)) == []
    scalar = check.accesses_by_argument(PTX.replace("WIDTH", "b32 { %r7 }"), params)
    assert check.vector_problems(dict(row, ptx_by_arg=scalar)) == [
        "PTX: loads of zt_ptr narrower than 16 bytes: {'v1.b32': 1}"]


# Run in a process of its own, without the interpreter: the run-time cases of the
# compile check, each op's launch as Triton's launcher specialises it, and three of
# them compiled.
RUNTIME_CASES = """
import json, sys
import triton_compile as check
from triton_asm import problems
jobs = check.runtime_jobs(check._ops(), [90])
cases = sorted({(name, dtype, case[0], case[4]) for name, dtype, _, _, _, _, case in jobs})
picked = [next(j for j in jobs if j[0] == name and j[1] == "float32" and j[6][0] == case) for name, case in
          [("_bcdl_fwd_kernel", "misaligned nchw"), ("_giou_fwd_kernel", "one location rows"),
           ("_dfl_bwd_kernel", "64-bit channels_last")]]
rows = [check.compile_one(j) for j in picked]
print(json.dumps({"cases": cases, "problems": problems(rows), "compiled": [r["error"] is None for r in rows],
                  "vector_checked": [r["vector_check"] for r in rows]}))
"""


def test_compile_check_compiles_the_specialisations_that_run():
    """The compile check's run-time cases get what Triton's launcher gives the
    ops' real arguments: misaligned pointers for views one element into their
    storage (per-location weights and upstream gradients included), constants
    for integers equal to 1, 64-bit integers from 2^31; and they compile, with
    the vector check kept for aligned main pointers only."""
    import json

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "benchmarks"), ROOT] + [p for p in sys.path if p])
    proc = subprocess.run([sys.executable, "-c", RUNTIME_CASES], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cases = {(name, dtype, case): what for name, dtype, case, what in out["cases"]}
    kernels = {name for name, _, _ in cases}
    assert len(kernels) == 6
    for family in ("typical", "misaligned", "one location", "64-bit"):
        assert {name for name, dtype, case in cases if case.startswith(family) and dtype == "float32"} == kernels
    assert cases["_bcdl_fwd_kernel", "float32", "typical nchw"] == "= 1 s_sw, t_sw"
    assert cases["_bcdl_bwd_kernel", "bfloat16", "misaligned channels_last"].startswith(
        "misaligned zs_ptr, zt_ptr, gl_ptr, w_ptr;")
    assert cases["_giou_fwd_kernel", "float32", "one location rows"] == "= 1 n_loc, n_bucket, n_vec, p_s1, t_s1"
    assert cases["_dfl_bwd_kernel", "float32", "64-bit nchw"] == "= 1 s_sw, t_sw, g_sw; i64 n_bucket, W, s_sb, t_sb, g_sb"
    assert out["compiled"] == [True, True, True] and out["problems"] == [], out
    assert out["vector_checked"] == [False, True, True]


def test_compile_check_reports_known_spills_and_fails_stale_ones():
    """A spill of triton_asm.KNOWN_SPILLS is reported, not failed; one of those
    rows that no longer spills fails the check, and any other spill fails it."""
    check = _compile_check_module()
    (kernel, case, block), = list(check.KNOWN_SPILLS)[:1]
    row = dict(kernel=kernel, case=case, specialised="misaligned rs_ptr, rt_ptr", dtype="float32", arch=90,
               config={"BLOCK_L": block, "num_warps": 4}, constexprs={"ACCESS": 2, "VEC": 4, "NB": 32}, error=None,
               regs=160, stack=72, spill_stores=49, vector_check=False, reductions=[])
    assert check.problems([row]) == []
    assert "no longer spills" in check.problems([dict(row, spill_stores=0)])[0]
    other = dict(row, config={"BLOCK_L": 2 * block, "num_warps": 4})
    assert "spills: 49 local stores" in check.problems([row, other])[0]
