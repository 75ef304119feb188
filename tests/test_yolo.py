"""BCKD between Ultralytics YOLO detection models, built offline from the
package's YAML files (random weights)."""

import copy
import importlib.util
import math
import os

import pytest
import torch
from conftest import ROOT
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("YOLO_OFFLINE", "1")  # no network probe at import
_omp = os.environ.get("OMP_NUM_THREADS")
pytest.importorskip("ultralytics")
if _omp is None:
    # ultralytics sets OMP_NUM_THREADS=1 on import; the rest of the session keeps its own setting.
    os.environ.pop("OMP_NUM_THREADS", None)
from ultralytics.cfg import get_cfg  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

import bckd_kernels  # noqa: E402
from bckd_kernels.yolo import head_maps, teacher_soft_count, yolo_bckd_loss  # noqa: E402

pytestmark = pytest.mark.kernels

NUM_CLASSES = 5
IMAGES = torch.rand(2, 3, 32, 64, generator=torch.Generator().manual_seed(0))  # levels 4x8, 2x4, 1x2
ANCHORS = 4 * 8 + 2 * 4 + 1 * 2


def build(cfg, seed):
    torch.manual_seed(seed)
    return DetectionModel(cfg, nc=NUM_CLASSES, verbose=False)


@pytest.fixture(scope="module")
def teacher():
    return build("yolov8s.yaml", 1).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def teacher_preds(teacher):
    with torch.no_grad():
        return teacher(IMAGES)


@pytest.fixture(scope="module", params=["yolov8n.yaml", "yolo11n.yaml"])
def student(request):
    model = build(request.param, 2).train()
    # Spread the class biases, so that student and teacher scores differ as
    # trained models' do (a fresh head starts every class near σ = 0).
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for seq in model.model[-1].cv3:
            seq[-1].bias.copy_(torch.randn(NUM_CLASSES, generator=g) * 2)
    return model


@pytest.fixture(scope="module")
def student_preds(student):
    """One forward shared by the tests that do not backpropagate."""
    return student(IMAGES)


def legacy(model, preds):
    """The per-level [B, 4·16 + nc, H, W] maps Ultralytics < 8.4 returned."""
    head = model.model[-1]
    return [torch.cat((head.cv2[i](f), head.cv3[i](f)), 1) for i, f in enumerate(preds["feats"])]


def test_output_format(student, student_preds, teacher_preds):
    assert isinstance(student_preds, dict) and isinstance(teacher_preds, tuple)
    assert student_preds["scores"].shape == (2, NUM_CLASSES, ANCHORS)
    assert student_preds["boxes"].shape == (2, 64, ANCHORS)
    assert student.model[-1].reg_max == 16
    [(scores, boxes)] = head_maps(student_preds)
    assert scores.shape == (2, NUM_CLASSES, 1, ANCHORS) and boxes.shape == (2, 64, 1, ANCHORS)
    assert scores.data_ptr() == student_preds["scores"].data_ptr()
    assert boxes.data_ptr() == student_preds["boxes"].data_ptr()
    [(_, teacher_boxes)] = head_maps(teacher_preds)
    assert teacher_boxes.data_ptr() == teacher_preds[1]["boxes"].data_ptr()


def test_equals_reference_on_copies(student_preds, teacher_preds):
    valid = torch.rand(2, ANCHORS, generator=torch.Generator().manual_seed(4)) > 0.25
    got = yolo_bckd_loss(student_preds, teacher_preds, valid=valid)

    def rows(x):  # [B, C, A] -> [B·A, C], a copy
        return x.permute(0, 2, 1).reshape(-1, x.shape[1])

    t = teacher_preds[1]
    teacher_conf = (torch.sigmoid(t["scores"]).amax(1) * valid).sum(1)
    avg_factor = teacher_conf.clamp(min=1).sum()
    want = bckd_kernels.bckd_loss(
        rows(student_preds["scores"]),
        rows(t["scores"]),
        rows(student_preds["boxes"]),
        rows(t["boxes"]),
        valid.reshape(-1),
        avg_factor=avg_factor,
        reg_max=15,
        backend="reference",
    )
    assert want["loss_bcdl"] > 1e-3 and want["loss_ildl"] > 1e-3
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=2e-5, atol=1e-7)
    torch.testing.assert_close(teacher_soft_count(head_maps(teacher_preds), valid), avg_factor)


