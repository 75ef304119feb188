"""bckd_train.distill: each method's step, fused vs reference on real head maps, DDP."""

import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from bckd_train import __main__ as cli
from bckd_train import checkpoints, distill, engine, gfl, loading
from bckd_train.config import get_config
from bckd_train.model import GFL


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory):
    """An instant-preset detector trained a few iterations: a teacher with the student's maps."""
    out = tmp_path_factory.mktemp("teacher")
    engine.train(dataclasses.replace(get_config("instant"), max_iters=4, seed=1), str(out), progress=False)
    return str(out / "checkpoint.pth")


@pytest.fixture(scope="module")
def batch():
    cfg = get_config("instant")
    train, _ = loading.datasets(cfg)
    return loading.load_batch(train, [(i, i % 2) for i in range(4)])


def head_outputs(cfg, images, targets, seed=0):
    torch.manual_seed(seed)
    student = GFL(cfg.model)
    student.train()
    cls, reg = student(images)
    _, extras = gfl.gfl_loss(cls, reg, targets, strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                             num_classes=cfg.model.num_classes)
    return student, cls, reg, extras


def synthetic_batch():
    """A small detector's config (random weights) and two 64x64 images with boxes: no data set needed."""
    base = get_config("instant")
    cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, fpn_channels=16, pretrained=False))
    g = torch.Generator().manual_seed(0)
    images, masks = torch.rand(2, 3, 64, 64, generator=g), torch.ones(2, 64, 64)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([0])}]
    return cfg, images, masks, targets


def records(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [r for r in map(json.loads, f) if "loss" in r]


LOSS_NAMES = {"none": [], "kd": ["loss_kd"], "ld": ["loss_ld"], "bcdl": ["loss_bcdl"], "ildl": ["loss_ildl"],
              "bckd": ["loss_bcdl", "loss_ildl"]}


def test_every_method_has_its_losses_named():
    assert set(LOSS_NAMES) == set(distill.METHODS)
    assert all(bool(LOSS_NAMES[m]) == entry.uses_teacher for m, entry in distill.METHODS.items())


@pytest.mark.parametrize("method", distill.METHODS)
def test_every_method_trains_a_step(method):
    """One SGD step of each method in the table on two synthetic 64x64 images (no data
    set needed): its losses by name, finite, the student's weights move, the teacher's
    stay."""
    cfg, images, masks, targets = synthetic_batch()
    torch.manual_seed(0)
    teacher, student = GFL(cfg.model), GFL(cfg.model).train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.01)
    losses = engine.step_losses(student, distill.Distiller(teacher, method), images, masks, targets, [(0, 0), (1, 0)],
                                cfg=cfg)
    assert set(losses) == {"loss_qfl", "loss_dfl", "loss_giou", *LOSS_NAMES[method]}
    assert all(math.isfinite(v.item()) for v in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    assert all(torch.equal(v, teacher_before[k]) for k, v in teacher.state_dict().items())


@pytest.mark.data
@pytest.mark.parametrize("method", distill.METHODS)
def test_distill_step_trains_the_student_only(method, teacher_ckpt, tmp_path):
    cfg = dataclasses.replace(get_config("instant"), epochs=1, max_iters=3)
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    engine.train(cfg, str(tmp_path), progress=False, distiller=distill.Distiller(teacher, method))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not teacher.training
    rows = records(tmp_path)
    assert len(rows) == 3
    assert {k for k in rows[0] if k.startswith("loss_")} == {"loss_qfl", "loss_dfl", "loss_giou", *LOSS_NAMES[method]}
    assert all(math.isfinite(r[k]) for r in rows for k in r if k.startswith("loss"))
    ckpt = torch.load(tmp_path / "checkpoint.pth", weights_only=False)
    assert ckpt["method"] == method and not any(k.startswith("teacher") for k in ckpt["model"])


@pytest.mark.data
@pytest.mark.parametrize("method", [m for m in distill.METHODS if m != "none"])
def test_distillation_loss_falls(method, teacher_ckpt, batch):
    """A few SGD steps on one batch, the distillation loss alone: it falls."""
    cfg = get_config("instant")
    images, masks, targets = batch
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    torch.manual_seed(0)
    student = GFL(cfg.model)
    student.train()
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    d = distill.Distiller(teacher, method)
    curve = []
    for _ in range(6):
        cls, reg = student(images)
        _, extras = gfl.gfl_loss(cls, reg, targets, strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                                 num_classes=cfg.model.num_classes)
        losses = d(images, masks, cls, reg, extras, strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                   weights=cfg.bckd)
        assert set(losses) == set(LOSS_NAMES[method])
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        curve.append(total.item())
    assert all(math.isfinite(x) for x in curve)
    assert curve[-1] < curve[0], curve


@pytest.mark.data
@pytest.mark.parametrize("method", ["bcdl", "ildl", "bckd"])
def test_fused_losses_equal_reference_on_head_maps(method, teacher_ckpt, batch):
    cfg = get_config("instant")
    images, masks, targets = batch
    masks = masks.clone()
    masks[:, :, 100:] = 0  # a padded strip: the valid mask reaches every level
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    student, cls, reg, extras = head_outputs(cfg, images, targets)
    results = {}
    for backend in ("auto", "reference"):
        d = distill.Distiller(teacher, method, backend=backend)
        losses = d(images, masks, cls, reg, extras, strides=cfg.model.strides, reg_max=cfg.model.reg_max,
                   weights=cfg.bckd)
        total = sum(v * (i + 1.5) for i, v in enumerate(losses.values()))  # non-unit grad_output per loss
        grads = torch.autograd.grad(total, cls + reg, allow_unused=True)
        results[backend] = (losses, grads)
    (fused, g_fused), (ref, g_ref) = results["auto"], results["reference"]
    assert fused.keys() == ref.keys()
    for k in fused:
        assert fused[k].item() > 0
        torch.testing.assert_close(fused[k], ref[k], rtol=1e-5, atol=1e-7)
    for a, b in zip(g_fused, g_ref):
        if a is None or b is None:
            assert a is None and b is None or (a if b is None else b).abs().max() == 0
            continue
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-8)


