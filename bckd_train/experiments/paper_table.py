"""The paper's comparison in miniature: every distillation method, several seeds, both data sets.

    python -m bckd_train.experiments.paper_table                 # train what is missing, then report
    python -m bckd_train.experiments.paper_table --report-only   # tables and figures from the recorded runs

Each run is `python -m bckd_train distill --config {dataset}_student --teacher
OUT/{dataset}/teacher/checkpoint.pth --method M --seed S --teacher-maps
OUT/{dataset}/teacher/maps.pt --device D --resume` into OUT/{dataset}/{M}_s{S} (an interrupted
run resumes from its last epoch). The teachers are the `{dataset}_teacher` presets,
trained first when missing; their maps for every training input are computed once
and shared by the runs. Runs evaluate once, after their last epoch.

A finished run leaves a record, RECORDS/{dataset}/{M}_s{S}.json (metrics, minutes,
threads, the teacher's weight hash, the run's per-level score gap, and the device
and determinism settings its checkpoint recorded), kept with the results: the
table is built from the records and continues from them when the run folders are
gone. Training on the CPU is deterministic at a fixed thread count, so a retrained
teacher must hash to the recorded one; runs of another teacher are never mixed into
one table. On a GPU a retrained teacher hashes the same only with --deterministic
on the same GPU model and software (docs/training.md, "What repeats bitwise").

Writes, under --results: paper_table.csv (one row per recorded run),
paper_table.md (mean ± std over seeds of AP, AP50, AP75 per method, the teacher's
AP, and the criteria of docs/results.md section 4 checked), paper_table.png (bars with the seeds as
dots) and score_gap.{csv,png} (per FPN level, the validation mean of
|σ(zt) − σ(zs)| for the none, ld and bckd students, mean over seeds: the paper's
Figure 3).
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

from ..distill import METHODS
from ..sources import ROOT

DATASETS = ("fashion", "forest")
METRICS = ("AP", "AP50", "AP75")
GAP_METHODS = ("none", "ld", "bckd")
GAP_COLOURS = {"none": "tab:blue", "ld": "tab:orange", "bckd": "tab:red"}


def run_dir(out, dataset, method, seed):
    return os.path.join(out, dataset, f"{method}_s{seed}")


def teacher_dir(out, dataset):
    return os.path.join(out, dataset, "teacher")


def record_path(records, dataset, name):
    return os.path.join(records, dataset, f"{name}.json")


def read_record(records, dataset, name):
    path = record_path(records, dataset, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_record(records, dataset, name, record):
    path = record_path(records, dataset, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=1)


def finished(folder):
    return os.path.exists(os.path.join(folder, "metrics.json"))


def weights_sha256(ckpt):
    """Hash of a checkpoint's weights (:func:`bckd_train.checkpoints.weights_sha256`)."""
    import torch

    from .. import checkpoints

    return checkpoints.weights_sha256(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])


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


def checkpoint_runtime(folder):
    """The device and determinism settings a run's checkpoint recorded
    (:func:`bckd_train.runtime.settings`; None for a checkpoint written before they were kept)."""
    import torch

    path = os.path.join(folder, "checkpoint.pth")
    if not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False).get("runtime")


def run_record(folder, threads, teacher_sha):
    """A finished run folder's record: its metrics, wall time, thread count, and the
    device and determinism settings it ran with (whether a retrained run can repeat it
    bitwise depends on them: docs/training.md)."""
    with open(os.path.join(folder, "metrics.json")) as f:
        metrics = json.load(f)
    wall = os.path.join(folder, "wall.json")
    minutes = json.load(open(wall))["minutes"] if os.path.exists(wall) else None
    return {"metrics": metrics, "minutes": minutes, "threads": threads, "teacher_sha256": teacher_sha,
            "runtime": checkpoint_runtime(folder)}


