"""The rules of benchmarks/cuda_static.py, the CUDA kernels' static check, on
inputs written here: it must fail a vector variant whose machine code fell back
to narrower loads or stores, and read each kernel's registers and spills from
that kernel's own lines of ptxas's report. (The check itself compiles every
kernel with nvcc: a benchmark run, not a CI test.) The launchers' decisions
are host code (csrc/cuda/access.h, launch.h): benchmarks/cuda_access_check.cpp
asserts each one, built here with the host compiler, no GPU or nvcc needed."""

import importlib.util
import os
import shutil

import pytest

from conftest import ROOT

_spec = importlib.util.spec_from_file_location("cuda_static", os.path.join(ROOT, "benchmarks", "cuda_static.py"))
cuda_static = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cuda_static)

COUNTS = dict(ldg128=0, ldg64=0, ldg=0, stg128=0, local=0)


def test_vector_variants_need_their_wide_accesses():
    expect = cuda_static.expected_vectors
    assert expect("void bcdl_forward_loc<f32, 1, 4>") == {"ldg128": 1}
    assert expect("void bcdl_backward_chan<bf16, 0, 8>") == {"ldg128": 1, "stg128": 1}
    assert expect("void bcdl_backward_chan<f32, 2, 1>") == {}
    assert expect("void dfl_chan<f32, 4, T>") == {"ldg128": 1, "stg128": 1}
    assert expect("void dfl_chan<bf16, 4, F>") == {"ldg64": 1}
    assert expect("void dfl_chan<f32, 1, T>") == {}
    assert expect("void giou_backward_kernel<f32, T>") == {"ldg128": 2, "stg128": 1}
    assert expect("void giou_forward_kernel<f64, T>") == {"ldg128": 4}
    assert expect("void giou_forward_kernel<bf16, T>") == {"ldg64": 2}
    assert expect("void giou_forward_kernel<f32, F>") == {}


def test_a_vector_variant_that_fell_back_to_scalar_is_a_problem():
    name = "void bcdl_backward_loc<f32, 1, 4>"
    assert cuda_static.vector_problems(name, dict(COUNTS, ldg128=10, stg128=4)) == []
    scalar = cuda_static.vector_problems(name, dict(COUNTS, ldg=10, stg128=4))
    assert scalar == [f"{name}: 0 LDG.128, expected >= 1"]
    assert cuda_static.vector_problems("void dfl_chan<bf16, 4, T>", dict(COUNTS, ldg=10)) == [
        "void dfl_chan<bf16, 4, T>: 0 LDG.64, expected >= 1"]


def test_ptxas_report_is_read_function_by_function():
    report = """\
ptxas info    : Compiling entry function '_Z1av' for 'sm_90'
ptxas info    : Function properties for _Z6calleev
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Function properties for _Z1av
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 0 barriers
ptxas info    : Compiling entry function '_Z1bv' for 'sm_90'
ptxas info    : Function properties for _Z1bv
    16 bytes stack frame, 12 bytes spill stores, 8 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
ptxas info    : Compiling entry function '_Z1av' for 'sm_80'
ptxas info    : Function properties for _Z1av
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 38 registers, used 0 barriers
"""
    out = cuda_static.parse_ptxas(report)
    assert out[("_Z1av", "sm_90")] == dict(stack=0, spill_st=0, spill_ld=0, regs=40)
    assert out[("_Z1bv", "sm_90")] == dict(stack=16, spill_st=12, spill_ld=8, regs=255)
    assert out[("_Z1av", "sm_80")]["regs"] == 38


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="needs a C++ compiler")
def test_launch_decisions_on_the_host():
    """Access and vector width per layout and alignment; BCDL's per-location
    vectors; DFL's 48 KB tile switch, 8-byte vectors and bin-count kernels;
    unmerged H; GIoU gradients that are not wanted."""
    ok, report = cuda_static.access_check()
    assert ok, report
    assert report.endswith("0 failed")
