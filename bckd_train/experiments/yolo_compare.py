"""BCKD against Ultralytics' own distillation, inside Ultralytics' trainer, on real photographs.

    python -m bckd_train.experiments.yolo_compare                 # train what is missing, then report
    python -m bckd_train.experiments.yolo_compare --report-only   # tables and figures from the records

One teacher (``--teacher-model``, trained first when missing) and one student
(``--student-model``), the same schedule for every student, seeds 0, 1 and 2:

- ``alone``: the student without a teacher;
- ``feature``: Ultralytics' feature distillation at its defaults
  (``distill_model=TEACHER``, ``dis`` as in Ultralytics' default.yaml);
- ``bckd``: BCKD (:class:`bckd_kernels.yolo.BCKDTrainer`) at the paper's defaults;
- ``bckd_feature``: both.

Each run trains in its own process (``RUNS/{method}_s{seed}``), selects its
weights on val (Ultralytics' ``best.pt``) and is evaluated on the test split.
A finished run leaves a record, ``RECORDS/{method}_s{seed}.json``: test
mAP50-95, mAP50 and AP50-95 per class, the val mAP of every epoch, seconds per
epoch, the process's peak memory, for BCKD the share of a training step its
losses take, and the teacher's weight hash, so that runs of another teacher are
never mixed into one table. An interrupted run resumes from its ``last.pt``.

The data set defaults to BCCD converted from ``../shared/data/bccd`` (or
``--voc PATH``) by :func:`bckd_train.formats.write_yolo`; ``--data`` takes any
Ultralytics data YAML with a test split.

Writes, under --results: yolo_compare.csv (one row per record), yolo_compare.md
(mean ± std over seeds per method, AP per class, the teacher's margin) and
yolo_compare.png (val mAP50-95 per epoch, mean over seeds, one line per method).
"""

import argparse
import csv
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from ..sources import ROOT, default_cache

METHODS = ("alone", "feature", "bckd", "bckd_feature", "bckd_both")
DISTILLED = ("feature", "bckd", "bckd_feature", "bckd_both")
BCKD = ("bckd", "bckd_feature", "bckd_both")  # bckd_both: both branches of an end-to-end (YOLO26) student
TEACHER = "teacher"
RECIPE = dict(epochs=15, teacher_epochs=20, imgsz=320, batch=8)  # the students' and the teacher's schedules
BCCD = os.path.join(os.path.dirname(ROOT), "shared", "data", "bccd")


