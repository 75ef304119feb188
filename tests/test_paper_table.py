"""benchmarks/paper_table.py's report from finished runs (no training)."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import paper_table  # noqa: E402


def finish(folder, ap):
    os.makedirs(folder)
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        json.dump({"AP": ap, "AP50": ap + 0.1, "AP75": ap - 0.1}, f)


def test_report_from_finished_runs(tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    finish(paper_table.teacher_dir(str(out), "fashion"), 0.60)
    aps = {"none": (0.50, 0.51, 0.49), "kd": (0.50, 0.50, 0.50), "ld": (0.52, 0.52, 0.52),
           "bcdl": (0.53, 0.53, 0.53), "ildl": (0.49, 0.50, 0.48), "bckd": (0.55, 0.56, 0.54)}
    for method, values in aps.items():
        for seed, ap in enumerate(values):
            finish(paper_table.run_dir(str(out), "fashion", method, seed), ap)
    os.remove(os.path.join(paper_table.run_dir(str(out), "fashion", "kd", 2), "metrics.json"))  # unfinished
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
