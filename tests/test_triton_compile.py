"""Every Triton kernel compiles with the real Triton compiler for sm_80 and
sm_90, every autotune configuration, input dtype and code-path variant, with
no register spills, and the configurations kept for each access pattern reduce
in one order (benchmarks/triton_compile.py; no GPU needed). The
interpreter the other Triton tests use without a GPU accepts code this
compiler refuses."""

import importlib.util
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    path = os.path.join(ROOT, "benchmarks", "triton_compile.py")
    spec = importlib.util.spec_from_file_location("triton_compile", path)
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
                constexprs={"LAYOUT": 1, "VEC": 4, "BLOCK_C": 16}, error=None, regs=40, stack=0, spill_stores=0,
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
    other = dict(b, constexprs={"LAYOUT": 1, "VEC": 4, "BLOCK_C": 8})  # another tile: compared apart
    assert check.problems([a, other]) == []