def prepare_teacher(args, dataset, py):
    """Trains (or finds) the data set's teacher and checks it against its record; returns its hash."""
    folder = teacher_dir(args.out, dataset)
    if not finished(folder):
        print(f"training the {dataset} teacher", flush=True)
        launch(py + ["train", "--config", f"{dataset}_teacher", "--device", args.device], folder, args.threads)
    sha = weights_sha256(os.path.join(folder, "checkpoint.pth"))
    recorded = read_record(args.records, dataset, "teacher")
    if recorded is None:
        write_record(args.records, dataset, "teacher", run_record(folder, args.threads, sha))
    elif recorded["teacher_sha256"] != sha:
        was, now = recorded.get("runtime") or {}, checkpoint_runtime(folder) or {}
        where = "".join(f", {k} {was[k]!r} (now {now.get(k)!r})" for k in ("device", "device_name")
                        if k in was and was[k] != now.get(k))
        raise SystemExit(f"the {dataset} teacher in {folder} (sha256 {sha[:12]}) is not the one the recorded runs "
                         f"distilled from ({recorded['teacher_sha256'][:12]}, trained with {recorded['threads']} "
                         f"threads{where}): retrain it with --threads {recorded['threads']} on that device, or move "
                         f"{os.path.dirname(record_path(args.records, dataset, 'teacher'))} away to start a new table")
    return sha


def train_all(args):
    import torch

    from .. import checkpoints, distill, loading, runtime
    from ..config import get_config

    py = [sys.executable, "-m", "bckd_train"]
    threads = max(1, args.threads // args.jobs)
    torch.set_num_threads(threads)
    device = runtime.resolve_device(args.device)
    jobs, teachers = [], {}
    for dataset in args.datasets:
        todo = [(m, s) for s in args.seeds for m in args.methods
                if read_record(args.records, dataset, f"{m}_s{s}") is None]
        if not todo:
            continue
        sha = prepare_teacher(args, dataset, py)
        t_ckpt = os.path.join(teacher_dir(args.out, dataset), "checkpoint.pth")
        maps = os.path.join(teacher_dir(args.out, dataset), "maps.pt")
        t_cfg, teacher = checkpoints.load_checkpoint(t_ckpt)
        teacher.to_device(device)
        if any(METHODS[m].uses_teacher for m, _ in todo) and not os.path.exists(maps):
            print(f"computing the {dataset} teacher's maps", flush=True)
            s_cfg = get_config(f"{dataset}_student")
            train_set, _ = loading.datasets(s_cfg)
            distill.teacher_memo(teacher, train_set, s_cfg.augment, path=maps)
        _, val = loading.datasets(t_cfg)
        teachers[dataset] = (teacher, val, sha)
        for method, seed in todo:
            cmd = py + ["distill", "--config", f"{dataset}_student", "--teacher", t_ckpt, "--method", method,
                        "--seed", str(seed), "--teacher-maps", maps, "--eval-every", "0", "--device", args.device]
            jobs.append((dataset, method, seed, cmd))
    print(f"{len(jobs)} runs to do, {args.jobs} at a time", flush=True)

    def one(job):
        dataset, method, seed, cmd = job
        folder = run_dir(args.out, dataset, method, seed)
        if not finished(folder):
            launch(cmd, folder, threads)
        teacher, val, sha = teachers[dataset]
        record = run_record(folder, threads, sha)
        _, student = checkpoints.load_checkpoint(os.path.join(folder, "checkpoint.pth"))
        record["score_gap"] = distill.score_gap(student.to_device(device), teacher, val, device=device)
        write_record(args.records, dataset, f"{method}_s{seed}", record)
        print(f"{dataset} {method}_s{seed}: AP {100 * record['metrics']['AP']:.1f}, {record['minutes'] or 0:.1f} min",
              flush=True)

    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(one, jobs))


# ------------------------------------------------------------- reporting ----


def load_rows(args):
    rows = []
    for dataset in args.datasets:
        for method in ["teacher", *args.methods]:
            for seed in [None] if method == "teacher" else args.seeds:
                record = read_record(args.records, dataset, "teacher" if seed is None else f"{method}_s{seed}")
                if record is None:
                    continue
                minutes = record["minutes"] if record["minutes"] is not None else float("nan")
                rows.append({"dataset": dataset, "method": method, "seed": "" if seed is None else seed,
                             **{k: 100 * record["metrics"][k] for k in METRICS}, "minutes": minutes,
                             "score_gap": record.get("score_gap")})
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
    """The paper's claims (each method's :class:`bckd_train.distill.Claim` entries, the
    criteria of docs/results.md section 4) on one data set: (text, met or None when not
    enough runs)."""
    ap = {m: summarise(rows, dataset, m, "AP") for m in METHODS}
    return [check_claim(ap, method, claim) for method, entry in METHODS.items() for claim in entry.claims]


