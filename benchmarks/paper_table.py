"""The paper's comparison in miniature: every distillation method, several seeds, both data sets.

    python benchmarks/paper_table.py                 # train what is missing, then report
    python benchmarks/paper_table.py --report-only   # tables and figures from the finished runs

Each run is `python -m bckd_train distill --config {dataset}_student --teacher
OUT/{dataset}/teacher/checkpoint.pth --method M --seed S --memo-teacher --resume`
into OUT/{dataset}/{M}_s{S}; a run is finished when its metrics.json exists, so an
interrupted table continues where it stopped (and an interrupted run from its last
epoch). The teachers are the `{dataset}_teacher` presets, trained first when missing. Runs evaluate once, after
their last epoch (evaluation does not touch training: same weights either way).

Writes, under --results: paper_table.csv (one row per finished run),
paper_table.md (mean ± std over seeds of AP, AP50, AP75 per method, the teacher's
AP, and the issue's targets checked), paper_table.png (bars with the seeds as
dots) and score_gap.{csv,png} (per FPN level, the validation mean of
|σ(zt) − σ(zs)| for the none, ld and bckd students: the paper's Figure 3).
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bckd_train.distill import METHODS  # noqa: E402

DATASETS = ("fashion", "forest")
METRICS = ("AP", "AP50", "AP75")
GAP_COLOURS = {"none": "tab:blue", "ld": "tab:orange", "bckd": "tab:red"}


def run_dir(out, dataset, method, seed):
    return os.path.join(out, dataset, f"{method}_s{seed}")


def teacher_dir(out, dataset):
    return os.path.join(out, dataset, "teacher")


def finished(folder):
    return os.path.exists(os.path.join(folder, "metrics.json"))


def launch(cmd, folder, threads):
    """Runs one training command (resumable), its output to folder/stdout.log; returns minutes."""
    os.makedirs(folder, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    with open(os.path.join(folder, "stdout.log"), "a") as log:
        rc = subprocess.run(cmd + ["--out", folder, "--resume"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({rc}); see {folder}/stdout.log")
    minutes = (time.time() - t0) / 60
    with open(os.path.join(folder, "wall.json"), "w") as f:
        json.dump({"minutes": minutes, "threads": threads}, f)
    return minutes


def train_all(args):
    py = [sys.executable, "-m", "bckd_train"]
    for dataset in args.datasets:
        folder = teacher_dir(args.out, dataset)
        if not finished(folder):
            print(f"training the {dataset} teacher", flush=True)
            launch(py + ["train", "--config", f"{dataset}_teacher"], folder, args.threads)
    jobs = []
    for seed in args.seeds:
        for dataset in args.datasets:
            for method in args.methods:
                folder = run_dir(args.out, dataset, method, seed)
                if not finished(folder):
                    teacher = os.path.join(teacher_dir(args.out, dataset), "checkpoint.pth")
                    cmd = py + ["distill", "--config", f"{dataset}_student", "--teacher", teacher, "--method", method,
                                "--seed", str(seed), "--memo-teacher", "--eval-every", "0"]
                    jobs.append((cmd, folder))
    print(f"{len(jobs)} runs to do, {args.jobs} at a time", flush=True)
    threads = max(1, args.threads // args.jobs)

    def one(job):
        cmd, folder = job
        minutes = launch(cmd, folder, threads)
        print(f"{os.path.relpath(folder, args.out)}: {minutes:.1f} min", flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


# ------------------------------------------------------------- reporting ----


def load_rows(args):
    rows = []
    for dataset in args.datasets:
        for method in ["teacher", *args.methods]:
            seeds = [None] if method == "teacher" else args.seeds
            for seed in seeds:
                folder = teacher_dir(args.out, dataset) if method == "teacher" else run_dir(args.out, dataset, method, seed)
                if not finished(folder):
                    continue
                with open(os.path.join(folder, "metrics.json")) as f:
                    metrics = json.load(f)
                wall = os.path.join(folder, "wall.json")
                minutes = json.load(open(wall))["minutes"] if os.path.exists(wall) else float("nan")
                rows.append({"dataset": dataset, "method": method, "seed": "" if seed is None else seed,
                             **{k: 100 * metrics[k] for k in METRICS}, "minutes": minutes})
    return rows


def summarise(rows, dataset, method, key):
    values = [r[key] for r in rows if r["dataset"] == dataset and r["method"] == method and not math.isnan(r[key])]
    if not values:
        return None
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan")), len(values)


def fmt(s):
    if s is None:
        return "—"
    mean, std, n = s
    return f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"


def targets(rows, dataset):
    """The issue's targets on one data set: (text, met or None when not enough runs)."""
    ap = {m: summarise(rows, dataset, m, "AP") for m in METHODS}
    checks = []

    def have(*ms):
        return all(ap[m] is not None and ap[m][2] >= 2 for m in ms)

    if have("bckd", "none"):
        pooled = math.sqrt((ap["bckd"][1] ** 2 + ap["none"][1] ** 2) / 2)
        gain = ap["bckd"][0] - ap["none"][0]
        checks.append((f"bckd − none = {gain:+.2f} AP vs 2 × pooled std = {2 * pooled:.2f}", gain > 2 * pooled))
    else:
        checks.append(("bckd beats none by > 2 pooled std", None))
    if have("bckd", "ld"):
        gain = ap["bckd"][0] - ap["ld"][0]
        checks.append((f"bckd − ld = {gain:+.2f} AP (≥ 0)", gain >= 0))
    else:
        checks.append(("bckd ≥ ld", None))
    for m in ("bcdl", "ildl"):
        if have(m, "none"):
            gain = ap[m][0] - ap["none"][0]
            checks.append((f"{m} − none = {gain:+.2f} AP (> 0)", gain > 0))
        else:
            checks.append((f"{m} > none", None))
    return checks


