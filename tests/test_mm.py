"""The OpenMMLab plug-in, at the MMEngine level: mmdet's and mmrazor's own
registries are MMEngine registries whose parent is MMEngine's root MODELS, so a
sibling-scope registry built the same way stands in for them (building through
mmdet itself needs its compiled mmcv)."""

import ast
import inspect
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT as ROOT_DIR

pytest.importorskip("mmengine")
from mmengine import Config  # noqa: E402
from mmengine.registry import MODELS as ROOT  # noqa: E402
from mmengine.registry import DefaultScope, Registry  # noqa: E402

import bckd_kernels  # noqa: E402
import bckd_kernels.mm  # noqa: E402  (registers the "bckd" scope)

pytestmark = pytest.mark.kernels

CONFIG = os.path.join(ROOT_DIR, "docs", "openmmlab", "bckd_gfl_r101_gfl_r50_1x_coco.py")
MODULES = (bckd_kernels.BCDLLoss, bckd_kernels.GIoULoss, bckd_kernels.ILDLLoss)


@pytest.fixture(scope="module")
def sibling():
    """A downstream library's model registry, as mmdet 3.x declares its own."""
    return Registry("model", parent=ROOT, scope="bckd_test_downstream")


def test_import_bckd_kernels_needs_no_framework():
    code = "import sys, bckd_kernels; print(sorted({'mmengine', 'ultralytics'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT_DIR, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_mmengine_is_explained(monkeypatch):
    for name in ("mmengine", "mmengine.registry"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "bckd_kernels.mm")
    with pytest.raises(ImportError, match=r'pip install "bckd\[mm\]"'):
        import bckd_kernels.mm  # noqa: F401


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_scoped_name_builds_from_root_and_sibling(module, sibling):
    cfg = dict(type=f"bckd.{module.__name__}", loss_weight=2.5, reduction="sum")
    for registry in (ROOT, sibling):
        built = registry.build(cfg)
        assert type(built) is module
        assert (built.loss_weight, built.reduction) == (2.5, "sum")
    # A runner with default_scope set to the downstream library builds the same way.
    with DefaultScope.overwrite_default_scope(sibling.scope):
        assert type(ROOT.build(dict(type=f"bckd.{module.__name__}"))) is module


def test_unscoped_names_stay_downstream(sibling):
    @sibling.register_module(name="GIoULoss")
    class DownstreamGIoULoss(torch.nn.Module):
        pass

    assert sibling.get("GIoULoss") is DownstreamGIoULoss
    assert sibling.get("bckd.GIoULoss") is bckd_kernels.GIoULoss


def test_built_module_computes_the_loss(sibling):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 5, 4, 3, generator=g), torch.randn(2, 5, 4, 3, generator=g)
    loss = sibling.build(dict(type="bckd.BCDLLoss", beta=2.0, loss_weight=0.5))
    torch.testing.assert_close(loss(s, t, avg_factor=3.0), bckd_kernels.bcdl_loss(s, t, beta=2.0, avg_factor=3.0, loss_weight=0.5))


def load_docs_config(tmp_path):
    """The docs config through MMEngine, less its mmdet base files (mmdet is
    not installed here); its custom_imports are honoured."""
    tree = ast.parse(open(CONFIG).read())
    tree.body = [n for n in tree.body if not (isinstance(n, ast.Assign) and n.targets[0].id == "_base_")]
    path = tmp_path / "config.py"
    path.write_text(ast.unparse(tree))
    return Config.fromfile(str(path))


def gfl_outputs(seed, sizes=((8, 10), (4, 5), (2, 3), (1, 2), (1, 1)), num_classes=80, reg_max=16):
    """What the recorders of the docs config record on a GFL head: gfl_cls once
    per level, and each level's Scale output. Values in a trained head's range."""
    g = torch.Generator().manual_seed(seed)
    cls = [torch.randn(2, num_classes, h, w, generator=g) * 3 - 4 for h, w in sizes]
    reg = [torch.randn(2, 4 * (reg_max + 1), h, w, generator=g) * 2 for h, w in sizes]
    records = {"bbox_head.gfl_cls": cls}
    records.update({f"bbox_head.scales.{level}": [r] for level, r in enumerate(reg)})
    return cls, reg, records


def test_docs_mmrazor_config_computes_bckd(tmp_path, sibling):
    cfg = load_docs_config(tmp_path)
    assert cfg.custom_imports.imports == ["bckd_kernels.mm"]
    distiller = cfg.model.distiller
    student_cls, student_reg, student_records = gfl_outputs(1)
    teacher_cls, teacher_reg, teacher_records = gfl_outputs(2)
    for x in student_cls + student_reg:
        x.requires_grad_()

    # What mmrazor's ConfigurableDistiller does: build each loss from its own
    # registry, check the mapping against forward's signature, fetch the records.
    total = 0.0
    assert set(distiller.distill_losses) == set(distiller.loss_forward_mappings)
    for name, loss_cfg in distiller.distill_losses.items():
        loss = sibling.build(loss_cfg)
        params = inspect.signature(loss.forward).parameters
        kwargs = {}
        for arg, spec in distiller.loss_forward_mappings[name].items():
            assert arg in params, (name, arg)
            recorders = distiller.student_recorders if spec.from_student else distiller.teacher_recorders
            records = student_records if spec.from_student else teacher_records
            kwargs[arg] = records[recorders[spec.recorder].source][spec.get("record_idx", 0)]
        total = total + loss(**kwargs)

    avg_factor = cfg.positives_per_gpu - torch.finfo(torch.float32).eps
    want = 0.0
    for level in range(5):
        losses = bckd_kernels.bckd_loss(
            student_cls[level], teacher_cls[level], student_reg[level], teacher_reg[level], avg_factor=avg_factor
        )
        want = want + sum(losses.values())
    torch.testing.assert_close(total, want)
    total.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in student_cls + student_reg)