def check_claim(ap, method, claim):
    """(text, met or None) of one claim of ``method``; ap: :func:`summarise` of each
    method's AP, a claim needs two runs of each method it compares."""
    other, cmp = claim.other, ">" if claim.strict else "≥"
    if not all(ap[m] is not None and ap[m][2] >= 2 for m in (method, other)):
        return (f"{method} beats {other} by {cmp} {claim.stds} pooled std" if claim.stds
                else f"{method} {cmp} {other}"), None
    gain = ap[method][0] - ap[other][0]
    if claim.stds:
        margin = claim.stds * math.sqrt((ap[method][1] ** 2 + ap[other][1] ** 2) / 2)
        text = f"{method} − {other} = {gain:+.2f} AP vs {claim.stds} × pooled std = {margin:.2f}"
    else:
        margin = 0
        text = f"{method} − {other} = {gain:+.2f} AP ({cmp} 0)"
    return text, gain > margin if claim.strict else gain >= margin


def write_report(args, rows):
    os.makedirs(args.results, exist_ok=True)
    with open(os.path.join(args.results, "paper_table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "method", "seed", *METRICS, "minutes"], extrasaction="ignore")
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


def score_gaps(args, rows):
    """Figure 3: per-level mean |σ(zt) − σ(zs)| on the val set for the none/ld/bckd students (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gaps = []
    for dataset in args.datasets:
        for method in GAP_METHODS:
            per_seed = [r["score_gap"] for r in rows if r["dataset"] == dataset and r["method"] == method and r["score_gap"]]
            for level, values in enumerate(zip(*per_seed)):
                gaps.append({"dataset": dataset, "method": method, "level": f"P{level + 3}",
                             "gap": statistics.mean(values), "seeds": len(values)})
    if not gaps:
        return
    with open(os.path.join(args.results, "score_gap.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["dataset", "method", "level", "gap", "seeds"])
        writer.writeheader()
        writer.writerows(gaps)
    datasets = [d for d in args.datasets if any(g["dataset"] == d for g in gaps)]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        methods = [m for m in GAP_METHODS if any(g["dataset"] == dataset and g["method"] == m for g in gaps)]
        for j, method in enumerate(methods):
            sub = [g for g in gaps if g["dataset"] == dataset and g["method"] == method]
            xs = [i + (j - (len(methods) - 1) / 2) * 0.25 for i in range(len(sub))]
            ax.bar(xs, [g["gap"] for g in sub], width=0.25, label=f"{method} ({sub[0]['seeds']} seeds)",
                   color=GAP_COLOURS[method])
        ax.set_xticks(range(len(sub)), [g["level"] for g in sub])
        ax.set_ylabel("mean |σ(zt) − σ(zs)|")
        ax.set_title(f"{dataset}: teacher-student score gap (val)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.results, "score_gap.png"), dpi=100)
    plt.close(fig)
    for g in gaps:
        print(f"{g['dataset']:8s} {g['method']:5s} {g['level']}: {g['gap']:.5f} ({g['seeds']} seeds)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bckd_train.experiments.paper_table", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "paper"), help="run folders and teachers")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    parser.add_argument("--records", default=None, help="finished runs' records (default: RESULTS/paper_runs)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads shared by the jobs")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda: the runs' and "
                                                         "the teacher maps' device")
    parser.add_argument("--report-only", action="store_true", help="no training: report the recorded runs")
    args = parser.parse_args(argv)
    args.records = args.records or os.path.join(args.results, "paper_runs")
    if not args.report_only:
        train_all(args)
    rows = load_rows(args)
    write_report(args, rows)
    score_gaps(args, rows)


if __name__ == "__main__":
    main()
