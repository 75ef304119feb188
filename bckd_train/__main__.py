"""python -m bckd_train {data,train,distill,eval,show} ..."""

import argparse
import dataclasses
import os
import sys

from . import data, engine, formats, runtime
from .config import get_config
from .distill import METHODS, Distiller, teacher_memo
from .errors import UserError


def check_teacher(cfg, t_cfg):
    """The teacher must see the student's data and predict the same maps."""
    for what, a, b in (("dataset", cfg.dataset, t_cfg.dataset), ("num_classes", cfg.model.num_classes, t_cfg.model.num_classes),
                       ("strides", cfg.model.strides, t_cfg.model.strides), ("reg_max", cfg.model.reg_max, t_cfg.model.reg_max)):
        if a != b:
            raise UserError(f"--teacher: teacher {what} {b!r} does not match the student's {a!r}")


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_device(p, *, training=False):
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda (under torchrun: the "
                                                    "LOCAL_RANK GPU) or cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16"),
                   help="bf16: forward passes under torch.autocast (float32 weights and optimiser state)")
    if training:
        p.add_argument("--workers", type=int, default=None,
                       help="data loader processes (default: 0 on the CPU, up to 8 per GPU)")
        p.add_argument("--memory-format", default=None, choices=("channels_last", "contiguous"),
                       help="the detector's layout (default: ModelConfig's per-device choice)")


def rank():
    return int(os.environ.get("RANK", "0"))


def amp(args):
    return None if args.amp == "none" else args.amp


def data_command(args):
    for name, folder in data.prepare(args.cache).items():
        print(f"{name}: {folder}")
    return 0


def to_yolo_command(args):
    dataset = formats.read_voc(args.path, seed=args.seed)
    for line in dataset.report():
        print(line)
    print(f"wrote {formats.write_yolo(dataset, args.out)}")
    return 0


def train_config(args):
    """The preset with the command line's overrides."""
    overrides = {k: v for k, v in (("max_iters", args.max_iters), ("seed", args.seed),
                                   ("eval_every", getattr(args, "eval_every", None))) if v is not None}
    cfg = get_config(args.config, **overrides)
    if args.memory_format:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, memory_format=args.memory_format))
    return cfg


def train_and_report(args, cfg, device, distiller=None):
    metrics = engine.train(cfg, args.out, resume=args.resume, cache=args.cache, device=device, amp=amp(args),
                           workers=args.workers, distiller=distiller)
    if runtime.world()[0] == 0:
        _, val = engine.datasets(cfg, args.cache)
        print(engine.metrics_table(metrics, title=f"{cfg.name}: {cfg.dataset} val, {len(val.images)} images, "
                                                  f"{args.out}/metrics.json"))
    return 0


def train_command(args):
    device = runtime.resolve_device(args.device)
    return train_and_report(args, train_config(args), device)


def distill_command(args):
    device = runtime.resolve_device(args.device)
    cfg = train_config(args)
    t_cfg, teacher = engine.load_checkpoint(args.teacher, args.cache)
    check_teacher(cfg, t_cfg)
    teacher.to_device(device)
    memo = args.memo_teacher
    if args.teacher_maps and args.method != "none":
        train_set, _ = engine.datasets(cfg, args.cache)
        memo = teacher_memo(teacher, train_set, cfg.augment, path=args.teacher_maps)
    return train_and_report(args, cfg, device, Distiller(teacher, args.method, backend=args.backend, memo=memo))


def checkpoint_on_device(args):
    """(config, model, device) of --ckpt, the model on the device; None on every process
    but the first (under torchrun the first process answers for all)."""
    device = runtime.resolve_device(args.device)
    if rank() != 0:
        return None
    cfg, model = engine.load_checkpoint(args.ckpt, args.cache)
    return cfg, model.to_device(device), device


def eval_command(args):
    loaded = checkpoint_on_device(args)
    if loaded is None:
        return 0
    cfg, model, device = loaded
    _, val = engine.datasets(cfg, args.cache)
    metrics = engine.evaluate(model, val, device=device, amp=amp(args))
    out = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), "eval.json")
    engine.save_json(metrics, out)
    print(engine.metrics_table(metrics, title=f"{cfg.name}: {cfg.dataset} val, {len(val.images)} images, {args.ckpt}"))
    return 0


def show_command(args):
    loaded = checkpoint_on_device(args)
    if loaded is None:
        return 0
    cfg, model, _ = loaded
    n, top = engine.show(model, cfg, args.image, args.out, score=args.score, cache=args.cache, amp=amp(args))
    if n == 0:
        best = "no detection at all" if top is None else f"the highest scores {top:.3f}"
        print(f"0 detections above score {args.score} ({best}); {args.out} shows the image without boxes")
    else:
        print(f"{n} detections drawn to {args.out}")
    return 0


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bckd_train")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="prepare the forest and fashion data sets (COCO) in the cache folder")
    p.add_argument("--cache", default=None, help="cache folder (default: $BCKD_CACHE or .cache)")
    p.set_defaults(run=data_command)
    p = sub.add_parser("to-yolo", help="convert a detection data set to Ultralytics' layout and data YAML")
    p.add_argument("--format", required=True, choices=("voc",), help="the data set's format")
    p.add_argument("--path", required=True, help="the data set's folder (VOC: the folder holding Annotations/)")
    p.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split when the data set has none")
    p.set_defaults(run=to_yolo_command)
    p = sub.add_parser("train", help="train a preset")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    p.add_argument("--max-iters", type=positive, default=None, help="stop after this many iterations in all")
    p.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    p.add_argument("--cache", default=None)
    add_device(p, training=True)
    p.set_defaults(run=train_command)
    p = sub.add_parser("distill", help="train a student preset with a teacher checkpoint")
    p.add_argument("--config", required=True, help="the student's preset")
    p.add_argument("--teacher", required=True, help="the teacher's checkpoint.pth")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    p.add_argument("--max-iters", type=positive, default=None, help="stop after this many iterations in all")
    p.add_argument("--eval-every", type=int, default=None, help="evaluate every N epochs and after the last (0: only after the last)")
    p.add_argument("--backend", default="auto", help="bckd_kernels backend for BCDL/ILDL (auto, reference, ...)")
    p.add_argument("--memo-teacher", action="store_true",
                   help="reuse the teacher's maps when an (image, flip) comes back (exact: flips are the only "
                        "augmentation; saves the teacher's forward pass after the first time)")
    p.add_argument("--teacher-maps", default=None, metavar="FILE",
                   help="the teacher's maps for every training input, computed into FILE when it does not exist "
                        "and read from it after (runs with one teacher share one teacher pass); implies --memo-teacher")
    p.add_argument("--cache", default=None)
    add_device(p, training=True)
    p.set_defaults(run=distill_command)
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on its data set's val split")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--cache", default=None)
    add_device(p)
    p.set_defaults(run=eval_command)
    p = sub.add_parser("show", help="draw a checkpoint's detections on an image")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", required=True)
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--score", type=float, default=0.3, help="lowest score drawn")
    p.add_argument("--cache", default=None)
    add_device(p)
    p.set_defaults(run=show_command)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except UserError as exc:
        print(f"bckd_train {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