def write_report(args, rows):
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "paper_table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "method", "seed", *METRICS, "minutes"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.2f}" if isinstance(v, float) else v) for k, v in r.items()})
    lines = []
    for dataset in args.datasets:
        teacher = summarise(rows, dataset, "teacher", "AP")
        lines.append(f"### {dataset} (teacher AP {fmt(teacher)})\n")
        lines.append("| method | runs | AP | AP50 | AP75 | minutes per run |")
        lines.append("|---|---|---|---|---|---|")
        for method in args.methods:
            s = {k: summarise(rows, dataset, method, k) for k in (*METRICS, "minutes")}
            n = s["AP"][2] if s["AP"] else 0
            minutes = f"{s['minutes'][0]:.1f}" if s["minutes"] else "—"
            lines.append(f"| {method} | {n} | {fmt(s['AP'])} | {fmt(s['AP50'])} | {fmt(s['AP75'])} | {minutes} |")
        lines.append("")
        for text, ok in targets(rows, dataset):
            mark = "not yet measured" if ok is None else ("met" if ok else "missed")
            lines.append(f"- {text}: **{mark}**")
        lines.append("")
    with open(os.path.join(args.results, "paper_table.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    plot_bars(args, rows)


def plot_bars(args, rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.datasets), figsize=(5 * len(args.datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], args.datasets):
        for i, method in enumerate(args.methods):
            s = summarise(rows, dataset, method, "AP")
            if s is None:
                continue
            ax.bar(i, s[0], color="tab:red" if method == "bckd" else "tab:blue", alpha=0.7)
            values = [r["AP"] for r in rows if r["dataset"] == dataset and r["method"] == method]
            ax.plot([i] * len(values), values, "k.", ms=4)
        teacher = summarise(rows, dataset, "teacher", "AP")
        if teacher:
            ax.axhline(teacher[0], color="gray", ls="--", lw=1, label=f"teacher {teacher[0]:.1f}")
            ax.legend(loc="lower right")
        aps = [r["AP"] for r in rows if r["dataset"] == dataset and r["method"] != "teacher"]
        if aps:
            ax.set_ylim(min(aps) - 3, max(aps + ([teacher[0]] if teacher else [])) + 2)
        ax.set_xticks(range(len(args.methods)), args.methods)
        ax.set_title(f"{dataset}: student AP (mean, seeds as dots)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.results, "paper_table.png"), dpi=100)
    plt.close(fig)


def score_gaps(args):
    """Figure 3: per-level mean |σ(zt) − σ(zs)| on the val set for the seed-0 none/ld/bckd students."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bckd_train import distill, engine

    rows = []
    for dataset in args.datasets:
        t_path = os.path.join(teacher_dir(args.out, dataset), "checkpoint.pth")
        if not os.path.exists(t_path):
            continue
        _, teacher = engine.load_checkpoint(t_path)
        for method in ("none", "ld", "bckd"):
            folder = run_dir(args.out, dataset, method, args.seeds[0])
            if not finished(folder) or not os.path.exists(os.path.join(folder, "checkpoint.pth")):
                continue
            cfg, student = engine.load_checkpoint(os.path.join(folder, "checkpoint.pth"))
            _, val = engine.datasets(cfg)
            for level, gap in enumerate(distill.score_gap(student, teacher, val)):
                rows.append({"dataset": dataset, "method": method, "level": f"P{level + 3}", "gap": gap})
    if not rows:
        return
    with open(os.path.join(args.results, "score_gap.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "method", "level", "gap"])
        writer.writeheader()
        writer.writerows(rows)
    datasets = sorted({r["dataset"] for r in rows}, key=args.datasets.index)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        methods = [m for m in ("none", "ld", "bckd") if any(r["dataset"] == dataset and r["method"] == m for r in rows)]
        for j, method in enumerate(methods):
            sub = [r for r in rows if r["dataset"] == dataset and r["method"] == method]
            xs = [i + (j - (len(methods) - 1) / 2) * 0.25 for i in range(len(sub))]
            ax.bar(xs, [r["gap"] for r in sub], width=0.25, label=method, color=GAP_COLOURS[method])
        ax.set_xticks(range(len(sub)), [r["level"] for r in sub])
        ax.set_ylabel("mean |σ(zt) − σ(zs)|")
        ax.set_title(f"{dataset}: teacher-student score gap (val)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.results, "score_gap.png"), dpi=100)
    plt.close(fig)
    for r in rows:
        print(f"{r['dataset']:8s} {r['method']:5s} {r['level']}: {r['gap']:.5f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "paper"), help="run folders (the cache)")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads shared by the jobs")
    parser.add_argument("--report-only", action="store_true", help="no training: report the finished runs")
    args = parser.parse_args(argv)
    if not args.report_only:
        train_all(args)
    write_report(args, load_rows(args))
    score_gaps(args)


if __name__ == "__main__":
    main()