@pytest.mark.data
def test_level_without_positives_is_gated_off(teacher_ckpt, batch):
    cfg = get_config("instant")
    images, masks, targets = batch
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    _, cls, reg, extras = head_outputs(cfg, images, targets)
    d = distill.Distiller(teacher, "bckd")
    kw = dict(strides=cfg.model.strides, reg_max=cfg.model.reg_max, weights=cfg.bckd)
    ones, zeros = torch.ones_like(extras.pos_per_level), torch.zeros_like(extras.pos_per_level)
    full = d(images, masks, cls, reg, dataclasses.replace(extras, pos_per_level=ones), **kw)
    none = d(images, masks, cls, reg, dataclasses.replace(extras, pos_per_level=zeros), **kw)
    assert all(v.item() == 0 for v in none.values())
    gate = torch.zeros_like(extras.pos_per_level)
    gate[0] = 1
    first = d(images, masks, cls, reg, dataclasses.replace(extras, pos_per_level=gate), **kw)
    only = d(images, masks, cls[:1], reg[:1], dataclasses.replace(extras, pos_per_level=gate[:1]), **kw)
    for k in full:
        torch.testing.assert_close(first[k], only[k])
        assert 0 < first[k].item() < full[k].item()


@pytest.mark.data
def test_memoised_teacher_maps_equal_online(teacher_ckpt, batch):
    images = batch[0]
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    keys = [(i, False) for i in range(4)]
    memo = distill.Distiller(teacher, "bckd", memo=True)
    memo.teacher_maps(images[:2], keys[:2])  # two images first, in a batch of their own
    cls, reg = memo.teacher_maps(images, keys)
    cls_ref, reg_ref = teacher(images)
    for a, b in zip(cls + reg, cls_ref + reg_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(memo.memo) == 4
    jittered = [(i, 0, 12345) for i in range(4)]  # a jitter seed: an input that does not come back
    cls, _ = memo.teacher_maps(images, jittered)
    torch.testing.assert_close(cls[0], cls_ref[0], rtol=1e-5, atol=1e-5)
    assert len(memo.memo) == 4


@pytest.mark.data
def test_teacher_maps_file_equals_online(teacher_ckpt, tmp_path):
    train, _ = loading.datasets(get_config("instant"))
    train.images = train.images[:5]
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    path = str(tmp_path / "maps.pt")
    memo = distill.teacher_memo(teacher, train, "hflip", path=path, batch_size=4)
    assert sorted(memo) == [(i, t) for i in range(5) for t in (0, 1)]
    loaded = distill.teacher_memo(None, train, "hflip", path=path)  # read from the file: no teacher needed
    batch = [(3, 1), (0, 0), (4, 1)]
    images, _, _ = loading.load_batch(train, batch)
    with torch.no_grad():
        cls_ref, reg_ref = teacher(images)
    cls, reg = distill.Distiller(teacher, "bckd", memo=loaded).teacher_maps(images, batch)
    for a, b in zip(cls + reg, cls_ref + reg_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert len(loaded) == 10


def test_kd_and_ld_by_hand():
    zs = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    zt = torch.tensor([[3.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    positive = torch.tensor([True, False])
    t = 2.0
    q = torch.softmax(zt[0] / t, 0)
    kl = (q * (q.log() - torch.log_softmax(zs[0] / t, 0))).sum()
    expected = 10.0 * t * t * kl / 3 / 4.0
    torch.testing.assert_close(distill.kd_loss(zs, zt, positive, torch.tensor(4.0)), expected)
    # one class: softmax is constant, KD carries nothing
    z1 = torch.randn(5, 1, requires_grad=True)
    loss = distill.kd_loss(z1, torch.randn(5, 1), torch.ones(5, dtype=torch.bool), torch.tensor(1.0))
    loss.backward()
    assert loss.item() == 0 and z1.grad.abs().max() == 0
    rs = torch.randn(3, 68)
    assert distill.ld_loss(rs, rs.clone(), torch.ones(3), torch.tensor(3.0)).abs().item() < 1e-6
    rt = torch.randn(3, 68)
    w = torch.tensor([0.5, 0.0, 1.0])
    per_edge = [
        (torch.softmax(rt[i].view(4, 17)[e] / 10, 0)
         * (torch.log_softmax(rt[i].view(4, 17)[e] / 10, 0) - torch.log_softmax(rs[i].view(4, 17)[e] / 10, 0))).mean()
        * 100
        for i in range(3) for e in range(4)
    ]
    per_loc = torch.stack(per_edge).view(3, 4).mean(1)
    torch.testing.assert_close(distill.ld_loss(rs, rt, w, torch.tensor(2.0)), 0.25 * (per_loc * w).sum() / 2.0)


def test_bf16_live_and_memoised_teacher_are_one_teacher():
    """Under --amp bf16 the teacher runs in float32 (autocast off), as --memo-teacher and a
    --teacher-maps file keep its maps: a step with the live teacher, the memo's first
    sight and the memo's reuse give the same losses, bit for bit."""
    from bckd_train import runtime

    cfg, images, masks, targets = synthetic_batch()
    keys = [(0, 0), (1, 1)]
    torch.manual_seed(0)
    teacher, student = GFL(cfg.model), GFL(cfg.model).train()
    live, memo = distill.Distiller(teacher, "bckd"), distill.Distiller(teacher, "bckd", memo=True)
    with runtime.autocast("cpu", "bf16"):
        cls, reg = live.teacher_maps(images, keys)
    with torch.no_grad():
        cls_ref, reg_ref = teacher(images)
    assert all(m.dtype == torch.float32 for m in cls + reg)
    assert all(torch.equal(a, b) for a, b in zip(cls + reg, cls_ref + reg_ref))
    runs = [engine.step_losses(student, d, images, masks, targets, keys, cfg=cfg, amp="bf16")
            for d in (live, memo, memo)]
    assert set(runs[0]) >= {"loss_bcdl", "loss_ildl"}
    for other in runs[1:]:
        assert all(torch.equal(runs[0][k], other[k]) for k in runs[0])


def test_teacher_must_match_the_student():
    student = get_config("fashion_student")
    cli.check_teacher(student, get_config("fashion_teacher"))
    with pytest.raises(ValueError, match="dataset"):
        cli.check_teacher(student, get_config("forest_teacher"))
    with pytest.raises(ValueError, match="unknown method"):
        distill.Distiller(None, "fitnet")
    with pytest.raises(ValueError, match="needs a teacher"):
        distill.Distiller(None, "bckd")


@pytest.mark.data
def test_distill_two_processes_match_one(teacher_ckpt, tmp_path):
    """torchrun with 2 gloo processes against 1 process, BCKD with the same global batch."""
    base = [sys.executable, "-m", "bckd_train", "distill", "--config", "instant", "--teacher", teacher_ckpt,
            "--method", "bckd", "--max-iters", "4", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run(base + ["--out", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29533"] + base[1:] + ["--out", str(tmp_path / "two")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert len(a) == len(b) == 4
    for key in ("loss", "loss_bcdl", "loss_ildl"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-4)


@pytest.mark.data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_memo_with_a_gpu_teacher(teacher_ckpt, batch, tmp_path):
    """A GPU teacher's maps kept on the host (by the memo and in a --teacher-maps file)
    come back to the GPU equal to the teacher's online maps."""
    images = batch[0].cuda()
    _, teacher = checkpoints.load_checkpoint(teacher_ckpt)
    teacher.to_device("cuda")
    keys = [(i, i % 2) for i in range(4)]
    d = distill.Distiller(teacher, "bckd", memo=True)
    d.teacher_maps(images[:2], keys[:2])
    cls, reg = d.teacher_maps(images, keys)
    assert all(m.is_cuda for m in cls + reg)
    assert all(not m.is_cuda for k in keys for maps in d.memo[k] for m in maps)
    with torch.no_grad():
        cls_ref, reg_ref = teacher(images)
    for a, b in zip(cls + reg, cls_ref + reg_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    train, _ = loading.datasets(get_config("instant"))
    train.images = train.images[:4]
    memo = distill.teacher_memo(teacher, train, "hflip", path=str(tmp_path / "maps.pt"))
    cls, _ = distill.Distiller(teacher, "bckd", memo=memo).teacher_maps(images, keys)
    for a, b in zip(cls, cls_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_distill_cli_on_cuda_with_bf16(teacher_ckpt, tmp_path):
    base = [sys.executable, "-m", "bckd_train", "distill", "--config", "instant", "--teacher", teacher_ckpt,
            "--method", "bckd", "--max-iters", "3", "--device", "cuda", "--amp", "bf16"]
    out = subprocess.run(base + ["--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = records(tmp_path)
    assert len(rows) == 3 and all(math.isfinite(r[k]) for r in rows for k in ("loss_bcdl", "loss_ildl", "loss"))
