"""The examples run, and README's "in your own detector" code is the tested example's."""

import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT


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


def readme_block(heading, language):
    """The first ```language block after a README heading."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split(f"\n{heading}\n", 1)[1]
    return re.search(rf"```{language}\n(.*?)```", section, re.S).group(1)


def test_readme_detector_code_is_the_example():
    snippet = readme_block("## In your own detector", "python")
    with open(os.path.join(ROOT, "examples", "distill_gfl_head.py")) as f:
        example = f.read()
    body = snippet.split("\n\n\n", 1)[1]  # after the import line
    assert "import bckd_kernels as bk" in snippet and body.strip() in example