def offline_env(cache):
    """Ultralytics without network access: its settings in the cache, no downloads."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_CONFIG_DIR", os.path.join(cache, "ultralytics"))
    os.makedirs(os.environ["YOLO_CONFIG_DIR"], exist_ok=True)


def prepare_data(args):
    """The data YAML: --data, or BCCD converted once into the cache."""
    if args.data:
        return os.path.abspath(args.data)
    from ..formats import read_voc, write_yolo

    out = os.path.join(args.cache, "data", "bccd_yolo")
    if not os.path.exists(os.path.join(out, "data.yaml")):
        dataset = read_voc(args.voc)
        for line in dataset.report():
            print(line, flush=True)
        write_yolo(dataset, out)
    return os.path.join(out, "data.yaml")


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def run_name(method, seed):
    return f"{method}_s{seed}"


def read_record(records, name):
    path = os.path.join(records, f"{name}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_record(records, name, record):
    os.makedirs(records, exist_ok=True)
    path = os.path.join(records, f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def teacher_weights(args):
    return os.path.join(args.runs, run_name(TEACHER, 0), "weights", "best.pt")


# ------------------------------------------------------------ one run ----


def train_kwargs(args, method, seed, data):
    """Ultralytics ``train()`` keywords of one run (the trainer class apart)."""
    epochs = args.teacher_epochs if method == TEACHER else args.epochs
    kw = dict(data=data, epochs=epochs, imgsz=args.imgsz, batch=args.batch, seed=seed, deterministic=True,
              device=args.device, workers=args.workers, plots=False, project=os.path.abspath(args.runs),
              name=run_name(method, seed), exist_ok=True, verbose=False)
    if args.device == "cpu":
        kw["amp"] = False
    if method in DISTILLED:
        kw["distill_model"] = teacher_weights(args)
    if method == "bckd_feature":
        kw["bckd_feature"] = True
    if method == "bckd_both":
        kw["bckd_branch"] = "both"
    return kw


def test_metrics(weights, args, data):
    """mAP50-95, mAP50 and AP50-95 per class of ``weights`` on the test split."""
    from ultralytics import YOLO

    model = YOLO(weights)
    m = model.val(data=data, split="test", imgsz=args.imgsz, batch=args.batch, device=args.device, plots=False,
                  workers=args.workers, verbose=False, project=os.path.join(os.path.abspath(args.runs), "test"))
    names = model.names
    per_class = {names[int(c)]: float(m.box.maps[int(c)]) for c in m.box.ap_class_index}
    return {"map50_95": float(m.box.map), "map50": float(m.box.map50), "ap_per_class": per_class}


def val_curve(folder):
    """``(epochs, val mAP50-95, seconds at the end of each epoch)`` from Ultralytics' results.csv."""
    with open(os.path.join(folder, "results.csv")) as f:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
    return ([int(float(r["epoch"])) for r in rows], [float(r["metrics/mAP50-95(B)"]) for r in rows],
            [float(r["time"]) for r in rows])


def one_run(args, method, seed):
    """Trains one run in this process (resuming it when interrupted) and writes its record."""
    import torch
    from ultralytics import YOLO

    data = prepare_data(args)
    folder = os.path.join(args.runs, run_name(method, seed))
    last = os.path.join(folder, "weights", "last.pt")
    bckd = {}
    if method in BCKD:
        from bckd_kernels.yolo import BCKDTrainer

        bckd = {"trainer": BCKDTrainer}
    model_yaml = args.teacher_model if method == TEACHER else args.student_model
    epochs = args.teacher_epochs if method == TEACHER else args.epochs
    start = time.time()
    if os.path.exists(os.path.join(folder, "results.csv")) and len(val_curve(folder)[0]) >= epochs:
        pass  # trained to the end, stopped before its record: only the record is left to write
    elif os.path.exists(last):
        YOLO(last).train(resume=True, **bckd)
    else:
        YOLO(model_yaml).train(**train_kwargs(args, method, seed, data), **bckd)
    wall = time.time() - start
    epochs, curve, seconds = val_curve(folder)
    record = {
        "method": method, "seed": seed, "teacher_model": args.teacher_model,
        "student_model": None if method == TEACHER else args.student_model,
        **{k: getattr(args, k) for k in ("imgsz", "batch")},
        "epochs": len(epochs), "val_map50_95": curve,
        "seconds_per_epoch": seconds[-1] / len(epochs),
        "wall_seconds_this_process": wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "weights_sha256": sha256(os.path.join(folder, "weights", "best.pt")),
        "teacher_sha256": read_record(args.records, run_name(TEACHER, 0))["weights_sha256"] if method in DISTILLED else None,
        "test": test_metrics(os.path.join(folder, "weights", "best.pt"), args, data),
    }
    if method in BCKD:
        record["step_share"] = step_share(os.path.join(folder, "weights", "best.pt"), teacher_weights(args), data,
                                          args)
    write_record(args.records, run_name(method, seed), record)
    print(f"{run_name(method, seed)}: test mAP50-95 {record['test']['map50_95']:.4f}", flush=True)


