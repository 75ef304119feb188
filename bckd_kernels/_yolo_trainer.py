"""BCKD inside Ultralytics' own detection trainer (the only module that imports Ultralytics).

    from ultralytics import YOLO
    from bckd_kernels.yolo import BCKDTrainer

    YOLO("yolo11n.yaml").train(data="bccd.yaml", trainer=BCKDTrainer, distill_model="teacher.pt", epochs=100)

The teacher is the checkpoint named by Ultralytics' own ``distill_model``
argument. BCKD's options are ``train()`` keywords beside Ultralytics' own
loss gains (``box``, ``cls``, ``dfl``, ``dis``), which :class:`BCKDTrainer`
adds to the configuration it validates:

==================  =========  ===================================================
``bckd_beta``       1.0        β of BCDL's modulating factor ``|σ(zs) − σ(zt)|^β``
``bckd_cls``        1.0        α1, BCDL's weight
``bckd_loc``        4.0        α2, ILDL's weight
``bckd_branch``     one2many   end-to-end heads: ``one2many`` or ``both`` branches
``bckd_feature``    False      also Ultralytics' own feature distillation (``dis``)
==================  =========  ===================================================

They are part of the run's arguments, so they reach DDP's workers (Ultralytics
rebuilds the trainer there from its arguments) and come back on
``resume=True`` (pass ``trainer=BCKDTrainer`` again).

The student's own criterion runs first; a forward pre-hook on its box loss
keeps what the assigner gave it, ``target_scores_sum`` and the positives mask,
and BCKD divides by the same ``target_scores_sum`` (averaged over DDP ranks)
and skips a level without positives, as the reference code does with its
detector's normaliser. The teacher lives in the trainer, not in the model, so
checkpoints hold the student alone and load with a plain ``YOLO(path)``.
"""

import torch
import torch.distributed as dist
from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import DEFAULT_CFG, IterableSimpleNamespace
from ultralytics.utils.torch_utils import unwrap_model

from .yolo import yolo_bckd_loss

__all__ = ["BCKDTrainer", "BCKDLoss", "OPTIONS"]

OPTIONS = {"bckd_beta": 1.0, "bckd_cls": 1.0, "bckd_loc": 4.0, "bckd_branch": "one2many", "bckd_feature": False}
BRANCH_CHOICES = {"one2many": ("one2many",), "both": ("one2many", "one2one")}


def check_options(args):
    """ValueError naming the option when one of :data:`OPTIONS` is not usable."""
    for name in ("bckd_beta", "bckd_cls", "bckd_loc"):
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if args.bckd_branch not in BRANCH_CHOICES:
        raise ValueError(f"bckd_branch must be one of {tuple(BRANCH_CHOICES)}, got {args.bckd_branch!r}")
    if not isinstance(args.bckd_feature, bool):
        raise ValueError(f"bckd_feature must be True or False, got {args.bckd_feature!r}")


class _Assigned:
    """Forward pre-hook on a ``BboxLoss``: keeps the assigner's ``target_scores_sum``
    and positives mask that ``v8DetectionLoss`` passes it (arguments 5 and 6)."""

    def __init__(self, bbox_loss):
        self.target_scores_sum = self.fg_mask = None
        self.handle = bbox_loss.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.target_scores_sum, self.fg_mask = args[5], args[6]