def test_gradients_reach_student_only(student, teacher, teacher_preds):
    student.zero_grad(set_to_none=True)
    losses = yolo_bckd_loss(student(IMAGES), teacher_preds)
    sum(losses.values()).backward()
    trainable = [(n, p) for n, p in student.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert not missing, missing
    head = student.model[-1]
    for final in [seq[-1] for seq in head.cv2] + [seq[-1] for seq in head.cv3]:
        assert final.weight.grad.abs().sum() > 0
    assert next(student.model[0].parameters()).grad.abs().sum() > 0  # the stem
    assert all(p.grad is None for p in teacher.parameters())


class OpInputs(TorchDispatchMode):
    """Storages of the head-map arguments of every bckd op called."""

    def __init__(self):
        super().__init__()
        self.storages = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "bckd":
            self.storages.append({a.untyped_storage().data_ptr() for a in args if torch.is_tensor(a) and a.dim() == 4})
        return func(*args, **(kwargs or {}))


def test_reads_head_outputs_in_place(student_preds, teacher_preds):
    owners = {x.untyped_storage().data_ptr() for x in (student_preds["scores"], student_preds["boxes"])}
    owners |= {x.untyped_storage().data_ptr() for x in (teacher_preds[1]["scores"], teacher_preds[1]["boxes"])}
    with OpInputs() as spy:
        yolo_bckd_loss(student_preds, teacher_preds)
    assert len(spy.storages) == 2  # bin_cls_distill, dfl_giou_distill
    assert all(s and s <= owners for s in spy.storages), (spy.storages, owners)


def test_per_level_maps_and_nested_outputs(student, student_preds, teacher, teacher_preds):
    valid = torch.rand(2, ANCHORS, generator=torch.Generator().manual_seed(5)) > 0.5
    want = yolo_bckd_loss(student_preds, teacher_preds, valid=valid)
    with torch.no_grad():
        teacher_levels = legacy(teacher, teacher_preds[1])
    student_levels = legacy(student, student_preds)
    assert [x.shape[2:] for x in student_levels] == [(4, 8), (2, 4), (1, 2)]
    variants = [
        (student_levels, teacher_levels),  # train-mode lists
        (student_levels, (None, teacher_levels)),  # an eval-mode (decoded, per-level maps) tuple
        ({"one2many": student_preds, "one2one": {}}, {"one2many": teacher_preds[1], "one2one": {}}),
    ]
    for s, t in variants:
        got = yolo_bckd_loss(s, t, valid=valid)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=2e-5, atol=1e-7)