def real_batch(data, imgsz, batch):
    """The first ``batch`` training photos of ``data``, resized to ``imgsz``², as an
    Ultralytics batch (their normalised boxes do not change under the resize)."""
    import numpy as np
    import torch
    import yaml
    from PIL import Image

    with open(data) as f:
        spec = yaml.safe_load(f)
    folder = os.path.join(spec["path"], spec["train"])
    names = sorted(os.listdir(folder))[:batch]
    images, idx, cls, boxes = [], [], [], []
    for i, name in enumerate(names):
        im = Image.open(os.path.join(folder, name)).convert("RGB").resize((imgsz, imgsz))
        images.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1))
        label = os.path.join(os.path.dirname(os.path.dirname(folder)), "labels", spec["train"].split("/")[-1],
                             os.path.splitext(name)[0] + ".txt")
        rows = torch.tensor(np.loadtxt(label, ndmin=2), dtype=torch.float32)
        idx.append(torch.full((len(rows),), float(i)))
        cls.append(rows[:, :1])
        boxes.append(rows[:, 1:])
    return {"img": torch.stack(images), "batch_idx": torch.cat(idx), "cls": torch.cat(cls), "bboxes": torch.cat(boxes)}


def step_share(student_weights, teacher_path, data, args, repeats=7):
    """Median seconds of the parts of one training step on a real batch, and the share
    BCKD's losses (forward and backward, down to the head outputs) take of the whole
    step (teacher forward, student forward, detection loss, backward through the student)."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import load_checkpoint

    from bckd_kernels.yolo import yolo_bckd_loss
    from bckd_kernels._yolo_trainer import BCKDLoss

    from .. import runtime

    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    student = load_checkpoint(student_weights)[0].to(device).float().train().requires_grad_(True)
    student.args = get_cfg()
    teacher = load_checkpoint(teacher_path)[0].to(device).float().eval().requires_grad_(False)
    batch = {k: v.to(device) for k, v in real_batch(data, args.imgsz, args.batch).items()}
    criterion = BCKDLoss(student.init_criterion(), teacher)

    def timed(fn):
        return statistics.median([runtime.timed(fn, device) for _ in range(repeats + 2)][2:])

    def detection_step():
        student.zero_grad(set_to_none=True)
        preds = student(batch["img"])
        criterion.criterion(preds, batch)[0].sum().backward()

    with torch.no_grad():
        teacher_preds = teacher(batch["img"])
    preds = student(batch["img"])
    criterion.criterion(preds, batch)  # the assigner's normaliser and positives, as in training
    assigned = criterion.assigned["one2many"]
    outputs = preds["one2many"] if "one2many" in preds else preds  # end-to-end heads: the branch always distilled
    sizes = [f.shape[2] * f.shape[3] for f in outputs["feats"]]
    positives = torch.stack([m.sum() for m in assigned.fg_mask.split(sizes, dim=1)])
    leaves = {k: v.detach().requires_grad_() for k, v in outputs.items() if k in ("scores", "boxes")}

    def bckd_losses():
        out = yolo_bckd_loss(leaves, teacher_preds, avg_factor=assigned.target_scores_sum, pos_per_level=positives,
                             level_sizes=sizes)
        torch.autograd.grad(out["loss_bcdl"] + out["loss_ildl"], list(leaves.values()))

    def teacher_forward():
        with torch.no_grad():
            teacher(batch["img"])

    parts = {"detection_step_s": timed(detection_step), "teacher_forward_s": timed(teacher_forward),
             "bckd_losses_s": timed(bckd_losses)}
    total = sum(parts.values())
    return {**parts, "share": parts["bckd_losses_s"] / total, "teacher_share": parts["teacher_forward_s"] / total,
            "batch": args.batch, "imgsz": args.imgsz, "threads": torch.get_num_threads()}


def train_all(args):
    jobs = [(TEACHER, 0)] + [(m, s) for s in args.seeds for m in args.methods]  # every method once, then again
    for method, seed in jobs:
        if read_record(args.records, run_name(method, seed)):
            continue
        cmd = [sys.executable, "-m", "bckd_train.experiments.yolo_compare", "--run", method, "--seed", str(seed)]
        for k in ("data", "voc", "cache", "runs", "records", "results", "teacher_model", "student_model", "device"):
            if getattr(args, k) is not None:
                cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        for k in ("epochs", "teacher_epochs", "imgsz", "batch", "workers"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


# ------------------------------------------------------------- report ----


def load_records(records):
    rows = []
    if os.path.isdir(records):
        for name in sorted(os.listdir(records)):
            if name.endswith(".json"):
                with open(os.path.join(records, name)) as f:
                    rows.append(json.load(f))
    teacher = [r for r in rows if r["method"] == TEACHER]
    if teacher:
        sha = teacher[0]["weights_sha256"]
        stray = [r for r in rows if r["method"] in DISTILLED and r["teacher_sha256"] != sha]
        if stray:
            raise SystemExit(f"{len(stray)} records were distilled from another teacher than {sha[:12]}: "
                             "move them out of the records folder")
    return rows


def mean_std(values):
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values, scale=100.0, digits=1):
    m, s = mean_std(values)
    if m is None:
        return "–"
    return f"{m * scale:.{digits}f} ± {s * scale:.{digits}f}"


def write_report(args, rows):
    os.makedirs(args.results, exist_ok=True)
    classes = sorted({c for r in rows for c in r["test"]["ap_per_class"]})
    with open(os.path.join(args.results, "yolo_compare.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "seed", "model", "epochs", "map50_95", "map50", *classes, "seconds_per_epoch",
                    "peak_rss_mb", "step_share", "device", "threads"])
        for r in sorted(rows, key=lambda r: (METHODS.index(r["method"]) if r["method"] in METHODS else -1, r["seed"])):
            t = r["test"]
            w.writerow([r["method"], r["seed"], r["student_model"] or r["teacher_model"], r["epochs"],
                        f"{t['map50_95']:.4f}", f"{t['map50']:.4f}",
                        *(f"{t['ap_per_class'].get(c, float('nan')):.4f}" for c in classes),
                        f"{r['seconds_per_epoch']:.1f}", f"{r['peak_rss_mb']:.0f}",
                        "" if r.get("step_share") is None else f"{r['step_share']['share']:.4f}",
                        r["device"], r["threads"]])
    by = {m: [r for r in rows if r["method"] == m] for m in (TEACHER, *METHODS)}
    lines = ["| run | seeds | mAP50-95 | mAP50 | " + " | ".join(f"AP {c}" for c in classes)
             + " | s / epoch | peak RSS (MB) | BCKD share of a step |",
             "|---" * (7 + len(classes)) + "|"]
    for m, rs in by.items():
        if not rs:
            continue
        share = [r["step_share"]["share"] for r in rs if r.get("step_share")]
        lines.append(
            f"| {m} | {len(rs)} | {fmt([r['test']['map50_95'] for r in rs])} | {fmt([r['test']['map50'] for r in rs])} | "
            + " | ".join(fmt([r["test"]["ap_per_class"][c] for r in rs if c in r["test"]["ap_per_class"]])
                         for c in classes)
            + f" | {fmt([r['seconds_per_epoch'] for r in rs], 1, 0)} | {fmt([r['peak_rss_mb'] for r in rs], 1, 0)}"
            + f" | {fmt(share, 100, 1) + ' %' if share else '–'} |")
    lines += ["", "Test split; mean ± sample std over seeds, in points (×100)."]
    lines += criteria(by)
    with open(os.path.join(args.results, "yolo_compare.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot_curves(args, by)


def criteria(by):
    """The teacher's margin and each method against the student alone, against the seed spread."""
    out = []
    alone = [r["test"]["map50_95"] for r in by["alone"]]
    if by[TEACHER] and alone:
        gap = by[TEACHER][0]["test"]["map50_95"] - statistics.mean(alone)
        out.append(f"- teacher − student alone: {gap * 100:+.1f} mAP50-95 points (needed: ≥ 5)")
    for m in DISTILLED:
        vals = [r["test"]["map50_95"] for r in by[m]]
        if len(vals) > 1 and len(alone) > 1:
            diff = statistics.mean(vals) - statistics.mean(alone)
            pooled = ((statistics.variance(vals) + statistics.variance(alone)) / 2) ** 0.5
            out.append(f"- {m} − alone: {diff * 100:+.2f} points; 2 × pooled std {2 * pooled * 100:.2f}: "
                       f"{'beyond' if diff > 2 * pooled else 'within'} the seed spread")
        alone_by_seed = {r["seed"]: r["test"]["map50_95"] for r in by["alone"]}
        paired = [(r["seed"], r["test"]["map50_95"] - alone_by_seed[r["seed"]]) for r in sorted(by[m], key=lambda r: r["seed"])
                  if r["seed"] in alone_by_seed]
        if paired:
            out.append(f"- {m} − alone, seed by seed (same initialisation and data order): "
                       + ", ".join(f"seed {s} {d * 100:+.1f}" for s, d in paired))
    if len(by["bckd"]) > 1 and len(by["feature"]) > 1:
        b, f = ([r["test"]["map50_95"] for r in by[m]] for m in ("bckd", "feature"))
        diff = statistics.mean(b) - statistics.mean(f)
        pooled = ((statistics.variance(b) + statistics.variance(f)) / 2) ** 0.5
        out.append(f"- bckd − feature: {diff * 100:+.2f} points; 2 × pooled std {2 * pooled * 100:.2f}: "
                   f"{'beyond' if diff > 2 * pooled else 'within'} the seed spread")
        feature_by_seed = {r["seed"]: r["test"]["map50_95"] for r in by["feature"]}
        paired = [(r["seed"], r["test"]["map50_95"] - feature_by_seed[r["seed"]])
                  for r in sorted(by["bckd"], key=lambda r: r["seed"]) if r["seed"] in feature_by_seed]
        out.append("- bckd − feature, seed by seed: " + ", ".join(f"seed {s} {d * 100:+.1f}" for s, d in paired))
    return [""] + out if out else []


