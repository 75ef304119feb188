"""The examples run, print the losses the reference computes from the same
inputs, and README's "in your own detector" code is the tested example's."""

import ast
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

import bckd_kernels as bk


def run_example(name):
    """The example run as a script: its stdout (it must exit 0)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, os.path.join(ROOT, "examples", name)], capture_output=True, text=True,
                            env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def example_module(name):
    """The example imported, for its functions and constants (main() does not run)."""
    spec = importlib.util.spec_from_file_location(os.path.splitext(name)[0], os.path.join(ROOT, "examples", name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def printed(stdout, label):
    """The Python literal the example printed after label, at the start of a line."""
    line = next((line for line in stdout.splitlines() if line.startswith(label)), None)
    assert line is not None, f"{label!r} not printed:\n{stdout}"
    return ast.literal_eval(line[len(label):].strip())


def assert_printed_losses(got, ref, decimals):
    """got: the {name: value} the example printed, rounded to decimals; ref: {name: tensor}."""
    assert set(got) == set(ref), (got, ref)
    for name, value in ref.items():
        assert got[name] == pytest.approx(float(value), abs=0.5 * 10**-decimals + 1e-7), (name, got, ref)


def test_distill_gfl_head():
    out = run_example("distill_gfl_head.py")
    ex = example_module("distill_gfl_head.py")
    with torch.random.fork_rng():  # main()'s inputs, drawn in main()'s order
        torch.manual_seed(0)
        images, pixel_mask, boxes = ex.make_batch()
        teacher, student = ex.TinyGFL(width=32).eval(), ex.TinyGFL(width=16)
    with torch.no_grad():
        teacher_out, student_out = teacher(images), student(images)
    num_pos = ex.count_positives(boxes, [c.shape[-2:] for c in student_out[0]], ex.STRIDES)
    ref = ex.distill_losses(student_out, teacher_out, pixel_mask, num_pos, ex.STRIDES, backend="reference")
    assert printed(out, "positives per image and level:") == num_pos.int().tolist()
    assert_printed_losses(printed(out, "losses (fused):"), ref, 6)
    assert_printed_losses(printed(out, "losses (reference):"), ref, 6)
    worst = float(re.search(r"student gradients match the reference \(max \|difference\| (\S+)\)", out).group(1))
    assert worst <= 1e-5
    assert "teacher maps that require grad: the teacher gets no gradient, the student does" in out


def test_add_bcdl_to_loss_dict():
    out = run_example("add_bcdl_to_loss_dict.py")
    ex = example_module("add_bcdl_to_loss_dict.py")
    with torch.random.fork_rng():  # main()'s inputs, drawn in main()'s order
        torch.manual_seed(0)
        shapes = [(2, 80, 40, 60), (2, 80, 20, 30)]
        teacher_cls_scores = [torch.randn(s) - 4.0 for s in shapes]
        cls_scores = [t + 0.3 * torch.randn(s) for t, s in zip(teacher_cls_scores, shapes)]
    valid_masks = [torch.ones(s[0], s[2], s[3]) for s in shapes]
    avg_factor = torch.tensor(42.0)
    bcdl = sum(bk.bcdl_loss(s, t, v, beta=ex.bcdl.beta, avg_factor=avg_factor, loss_weight=ex.bcdl.loss_weight,
                            backend="reference")
               for s, t, v in zip(cls_scores, teacher_cls_scores, valid_masks))
    ref = {"loss_cls": cls_scores[0].sigmoid().mean(), "loss_bbox": torch.tensor(0.5), "loss_bcdl": bcdl}
    assert_printed_losses(ast.literal_eval(out.strip()), ref, 4)


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