def distances_reference(student, teacher, valid, avg_factor, anchors, level_sizes, pos_per_level):
    """BCKD of a head with raw edge distances (YOLO26) from the float64 references, boxes
    placed at real anchor points, each level gated by its positives."""
    rows = lambda x: x.permute(0, 2, 1).reshape(-1, x.shape[1])  # [B, C, A] -> [B·A, C]
    s_cls, t_cls = rows(student["scores"]), rows(teacher["scores"])
    s_d, t_d = rows(student["boxes"]), rows(teacher["boxes"])
    if t_d.shape[1] > 4:
        t_d = bckd_kernels.decode.dfl_decode(t_d.double(), t_d.shape[1] // 4 - 1)
    points = anchors.repeat(student["scores"].shape[0], 1).double()
    loss, mad = bckd_kernels.reference.bin_cls_distill(s_cls, t_cls, valid.reshape(-1).float(), 1.0)
    giou = bckd_kernels.reference.paired_giou(bckd_kernels.decode.distance_to_box(points, s_d.double()),
                                              bckd_kernels.decode.distance_to_box(points, t_d.double()))
    level = torch.cat([torch.full((n,), i) for i, n in enumerate(level_sizes)]).repeat(student["scores"].shape[0])
    gate = (pos_per_level > 0).double()[level]
    weight = mad.double() * valid.reshape(-1).double()
    return {"loss_bcdl": (gate * loss.double()).sum() / avg_factor,
            "loss_ildl": 4.0 * (gate * weight * giou).sum() / avg_factor}


@pytest.mark.parametrize("teacher_bins", [1, 16])
def test_edge_distance_heads_equal_reference(student_preds, teacher_preds, teacher_bins):
    """A YOLO26 student (one box channel per edge) against a YOLO26 or a YOLO11 teacher."""
    g = torch.Generator().manual_seed(7)
    student = {"scores": student_preds["scores"], "boxes": torch.rand(2, 4, ANCHORS, generator=g) * 3,
               "feats": student_preds["feats"]}
    t = teacher_preds[1]
    teacher = dict(t) if teacher_bins == 16 else {"scores": t["scores"], "boxes": torch.rand(2, 4, ANCHORS, generator=g) * 3}
    student["boxes"].requires_grad_(True)
    valid = torch.rand(2, ANCHORS, generator=g) > 0.25
    sizes = [32, 8, 2]
    positives = torch.tensor([3, 0, 1])
    anchors = torch.rand(ANCHORS, 2, generator=g) * 8  # GIoU does not see where both boxes sit
    got = yolo_bckd_loss({"one2many": student, "one2one": {}}, teacher, valid=valid, avg_factor=torch.tensor(7.5),
                         pos_per_level=positives, level_sizes=sizes)
    want = distances_reference(student, teacher, valid, 7.5, anchors, sizes, positives)
    assert want["loss_bcdl"] > 1e-4 and want["loss_ildl"] > 1e-3
    for name in want:
        torch.testing.assert_close(got[name].double(), want[name], rtol=1e-5, atol=1e-8)
    grad_got, = torch.autograd.grad(got["loss_ildl"] * 3, student["boxes"])
    grad_want, = torch.autograd.grad(want["loss_ildl"] * 3, student["boxes"])
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-4, atol=1e-7)


def test_rejects_heads_it_cannot_distill(student_preds, teacher_preds):
    odd = {"scores": student_preds["scores"], "boxes": student_preds["boxes"][:, :6]}
    with pytest.raises(ValueError, match="expected"):
        head_maps(odd)
    with pytest.raises(ValueError, match="head shapes differ"):
        yolo_bckd_loss(student_preds, {k: teacher_preds[1][k][..., :-2] for k in ("scores", "boxes")})
    with pytest.raises(ValueError, match="head shapes differ"):  # another class count
        yolo_bckd_loss(student_preds, {k: teacher_preds[1][k][:, 1:] if k == "scores" else teacher_preds[1][k]
                                       for k in ("scores", "boxes")})
    with pytest.raises(ValueError, match="add up to"):
        yolo_bckd_loss(student_preds, teacher_preds, level_sizes=[32, 8, 1])
    with pytest.raises(ValueError, match="one value per anchor"):
        yolo_bckd_loss(student_preds, teacher_preds, valid=torch.ones(2, ANCHORS - 1))
    with pytest.raises(ValueError, match="branch"):
        yolo_bckd_loss(student_preds, teacher_preds, branch="one2few")
    with pytest.raises(TypeError, match="Detect output"):
        head_maps(student_preds["scores"])


def test_example_distill_step(student, teacher):
    spec = importlib.util.spec_from_file_location("ultralytics_distill", os.path.join(ROOT, "examples", "ultralytics_distill.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model = copy.deepcopy(student)
    model.args = get_cfg()
    head = model.model[-1]
    finals = [seq[-1].weight for seq in list(head.cv2) + list(head.cv3)]  # the box and class outputs
    before = [w.detach().clone() for w in finals]
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    g = torch.Generator().manual_seed(6)
    batch = example.synthetic_batch(batch_size=2, imgsz=32, num_classes=NUM_CLASSES, generator=g)
    items = example.distill_step(student=model, teacher=teacher, batch=batch, optimizer=optimizer)
    assert set(items) == {"box_loss", "cls_loss", "dfl_loss", "loss_bcdl", "loss_ildl"}
    assert all(math.isfinite(v) for v in items.values()) and items["loss_bcdl"] > 0 and items["loss_ildl"] > 0
    assert not any(torch.equal(a, w) for a, w in zip(before, finals))
