"""The Ultralytics comparison's records and report (bckd_train.experiments.yolo_compare):
records of one teacher only, the student alone free of any, and the criteria the
report prints, on records this test writes."""

import json

import pytest

from bckd_train.experiments import yolo_compare as yc


def record(method, seed, score, teacher="t1"):
    return {"method": method, "seed": seed, "test": {"map50_95": score, "map50": score + 0.2, "ap_per_class": {}},
            "weights_sha256": f"{method}{seed}", "teacher_sha256": teacher if method in yc.DISTILLED else None}


def write(folder, rows):
    folder.mkdir(exist_ok=True)
    for r in rows:
        (folder / f"{r['method']}_s{r['seed']}.json").write_text(json.dumps(r))


def test_records_of_another_teacher_are_refused(tmp_path):
    teacher = dict(record("teacher", 0, 0.36), weights_sha256="t1")
    write(tmp_path / "ok", [teacher, record("alone", 0, 0.2, teacher="old"), record("bckd", 0, 0.25)])
    assert len(yc.load_records(str(tmp_path / "ok"))) == 3  # the student alone names no teacher it used
    write(tmp_path / "mixed", [teacher, record("bckd", 0, 0.25), record("feature", 0, 0.24, teacher="old")])
    with pytest.raises(SystemExit, match="1 records were distilled from another teacher"):
        yc.load_records(str(tmp_path / "mixed"))


def test_criteria_pair_the_seeds():
    rows = [dict(record("teacher", 0, 0.36), weights_sha256="t1")]
    rows += [record("alone", s, v) for s, v in enumerate((0.187, 0.241, 0.256))]
    rows += [record("feature", s, v) for s, v in enumerate((0.235, 0.244, 0.259))]
    rows += [record("bckd", s, v) for s, v in enumerate((0.260, 0.294, 0.260))]
    by = {m: [r for r in rows if r["method"] == m] for m in (yc.TEACHER, *yc.METHODS)}
    lines = yc.criteria(by)
    assert "- teacher − student alone: +13.2 mAP50-95 points (needed: ≥ 5)" in lines
    assert "- bckd − alone, seed by seed (same initialisation and data order): seed 0 +7.3, seed 1 +5.3, seed 2 +0.4" \
        in lines
    assert "- bckd − feature, seed by seed: seed 0 +2.5, seed 1 +5.0, seed 2 +0.1" in lines
    verdicts = [line for line in lines if "pooled std" in line]
    assert len(verdicts) == 3 and all(line.endswith("the seed spread") for line in verdicts)
