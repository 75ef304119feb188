"""python -m bckd_train {data,to-yolo,train,distill,eval,show} ..."""

import argparse
import dataclasses
import os
import re
import sys

from . import checkpoints, data, engine, evaluation, formats, loading, runtime
from .config import get_config
from .distill import METHODS, Distiller, teacher_memo
from .errors import UserError


def check_teacher(cfg, t_cfg):
    """The teacher must predict the student's classes, in the same order, on the same
    maps (strides, reg_max). It may come from another data set with those classes. A
    config without classes (a preset as it is) has its data set's."""
    student, teacher = (tuple(c.classes) or data.classes(c.dataset) for c in (cfg, t_cfg))
    if student != teacher:
        raise UserError(f"--teacher: the teacher's classes {list(teacher)} (dataset {t_cfg.dataset!r}) are not "
                        f"the student's {list(student)} (dataset {cfg.dataset!r})")
    for what, a, b in (("strides", cfg.model.strides, t_cfg.model.strides), ("reg_max", cfg.model.reg_max, t_cfg.model.reg_max)):
        if a != b:
            raise UserError(f"--teacher: teacher {what} {b!r} does not match the student's {a!r}")


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_device(p, *, training=False):
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda (under torchrun: GPU "
                                                    "LOCAL_RANK modulo the visible GPUs) or cuda:N")
    p.add_argument("--amp", default="none", choices=("none", "bf16"),
                   help="bf16: forward passes under torch.autocast (float32 weights and optimiser state)")
    if training:
        p.add_argument("--workers", type=int, default=None,
                       help="data loader processes (default: 0 on the CPU, up to 8 per GPU)")
        p.add_argument("--memory-format", default=None, choices=("channels_last", "contiguous"),
                       help="the detector's layout (default: ModelConfig's per-device choice)")
        p.add_argument("--deterministic", action="store_true",
                       help="on a GPU: cuDNN's deterministic algorithms, no TF32, torch's deterministic ops (slower; "
                            "what --resume and torchrun need to repeat bitwise there, docs/training.md)")


def rank():
    return int(os.environ.get("RANK", "0"))


def amp(args):
    return None if args.amp == "none" else args.amp


def split_paths(values):
    """--path's values: one path, or SPLIT=PATH per split (COCO: one JSON per split)."""
    pairs = [v.split("=", 1) for v in values]
    if all(len(p) == 2 and p[0] in formats.SPLITS for p in pairs):
        paths = dict(pairs)
        if len(paths) != len(pairs) or "train" not in paths or "val" not in paths:
            raise UserError(f"--path {' '.join(values)}: one file per split, train and val at least")
        return paths
    if len(values) != 1:
        raise UserError(f"--path {' '.join(values)}: one path, or one SPLIT=FILE per split "
                        f"({', '.join(formats.SPLITS)})")
    return values[0]


def read_dataset(args):
    """The data set that --format, --path, --images, --classes and --seed name, after
    printing what it holds and what was dropped; train and val must keep images."""
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    dataset = formats.read(args.format, split_paths(args.path), images=args.images, classes=classes, seed=args.seed)
    for line in dataset.report():
        print(line)
    for split in ("train", "val"):
        if not dataset.splits.get(split):
            raise UserError(f"--path {' '.join(args.path)}: no image with boxes is left in the {split} split")
    if "test" in dataset.splits and not dataset.splits["test"]:
        del dataset.splits["test"]
    return dataset


def data_command(args):
    if args.name is None:
        if args.format or args.path:
            raise UserError("--format and --path need --name NAME, the name the data set is prepared as")
        names = data.DATASETS
    elif args.name in data.BUILTIN:
        if args.format or args.path:
            raise UserError(f"--name {args.name}: the name of a built-in data set; prepare yours under another name")
        names = (args.name,)
    else:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name):
            raise UserError(f"--name {args.name!r}: letters, digits, '_', '.' and '-' only (it names a folder)")
        if not args.format or not args.path:
            raise UserError(f"--name {args.name}: give the data set's --format (coco, voc or yolo) and --path")
        dataset = read_dataset(args)
        meta = {"name": args.name, "format": args.format, "source": [os.path.abspath(p.split("=", 1)[-1])
                                                                      for p in args.path]}
        out = formats.write_coco(dataset, data.folder(args.name, args.cache), meta=meta)
        print(f"{args.name}: {out}")
        return 0
    for name, folder in data.prepare(args.cache, names=names).items():
        print(f"{name}: {folder}")
    return 0