def plot_curves(args, by):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for m, rs in by.items():
        if not rs:
            continue
        n = min(len(r["val_map50_95"]) for r in rs)
        mean = [statistics.mean(r["val_map50_95"][i] for r in rs) for i in range(n)]
        ax.plot(range(1, n + 1), [v * 100 for v in mean], label=f"{m} ({len(rs)} seed{'s' if len(rs) > 1 else ''})",
                linestyle="--" if m == TEACHER else "-")
    ax.set_xlabel("epoch")
    ax.set_ylabel("val mAP50-95")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(args.results, "yolo_compare.png"), dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bckd_train.experiments.yolo_compare",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--methods", nargs="+", default=[m for m in METHODS if m != "bckd_both"], choices=METHODS,
                        help="bckd_both needs an end-to-end student (--student-model yolo26n.yaml)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data", default=None, help="an Ultralytics data YAML with train, val and test splits")
    parser.add_argument("--voc", default=BCCD, help="the VOC data set converted when --data is not given")
    parser.add_argument("--teacher-model", default="yolo11s.yaml")
    parser.add_argument("--student-model", default="yolo11n.yaml")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--teacher-epochs", type=int, default=RECIPE["teacher_epochs"])
    parser.add_argument("--imgsz", type=int, default=RECIPE["imgsz"])
    parser.add_argument("--batch", type=int, default=RECIPE["batch"])
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", default=None, help="default: $BCKD_CACHE or .cache")
    parser.add_argument("--runs", default=os.path.join(ROOT, "runs", "yolo_compare"))
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--records", default=None, help="default: RESULTS/yolo_runs")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--run", default=None, choices=(TEACHER, *METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cache = args.cache or default_cache()
    args.records = args.records or os.path.join(args.results, "yolo_runs")
    offline_env(args.cache)
    if args.run:
        one_run(args, args.run, args.seed)
        return 0
    if not args.report_only:
        train_all(args)
    write_report(args, load_records(args.records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