def _mean_over_ranks(x):
    """``x`` averaged over the DDP ranks (every rank then divides by the same number)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.detach().clone()
        dist.all_reduce(x)
        x = x / dist.get_world_size()
    return x


class BCKDLoss:
    """The student's Ultralytics criterion, plus BCKD against ``teacher`` (a module, or
    any callable that gives the teacher's outputs for the batch's images).

    Returns the criterion's loss vector with BCDL and ILDL appended (times the
    batch size, as Ultralytics' own terms), and its loss items with
    ``bcdl_loss`` and ``ildl_loss`` added. Other attributes (``update`` of the
    end-to-end loss, ``hyp``, ...) are the wrapped criterion's.
    """

    def __init__(self, criterion, teacher, *, beta=1.0, cls_weight=1.0, loc_weight=4.0, branches=("one2many",),
                 backend="auto"):
        self.criterion = criterion
        self.teacher = teacher
        self.options = dict(beta=beta, cls_weight=cls_weight, loc_weight=loc_weight, backend=backend)
        self.branches = branches
        end_to_end = hasattr(criterion, "one2many")
        if "one2one" in branches and not end_to_end:
            raise ValueError("bckd_branch='both' needs an end-to-end head (one2many and one2one branches)")
        self.assigned = {b: _Assigned((getattr(criterion, b) if end_to_end else criterion).bbox_loss)
                         for b in branches}

    def __getattr__(self, name):
        criterion = self.__dict__.get("criterion")
        if criterion is None:
            raise AttributeError(name)
        return getattr(criterion, name)

    def __call__(self, preds, batch):
        loss, items = self.criterion(preds, batch)
        images = batch["img"]
        with torch.no_grad():
            teacher_preds = self.teacher(images)
        bcdl = ildl = loss.new_zeros(())
        for branch in self.branches:
            assigned = self.assigned[branch]
            feats = preds[branch]["feats"] if branch in preds else preds["feats"]
            sizes = [f.shape[2] * f.shape[3] for f in feats]
            positives = torch.stack([m.sum() for m in assigned.fg_mask.split(sizes, dim=1)])
            out = yolo_bckd_loss(preds, teacher_preds, avg_factor=_mean_over_ranks(assigned.target_scores_sum),
                                 pos_per_level=positives, level_sizes=sizes, branch=branch, **self.options)
            bcdl, ildl = bcdl + out["loss_bcdl"], ildl + out["loss_ildl"]
        extra = torch.stack([bcdl, ildl]).to(loss.dtype)
        items = {**items, "bcdl_loss": extra[0].detach(), "ildl_loss": extra[1].detach()}
        return torch.cat([loss, extra * images.shape[0]]), items


def load_teacher(path, device):
    """The teacher checkpoint, frozen in eval mode on ``device``."""
    return load_checkpoint(path)[0].to(device).eval().requires_grad_(False)


def check_teacher(teacher, student, path):
    """``teacher``, after checking that its classes and strides are the student's
    (a one-line ValueError naming both)."""
    s_head, t_head = student.model[-1], teacher.model[-1]
    if t_head.nc != s_head.nc:
        raise ValueError(f"distill_model {path}: the teacher predicts {t_head.nc} classes, the student "
                         f"{s_head.nc}: BCKD needs the same classes in the same order")
    if not torch.equal(teacher.stride.cpu(), student.stride.cpu()):
        raise ValueError(f"distill_model {path}: the teacher's strides {teacher.stride.tolist()} differ from the "
                         f"student's {student.stride.tolist()}: BCKD compares the two heads anchor by anchor")
    return teacher


class HookedTeacher:
    """The teacher's head outputs for the batch at hand, as Ultralytics' ``DistillationModel``
    captured them before the student's loss runs: with ``bckd_feature`` the teacher runs once."""

    def __init__(self, wrapper):
        self.wrapper = wrapper

    def __call__(self, images):
        return self.wrapper._teacher_feats[len(self.wrapper.feats_idx) - 1]


class BCKDTrainer(DetectionTrainer):
    """Ultralytics' ``DetectionTrainer`` with BCKD between the student and the
    ``distill_model`` teacher (see the module's docstring for the options)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None):
        # The options join the configuration Ultralytics checks train()'s keywords against.
        super().__init__({**OPTIONS, **cfg2dict(cfg)}, overrides, _callbacks)
        check_options(self.args)
        if not self.args.distill_model:
            raise ValueError("BCKDTrainer needs a teacher: train(..., distill_model='teacher.pt')")
        self.teacher = None

    def _setup_train(self):
        teacher = self.args.distill_model
        if not self.args.bckd_feature:  # Ultralytics wraps the student for its feature loss when this is set
            self.args.distill_model = None
        try:
            super()._setup_train()
        finally:
            self.args.distill_model = teacher
        model = unwrap_model(self.model)
        if hasattr(model, "student_model"):  # bckd_feature: Ultralytics' DistillationModel runs the teacher
            student, self.teacher = model.student_model, check_teacher(model.teacher_model, model.student_model,
                                                                       teacher)
            teacher_outputs = HookedTeacher(model)
        else:
            student = model
            self.teacher = teacher_outputs = check_teacher(load_teacher(teacher, self.device), student, teacher)
        criterion = getattr(student, "criterion", None) or student.init_criterion()
        student.criterion = BCKDLoss(criterion, teacher_outputs, beta=self.args.bckd_beta,
                                     cls_weight=self.args.bckd_cls, loc_weight=self.args.bckd_loc,
                                     branches=BRANCH_CHOICES[self.args.bckd_branch])

    def get_validator(self):
        # The validator checks its arguments against Ultralytics' own keys: it gets them without BCKD's.
        args = self.args
        self.args = IterableSimpleNamespace(**{k: v for k, v in vars(args).items() if k not in OPTIONS})
        try:
            return super().get_validator()
        finally:
            self.args = args