def to_yolo_command(args):
    if not args.format or not args.path:
        raise UserError("to-yolo: give the data set's --format (coco, voc or yolo) and --path")
    dataset = read_dataset(args)
    print(f"wrote {formats.write_yolo(dataset, args.out)}")
    return 0


def train_config(args):
    """The preset with the command line's overrides."""
    overrides = {k: v for k, v in (("max_iters", args.max_iters), ("seed", args.seed),
                                   ("eval_every", getattr(args, "eval_every", None))) if v is not None}
    cfg = get_config(args.config, **overrides)
    if args.memory_format:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, memory_format=args.memory_format))
    return loading.with_data(cfg, args.data, args.cache)


def train_and_report(args, cfg, device, distiller=None):
    metrics = engine.train(cfg, args.out, resume=args.resume, cache=args.cache, device=device, amp=amp(args),
                           workers=args.workers, distiller=distiller, deterministic=args.deterministic)
    if runtime.world()[0] == 0:
        _, val = loading.datasets(cfg, args.cache)
        print(evaluation.metrics_table(metrics, title=f"{cfg.name}: {cfg.dataset} val, {len(val.images)} images, "
                                                  f"{args.out}/metrics.json"))
    return 0


def train_command(args):
    device = runtime.resolve_device(args.device)
    return train_and_report(args, train_config(args), device)


def distill_command(args):
    device = runtime.resolve_device(args.device)
    runtime.init_distributed(device)  # under torchrun: the teacher maps' pass once per machine
    cfg = train_config(args)
    t_cfg, teacher = checkpoints.load_checkpoint(args.teacher, args.cache)
    check_teacher(cfg, t_cfg)
    teacher.to_device(device)
    memo = args.memo_teacher
    if args.teacher_maps and METHODS[args.method].uses_teacher:
        # the first process computes and writes FILE, the others read it; the maps with the run's settings
        with runtime.local_first(), runtime.determinism(args.deterministic):
            train_set, _ = loading.datasets(cfg, args.cache)
            memo = teacher_memo(teacher, train_set, cfg.augment, path=args.teacher_maps)
    return train_and_report(args, cfg, device, Distiller(teacher, args.method, backend=args.backend, memo=memo))


def checkpoint_on_device(args):
    """(config, model, device) of --ckpt, the model on the device, the config on --data
    when given (whose classes must be the checkpoint's); None on every process but the
    first (under torchrun the first process answers for all)."""
    device = runtime.resolve_device(args.device)
    if rank() != 0:
        return None
    runtime.bind_device(device)
    cfg, model = checkpoints.load_checkpoint(args.ckpt, args.cache)
    if args.data and args.data != cfg.dataset:
        other = loading.with_data(cfg, args.data, args.cache)
        if other.classes != cfg.classes:
            raise UserError(f"--data {args.data}: its classes {list(other.classes)} are not the checkpoint's "
                            f"{list(cfg.classes)} (data set {cfg.dataset!r})")
        cfg = other
    return cfg, model.to_device(device), device


def eval_command(args):
    loaded = checkpoint_on_device(args)
    if loaded is None:
        return 0
    cfg, model, device = loaded
    dataset = loading.split_set(cfg, args.split, args.cache)
    metrics = evaluation.evaluate(model, dataset, device=device, amp=amp(args))
    name = "eval" if args.split == "val" else f"eval_{args.split}"
    if args.data:
        name = f"eval_{cfg.dataset}_{args.split}"
    out = os.path.join(os.path.dirname(os.path.abspath(args.ckpt)), f"{name}.json")
    checkpoints.save_json(metrics, out)
    print(evaluation.metrics_table(metrics, title=f"{cfg.name}: {cfg.dataset} {args.split}, {len(dataset.images)} images, "
                                              f"{args.ckpt}, {out}"))
    return 0


