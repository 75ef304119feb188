"""bckd_train.experiments.paper_table's report from recorded runs (no training)."""

import argparse
import os

import pytest
import torch

from bckd_train import distill
from bckd_train.experiments import paper_table


def record(records, name, ap, gap=None):
    paper_table.write_record(str(records), "fashion", name, {
        "metrics": {"AP": ap, "AP50": ap + 0.1, "AP75": ap - 0.1}, "minutes": 1.0, "threads": 1,
        "teacher_sha256": "0" * 64, **({"score_gap": gap} if gap else {})})


def test_report_from_recorded_runs(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    records = results / "paper_runs"
    record(records, "teacher", 0.60)
    aps = {"none": (0.50, 0.51, 0.49), "kd": (0.50, 0.50), "ld": (0.52, 0.52, 0.52),
           "bcdl": (0.53, 0.53, 0.53), "ildl": (0.49, 0.50, 0.48), "bckd": (0.55, 0.56, 0.54)}
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            record(records, f"{method}_s{seed}", ap, [0.1 * (seed + 1), 0.2] if method in ("none", "bckd") else None)
    paper_table.main(["--report-only", "--datasets", "fashion", "--out", str(out), "--results", str(results)])
    md = (results / "paper_table.md").read_text()
    assert "teacher AP 60.0" in md
    assert "| none | 3 | 50.0 ± 1.0 | 60.0 ± 1.0 | 40.0 ± 1.0 |" in md
    assert "| kd | 2 | 50.0 ± 0.0 |" in md
    assert "bckd − none = +5.00 AP vs 2 × pooled std = 2.00: **met**" in md
    assert "bckd − ld = +3.00 AP (≥ 0): **met**" in md
    assert "bcdl − none = +3.00 AP (> 0): **met**" in md
    assert "ildl − none = -1.00 AP (> 0): **missed**" in md
    rows = (results / "paper_table.csv").read_text().splitlines()
    assert len(rows) == 1 + 1 + 17
    assert (results / "paper_table.png").exists()
    gaps = (results / "score_gap.csv").read_text().splitlines()
    assert gaps[0] == "dataset,method,level,gap,seeds"
    assert gaps[1:] == ["fashion,none,P3,0.2,3", "fashion,none,P4,0.2,3", "fashion,bckd,P3,0.2,3", "fashion,bckd,P4,0.2,3"]
    assert (results / "score_gap.png").exists()


def test_a_different_teacher_is_refused(tmp_path):
    out, records = tmp_path / "runs", tmp_path / "records"
    folder = paper_table.teacher_dir(str(out), "fashion")
    os.makedirs(folder)
    torch.save({"model": {"w": torch.ones(2, 3, 1, 1).to(memory_format=torch.channels_last)}},
               os.path.join(folder, "checkpoint.pth"))
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        f.write('{"AP": 0.6, "AP50": 0.7, "AP75": 0.5}')
    args = argparse.Namespace(out=str(out), records=str(records), threads=1)
    sha = paper_table.prepare_teacher(args, "fashion", py=None)  # first sight: recorded
    assert paper_table.read_record(str(records), "fashion", "teacher")["teacher_sha256"] == sha
    assert paper_table.prepare_teacher(args, "fashion", py=None) == sha  # the same weights: accepted
    torch.save({"model": {"w": torch.zeros(2, 3, 1, 1)}}, os.path.join(folder, "checkpoint.pth"))
    with pytest.raises(SystemExit, match="not the one the recorded runs distilled from"):
        paper_table.prepare_teacher(args, "fashion", py=None)


def test_methods_and_claims_come_from_the_method_table(tmp_path, monkeypatch):
    """A method added to bckd_train.distill.METHODS is a run, a table row and its claims' checks."""
    assert paper_table.METHODS is distill.METHODS
    assert all(c.other in distill.METHODS for entry in distill.METHODS.values() for c in entry.claims)
    monkeypatch.setitem(distill.METHODS, "kd2", distill.Method(distill.kd_losses, claims=(distill.Claim("kd"),)))
    results = tmp_path / "results"
    for name, ap in (("teacher", 0.6), ("kd_s0", 0.50), ("kd_s1", 0.52), ("kd2_s0", 0.53), ("kd2_s1", 0.55)):
        record(results / "paper_runs", name, ap)
    paper_table.main(["--report-only", "--datasets", "fashion", "--methods", "kd", "kd2", "--seeds", "0", "1",
                      "--out", str(tmp_path / "runs"), "--results", str(results)])
    md = (results / "paper_table.md").read_text()
    assert "| kd2 | 2 | 54.0 ± 1.4 |" in md
    assert "kd2 − kd = +3.00 AP (> 0): **met**" in md
    assert "bcdl > none: **not yet measured**" in md
