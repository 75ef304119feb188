"""The examples run."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


@pytest.mark.parametrize("name, expected", [
    ("distill_gfl_head.py", ["losses (fused):", "student gradients match the reference",
                             "the teacher gets no gradient"]),
    ("add_bcdl_to_loss_dict.py", ["'loss_bcdl':"]),
])
def test_example_runs(name, expected):
    result = run_example(name)
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, result.stdout