def show_command(args):
    loaded = checkpoint_on_device(args)
    if loaded is None:
        return 0
    cfg, model, _ = loaded
    n, top = evaluation.show(model, cfg, args.image, args.out, score=args.score, cache=args.cache, amp=amp(args))
    if n == 0:
        best = "no detection at all" if top is None else f"the highest scores {top:.3f}"
        print(f"0 detections above score {args.score} ({best}); {args.out} shows the image without boxes")
    else:
        print(f"{n} detections drawn to {args.out}")
    return 0


def add_data(p, what):
    p.add_argument("--data", default=None, metavar="NAME",
                   help=f"{what} (forest, fashion or one prepared with data --name NAME; default: the preset's)")


def add_source(p):
    """The options naming a data set on disk: data --name and to-yolo."""
    p.add_argument("--format", default=None, help="coco, voc or yolo")
    p.add_argument("--path", nargs="+", default=None, metavar="PATH",
                   help="coco: a JSON file, a folder with train.json and val.json [test.json], or train=FILE val=FILE "
                        "[test=FILE]; voc: the folder holding Annotations/ (or a VOCdevkit above it); yolo: the data "
                        "YAML")
    p.add_argument("--images", default=None, help="coco: the folder the JSON's file names are relative to (default: "
                                                  "images/ beside the JSON, else the JSON's folder)")
    p.add_argument("--classes", default=None, metavar="A,B,...",
                   help="the class names in label order (default: the data set's; VOC: sorted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/val/test split when the data set has none")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m bckd_train")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="prepare the forest and fashion data sets, or one of your own with --name "
                                    "(COCO json and images in the cache folder)")
    p.add_argument("--name", default=None, help="the name to prepare your data set as, <cache>/data/NAME (the "
                                                "--data of train, distill, eval and show)")
    add_source(p)
    p.add_argument("--cache", default=None, help="cache folder (default: $BCKD_CACHE or .cache)")
    p.set_defaults(run=data_command)
    p = sub.add_parser("to-yolo", help="convert a detection data set to Ultralytics' layout and data YAML")
    add_source(p)
    p.add_argument("--out", required=True, help="the folder to write (replaced if it exists)")
    p.set_defaults(run=to_yolo_command)
    p = sub.add_parser("train", help="train a preset")
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pth")
    p.add_argument("--max-iters", type=positive, default=None, help="stop after this many iterations in all")
    p.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    add_data(p, "the data set to train on")
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
                   help="reuse the teacher's maps when an (image, flip or rotation) comes back (exact: a jittered "
                        "input is never kept; saves the teacher's forward pass after the first time)")
    p.add_argument("--teacher-maps", default=None, metavar="FILE",
                   help="the teacher's maps for every training input, computed into FILE when it does not exist "
                        "and read from it after (runs with one teacher share one teacher pass); implies --memo-teacher")
    add_data(p, "the student's data set; the teacher's classes must be its classes")
    p.add_argument("--cache", default=None)
    add_device(p, training=True)
    p.set_defaults(run=distill_command)
    p = sub.add_parser("eval", help="COCO metrics of a checkpoint on its data set's val (or test) split")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--split", default="val", choices=("val", "test", "train"))
    add_data(p, "evaluate on this data set (with the checkpoint's classes) instead of the checkpoint's")
    p.add_argument("--cache", default=None)
    add_device(p)
    p.set_defaults(run=eval_command)
    p = sub.add_parser("show", help="draw a checkpoint's detections on an image")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--image", required=True, help="an image file, or a file of the prepared data set (val/NAME.jpg)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--score", type=float, default=0.3, help="lowest score drawn")
    add_data(p, "the prepared data set --image may be in (with the checkpoint's classes)")
    p.add_argument("--cache", default=None)
    add_device(p)
    p.set_defaults(run=show_command)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except UserError as exc:
        print(f"bckd_train {args.command}: {exc}", file=sys.stderr)
        code = 2
    # under torchrun: leave the process group (an unexpected error's traceback leaves as it is)
    runtime.finish_distributed()
    return code


if __name__ == "__main__":
    sys.exit(main())
