"""Every invalid argument of every operator, forward and backward, of every
implementation (C++ CPU and CUDA, Triton, the fake kernels on meta tensors, the
reference) raises a ValueError that names the argument: never a crash, a
silently wrong result or another exception type. Each implementation runs in its
own process (tests/bad_inputs.py), so a crash fails that implementation's test
and names the case it happened in."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import IMPLEMENTATIONS, needs_cuda

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.kernels


@pytest.mark.parametrize("implementation, device", IMPLEMENTATIONS)
def test_every_bad_input_raises_value_error_naming_the_argument(implementation, device):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bad_inputs.py"), implementation, device],
                          capture_output=True, text=True, env=env, timeout=600)
    which = f"{implementation} on {device}"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    results = [r for r in lines if "raised" in r]
    started = [r["case"] for r in lines if r.get("started")]
    if len(results) < len(started):
        pytest.fail(f"{which}: the process died (exit {proc.returncode}) in case {started[len(results)]}:\n"
                    f"{proc.stderr[-2000:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert results, proc.stderr[-2000:]
    wrong = [f"{r['case']}: {r['raised']}: {r['message']}" for r in results
             if r["raised"] != "ValueError" or r["arg"] not in r["message"]]
    assert not wrong, f"{which}: {len(wrong)} of {len(results)} cases did not raise a ValueError naming " \
                      "the argument:\n" + "\n".join(wrong)


@needs_cuda
def test_a_mismatched_device_is_refused_by_every_implementation():
    """Student on the GPU, teacher on the CPU (and the reverse)."""
    s = torch.randn(4, 80, device="cuda")
    t = torch.randn(4, 80)
    import bckd_kernels.triton  # noqa: F401  (registers the *_triton ops)
    from bckd_kernels import reference

    for fn in (torch.ops.bckd.bin_cls_distill, torch.ops.bckd.bin_cls_distill_triton, reference.bin_cls_distill):
        for a, b in ((s, t), (t, s)):
            with pytest.raises(ValueError, match="teacher"):
                fn(a, b, None, 1.0)
