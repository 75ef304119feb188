"""BCKDTrainer through Ultralytics' real trainer: a few BCCD photos at 64 px, two
iterations an epoch, YOLO11 (DFL) and YOLO26 (no DFL) students."""

import csv
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT

os.environ.setdefault("YOLO_OFFLINE", "1")
_omp = os.environ.get("OMP_NUM_THREADS")
pytest.importorskip("ultralytics")
if _omp is None:
    os.environ.pop("OMP_NUM_THREADS", None)  # ultralytics sets it to 1 on import
from ultralytics import YOLO  # noqa: E402
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

from bckd_kernels._yolo_trainer import OPTIONS  # noqa: E402
from bckd_kernels.yolo import BCKDTrainer  # noqa: E402
from bckd_train.formats import read_voc, write_yolo  # noqa: E402

BCCD = os.path.join(os.path.dirname(ROOT), "shared", "data", "bccd")
pytestmark = pytest.mark.skipif(not os.path.isdir(BCCD), reason=f"BCCD is not at {BCCD}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("yolo_trainer")


@pytest.fixture(scope="module")
def data(workdir):
    dataset = read_voc(BCCD)
    dataset.splits = {split: samples[:4] for split, samples in dataset.splits.items()}
    return write_yolo(dataset, workdir / "bccd4")


def save_model(cfg, path, nc=3, seed=0):
    """A randomly initialised model saved as an Ultralytics checkpoint."""
    torch.manual_seed(seed)
    torch.save({"model": DetectionModel(cfg, nc=nc, verbose=False), "train_args": {}}, path)
    return str(path)


@pytest.fixture(scope="module")
def teacher(workdir):
    return save_model("yolo11s.yaml", workdir / "teacher.pt", seed=1)


def train_kwargs(data, workdir, name, **kw):
    return {**dict(data=data, epochs=1, imgsz=64, batch=2, nbs=2, workers=0, device="cpu", amp=False, plots=False,
                   project=str(workdir / "runs"), name=name, exist_ok=True, verbose=False, seed=0), **kw}


def results(folder):
    with open(os.path.join(folder, "results.csv")) as f:
        return [{k.strip(): float(v) for k, v in row.items()} for row in csv.DictReader(f)]


class Checked(BCKDTrainer):
    """Records, before each optimiser step, what the gradients and the teacher look like."""

    seen = []

    def optimizer_step(self):
        student = getattr(self.model, "student_model", self.model)
        missing = [n for n, p in student.named_parameters() if p.requires_grad and p.grad is None]
        finite = all(torch.isfinite(p.grad).all() for p in student.parameters() if p.grad is not None)
        teacher_grads = [n for n, p in self.teacher.named_parameters() if p.requires_grad or p.grad is not None]
        Checked.seen.append({"missing": missing, "finite": finite, "teacher_grads": teacher_grads,
                             "teacher_training": self.teacher.training, "student_training": student.training})
        super().optimizer_step()


class Interrupted(Exception):
    pass


def stop_after_first_save(trainer):
    raise Interrupted


@pytest.mark.parametrize("student_cfg,options", [("yolo11n.yaml", {}), ("yolo26n.yaml", {"bckd_branch": "both"}),
                                                 ("yolo11n.yaml", {"bckd_feature": True})])
def test_trains_logs_and_saves_a_plain_student(data, teacher, workdir, student_cfg, options):
    Checked.seen = []
    name = student_cfg.split(".")[0] + "".join(f"_{k}" for k in options)
    YOLO(student_cfg).train(trainer=Checked, distill_model=teacher, **train_kwargs(data, workdir, name), **options)
    folder = workdir / "runs" / name
    [row] = results(folder)
    assert row["train/bcdl_loss"] > 0 and row["train/ildl_loss"] > 0
    assert ("train/dis_loss" in row) == bool(options.get("bckd_feature"))  # Ultralytics' own feature loss
    assert len(Checked.seen) == 2  # 4 photos, batch 2, a step per batch (nbs = 2)
    for step in Checked.seen:
        assert step["missing"] == [] and step["finite"]
        assert step["teacher_grads"] == [] and not step["teacher_training"] and step["student_training"]
    # The checkpoint is the student alone, and loads where bckd_kernels cannot be imported.
    best = folder / "weights" / "best.pt"
    ckpt = torch.load(best, weights_only=False)
    assert type(ckpt["model"]) is DetectionModel
    assert not any("teacher" in k for k in ckpt["model"].state_dict())
    code = ("import sys; sys.modules['bckd_kernels'] = None\n"
            "from ultralytics import YOLO\n"
            f"m = YOLO({str(best)!r}); print(type(m.model).__name__, m.model.model[-1].nc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(workdir),
                         env={**os.environ, "YOLO_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["DetectionModel", "3"]


def test_resume_continues_with_the_options(data, teacher, workdir):
    kw = train_kwargs(data, workdir, "resumed", epochs=2)
    model = YOLO("yolo11n.yaml")
    model.add_callback("on_model_save", stop_after_first_save)
    with pytest.raises(Interrupted):
        model.train(trainer=BCKDTrainer, distill_model=teacher, bckd_beta=0.5, **kw)
    last = workdir / "runs" / "resumed" / "weights" / "last.pt"
    assert torch.load(last, weights_only=False)["train_args"]["bckd_beta"] == 0.5
    Checked.seen = []
    YOLO(str(last)).train(resume=True, trainer=Checked)
    rows = results(workdir / "runs" / "resumed")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["train/bcdl_loss"] > 0 for r in rows)
    assert len(Checked.seen) == 2  # the second epoch only
    assert torch.load(workdir / "runs" / "resumed" / "weights" / "best.pt", weights_only=False)["epoch"] == -1


def test_ddp_workers_rebuild_the_trainer_with_its_options(data, teacher, workdir):
    """Ultralytics' DDP launcher writes a script that rebuilds the trainer from its
    class and arguments in every worker: run it, up to the training itself."""
    from ultralytics.utils.dist import generate_ddp_file

    trainer = BCKDTrainer(overrides=train_kwargs(data, workdir, "ddp", model="yolo11n.yaml", distill_model=teacher,
                                                 bckd_beta=0.5, bckd_loc=2.0))
    script = generate_ddp_file(trainer)
    with open(script) as f:
        text = f.read()
    assert 'trainer = state["trainer"](cfg=cfg, overrides=state["args"]' in text
    assert text.rstrip().endswith("trainer.train()")
    probe = text.rstrip()[: -len("trainer.train()")] + (
        "print(type(trainer).__module__, type(trainer).__name__, trainer.args.bckd_beta, trainer.args.bckd_loc, "
        "trainer.args.bckd_branch)\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(workdir))
    os.remove(script)
    os.remove(os.path.splitext(script)[0] + ".pt")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-5:] == ["bckd_kernels._yolo_trainer", "BCKDTrainer", "0.5", "2.0", "one2many"]


@pytest.mark.parametrize("option,value", [("bckd_beta", -1.0), ("bckd_cls", "x"), ("bckd_branch", "one2one"),
                                          ("bckd_feature", "yes")])
def test_bad_options_name_the_option(data, teacher, workdir, option, value):
    with pytest.raises(ValueError, match=option):
        BCKDTrainer(overrides=train_kwargs(data, workdir, "bad", model="yolo11n.yaml", distill_model=teacher,
                                           **{option: value}))


def test_refuses_what_it_cannot_distill(data, teacher, workdir):
    with pytest.raises(ValueError, match="distill_model"):
        BCKDTrainer(overrides=train_kwargs(data, workdir, "bad", model="yolo11n.yaml"))
    with pytest.raises(SyntaxError, match="bckd_alpha"):  # Ultralytics still refuses unknown keywords
        BCKDTrainer(overrides=train_kwargs(data, workdir, "bad", model="yolo11n.yaml", distill_model=teacher,
                                           bckd_alpha=1.0))
    five = save_model("yolo11n.yaml", workdir / "five.pt", nc=5)
    with pytest.raises(ValueError, match="5 classes, the student 3"):
        YOLO("yolo11n.yaml").train(trainer=BCKDTrainer, distill_model=five, **train_kwargs(data, workdir, "bad"))
    p2 = save_model("yolov8n-p2.yaml", workdir / "p2.pt")
    with pytest.raises(ValueError, match=r"strides \[4.0, 8.0, 16.0, 32.0\] differ from the student's \[8.0"):
        YOLO("yolo11n.yaml").train(trainer=BCKDTrainer, distill_model=p2, **train_kwargs(data, workdir, "bad"))
    with pytest.raises(ValueError, match="needs an end-to-end head"):
        YOLO("yolo11n.yaml").train(trainer=BCKDTrainer, distill_model=teacher, bckd_branch="both",
                                   **train_kwargs(data, workdir, "bad"))


def test_options_are_documented():
    import bckd_kernels._yolo_trainer as module

    for name, default in OPTIONS.items():
        assert f"``{name}``" in module.__doc__ and str(default) in module.__doc__


def _rank_normaliser(rank, world, init_file, out):
    import torch.distributed as dist

    from bckd_kernels._yolo_trainer import _mean_over_ranks

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        local = torch.tensor(3.0 * (rank + 1))  # this rank's target_scores_sum
        torch.save(_mean_over_ranks(local), f"{out}.{rank}")
        assert local.item() == 3.0 * (rank + 1)  # the rank's own value is left alone
    finally:
        dist.destroy_process_group()


def test_every_ddp_rank_divides_by_one_number(tmp_path):
    """Two gloo processes: each rank's normaliser is the mean of all ranks' target_scores_sum."""
    torch.multiprocessing.spawn(_rank_normaliser, args=(2, str(tmp_path / "init"), str(tmp_path / "avg")), nprocs=2)
    assert [torch.load(tmp_path / f"avg.{r}").item() for r in (0, 1)] == [4.5, 4.5]
