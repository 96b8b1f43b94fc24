"""Run records (recipes/engine/run_record.py) and collecting a sweep from them alone (recipes/table3/store.py).

A fake 2-fold x 2-seed sweep (rows erm, focal, ours_shot, ours_focal and the shot teachers) is written as
train.py writes it: result.json, predictions.npz, metrics.jsonl and, through the real writer, the record.
Every table and evidence CSV recomputed from ``records/`` alone must equal, byte for byte, the one from the
run folders. One real
tiny run of ``recipes.train`` checks that a run writes its record.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from recipes.config import ConfigError
from recipes.data import generate_synthetic
from recipes.engine.run_record import RECORD_JSON, RECORD_NPZ, code_version, record_arrays, write_record
from recipes.table3 import cli as table3_cli
from recipes.table3.rows import SweepError
from recipes.table3.store import RunStore, provenance
from recipes.train import main as train_main
from rskd_loss.metrics import average_precision_per_class
from rskd_loss.partition import Partition

REPO = Path(__file__).resolve().parents[2]
C, N_TEST, N_VAL = 5, 24, 16
COUNTS = [150, 120, 50, 30, 10]
ROWS = {"erm": ("erm", "baseline"), "focal": ("focal", "baseline"), "ours_shot": ("ours_shot", "student"),
        "ours_focal-shot": ("ours_focal", "student")}
ARGS = ["--profile", "paper", "--folds", "0", "1", "--seeds", "0", "1", "--rows", "erm", "focal", "ours_shot",
        "ours_focal", "--no-figures"]


def _part(rng: np.random.Generator, fold: int, n: int, classes, offset: int) -> dict[str, np.ndarray]:
    """One part of a run: the fold's images and targets (the same in every run of the fold), own logits."""
    y = (np.random.default_rng(offset + fold).random((n, C)) < 0.4).astype(np.float32)[:, list(classes)]
    y[0] = 1.0  # every class has a positive
    logits = (y + rng.normal(0, 0.7, y.shape)).astype(np.float32)
    return {"logits": logits, "targets": y, "rows": np.arange(offset + fold, offset + fold + 2 * n, 2)}


def write_fake_run(run: Path, name: str, stage: str, fold: int, seed: int, classes, rng: np.random.Generator,
                   commit: str | None = None) -> None:
    """A finished run as train.py leaves it (result.json last), the record by the real writer."""
    run.mkdir(parents=True, exist_ok=True)
    parts = {"test": _part(rng, fold, N_TEST, classes, 0), "val": _part(rng, fold, N_VAL, classes, 1000)}
    ap = {p: average_precision_per_class(v["logits"], v["targets"]) for p, v in parts.items()}
    result = {"name": name, "stage": stage, "fold": fold, "seed": seed, "classes": list(classes),
              "class_names": [f"c{c}" for c in classes], "train_class_counts": [COUNTS[c] for c in classes],
              "thresholds": [100, 20], "seconds": 1.5 + fold + 0.25 * seed, "device": "cpu",
              **{p: {"ap": [None if math.isnan(a) else float(a) for a in ap[p]]} for p in ap}}
    lines = [{"epoch": e, "kd_weights": [0.5 / (e + 1)] * len(classes), "grad_kd": [1.0] * len(classes),
              "grad_base": [2.0] * len(classes)} for e in range(2)] if stage == "student" else [{"epoch": 0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
    arrays = {"classes": np.asarray(classes)}
    for p, v in parts.items():
        arrays.update({f"{p}_{k}": v[k] for k in ("logits", "targets", "rows")})
    np.savez(run / "predictions.npz", **arrays)
    write_record(run, result, record_arrays(classes, parts), {"run": {"seed": seed}}, command=["fake", name],
                 started=time.time() - 2, ended=time.time())
    if commit is not None:  # pretend another checkout made it
        doc = json.loads((run / RECORD_JSON).read_text())
        doc["code"] = {"commit": commit, "dirty": False, "reason": None}
        (run / RECORD_JSON).write_text(json.dumps(doc))
    (run / "result.json").write_text(json.dumps(result, indent=1, sort_keys=True))


def make_sweep(out: Path, other_commit_for: str | None = None) -> Path:
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        for seed in (0, 1):
            cell = out / f"fold{fold}" / f"seed{seed}"
            for folder, (name, stage) in ROWS.items():
                other = "0" * 40 if f"fold{fold}/seed{seed}/{folder}" == other_commit_for else None
                write_fake_run(cell / folder, name, stage, fold, seed, range(C), rng, commit=other)
            part = Partition(subsets=((0, 1), (2, 3), (4,)), names=("head", "medium", "tail"), num_classes=C)
            part.to_json(cell / "teachers_shot" / "partition.json")
            for j, sub in enumerate(part.subsets):
                write_fake_run(cell / "teachers_shot" / f"subset{j}", f"teacher{j}", "teacher", fold, seed, sub, rng)
    (out / "fold0" / "seed0" / "oltr_stage1").mkdir()  # an unfinished run (no result.json): not gathered
    (out / "fold0" / "seed0" / "oltr_stage1" / RECORD_JSON).write_text("{}")
    return out


TABLE_FILES = ("table3.md", "table3.csv", "table4.md", "table4.csv")
EVIDENCE_FILES = ("paired.csv", "paired_cells.csv", "pooled.csv", "pooled_counts.csv", "teachers.csv",
                  "kd_weights.csv", "grad_ratio.csv", "ap_change.csv")


def _outputs(out: Path) -> dict[str, bytes]:
    return {n: (out / n).read_bytes() for n in TABLE_FILES} | {
        n: (out / "evidence" / n).read_bytes() for n in EVIDENCE_FILES}


def test_tables_and_evidence_from_the_records_alone_equal_those_from_the_run_folders(tmp_path, capsys):
    out = make_sweep(tmp_path / "sweep")
    assert table3_cli.main(["--out", str(out), "--collect-only", "--evidence", *ARGS]) == 0
    assert "gathered into" in capsys.readouterr().out
    from_runs = _outputs(out)
    records = out / "records"
    assert (records / "fold1/seed0/ours_focal-shot" / RECORD_NPZ).is_file()
    assert (records / "fold1/seed1/teachers_shot/partition.json").is_file()
    assert (records / "fold0/seed1/teachers_shot/subset2" / RECORD_JSON).is_file()
    assert not (records / "fold0/seed0/oltr_stage1").exists()  # not finished
    for p in list(out.iterdir()):  # everything but records/ goes: run folders, tables, evidence
        if p.name != "records":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert table3_cli.main(["--out", str(out), "--collect-only", "--from-records", "--evidence", *ARGS]) == 0
    again = _outputs(out)
    assert again == from_runs
    assert b"| ERM |" in again["table3.md"] and again["pooled.csv"].count(b"\n") > 10
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["runs"] == 4 * (4 + 3) and prov["with_record"] == prov["runs"]
    assert not any("code versions" in w or "no record" in w for w in prov["warnings"])  # one commit, all recorded
    assert [c["commit"] for c in prov["commits"]] == [code_version()["commit"]]
    text = (out / "evidence" / "evidence.md").read_text()
    assert f"`{code_version()['commit']}`" in text and "fold as unit" in text


def test_from_records_in_another_folder_and_its_errors(tmp_path):
    out = make_sweep(tmp_path / "sweep")
    table3_cli.main(["--out", str(out), "--collect-only", *ARGS])
    elsewhere = tmp_path / "clone" / "results"
    shutil.copytree(out / "records", elsewhere / "records")
    assert table3_cli.main(["--out", str(elsewhere), "--collect-only", "--from-records",
                            str(elsewhere / "records"), *ARGS]) == 0
    assert (elsewhere / "table3.csv").read_bytes() == (out / "table3.csv").read_bytes()
    with pytest.raises(SweepError, match="expected a folder of run records"):
        table3_cli.main(["--out", str(tmp_path / "none"), "--collect-only", "--from-records", *ARGS])
    with pytest.raises(ConfigError, match="--collect-only"):
        table3_cli.main(["--out", str(out), "--from-records", *ARGS])


def test_a_sweep_of_mixed_commits_is_warned_about(tmp_path, capsys):
    out = make_sweep(tmp_path / "sweep", other_commit_for="fold1/seed1/focal")
    assert table3_cli.main(["--out", str(out), "--collect-only", "--evidence", *ARGS]) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "2 code versions" in err
    prov = json.loads((out / "provenance.json").read_text())
    assert sorted(c["runs"] for c in prov["commits"]) == [1, 27]
    assert "2 code versions" in (out / "evidence" / "evidence.md").read_text()
    (out / "fold0/seed0/erm" / RECORD_JSON).unlink()  # a run older than the records
    prov = provenance(RunStore(out), ["fold0/seed0/erm", "fold0/seed0/focal", "fold0/seed0/none"])
    assert (prov["runs"], prov["with_record"], prov["without_record"]) == (2, 1, ["fold0/seed0/erm"])


def test_code_version_outside_a_checkout_says_why(tmp_path):
    v = code_version(tmp_path)
    assert v["commit"] is None and v["dirty"] is None and "not a git checkout" in v["reason"]
    here = code_version()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert here["commit"] == head and isinstance(here["dirty"], bool) and here["reason"] is None


def test_a_record_of_the_paper_size_is_well_under_a_megabyte(tmp_path):
    """16 classes, 4,000 images at 4 folds (1,000 test, 375 val images), 100 epochs of student metrics:
    random logits, the worst case for the compression."""
    rng = np.random.default_rng(0)
    parts = {p: {"logits": rng.normal(0, 3, (n, 16)), "targets": rng.random((n, 16)) < 0.2, "rows": np.arange(n)}
             for p, n in (("test", 1000), ("val", 375))}
    lines = [{"epoch": e, "kd_weights": rng.random(16).tolist(), "grad_kd": rng.random(16).tolist(),
              "grad_base": rng.random(16).tolist(), "val_map": {"head": 0.5, "total": float("nan")}}
             for e in range(100)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = {"name": "ours_shot", "device": "cpu", "test": {"ap": rng.random(16).tolist()}}
    write_record(tmp_path, result, record_arrays(range(16), parts), {"a": 1}, command=None, started=0.0, ended=1.0)
    size = (tmp_path / RECORD_JSON).stat().st_size + (tmp_path / RECORD_NPZ).stat().st_size
    assert size < 300_000, size
    doc = json.loads((tmp_path / RECORD_JSON).read_text())
    assert math.isnan(doc["metrics"][0]["val_map"]["total"]) and doc["started"] == "1970-01-01T00:00:00+00:00"


def test_a_real_run_writes_its_record(tmp_path, one_thread):
    generate_synthetic(tmp_path / "syn", num_images=120, image_size=32, num_classes=6, workers=1)
    (tmp_path / "tiny.py").write_text(
        f"data = dict(dataset='synthetic', root={str(tmp_path / 'syn')!r}, scheme='holdout', image_size=32,\n"
        "            synthetic=dict(seed=0, num_images=120, image_size=32, num_classes=6),\n"
        "            batch_size=16, eval_batch_size=64, num_workers=0, preload=False)\n"
        "model = dict(name='small_cnn', pretrained=False, width=4)\n"
        "schedule = dict(epochs=2)\n"
        "run = dict(device='cpu', max_steps_per_epoch=2, deterministic=True)\n")
    run = tmp_path / "run"
    argv = ["--config", str(REPO / "recipes/configs/table3/erm.py"), "--profile", str(tmp_path / "tiny.py"),
            "--out-dir", str(run)]
    result = train_main(argv)
    store = RunStore(tmp_path, tmp_path)  # the run folder read as a record
    doc = store.record("run")
    assert doc["result"] == json.loads((run / "result.json").read_text()) == json.loads(json.dumps(result))
    assert doc["metrics"] == [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(doc["metrics"]) == 2 and doc["config"]["schedule"]["epochs"] == 2
    assert doc["code"] == code_version() and doc["command"][-len(argv):] == argv and "recipes.train" in doc["command"]
    assert doc["machine"]["device"] == "cpu" and doc["machine"]["cpu_count"] >= 1 and doc["machine"]["torch"]
    assert doc["started"] <= doc["ended"] and 0 < doc["seconds"] <= result["seconds"] + 1
    full, small = dict(np.load(run / "predictions.npz")), store.preds("run")
    for part in ("test", "val"):
        np.testing.assert_array_equal(small[f"{part}_rows"], full[f"{part}_rows"])
        np.testing.assert_array_equal(small[f"{part}_targets"], full[f"{part}_targets"])
        np.testing.assert_array_equal(small[f"{part}_logits"], full[f"{part}_logits"])  # exactly
    size = (run / RECORD_JSON).stat().st_size + (run / RECORD_NPZ).stat().st_size
    assert size < 50_000, size


def test_runs_recorded_elsewhere_are_not_run_again_unless_their_checkpoints_are_needed(tmp_path):
    from recipes.table3.jobs import build_jobs

    counts = (502, 318, 202, 128, 81, 51, 33, 20, 13, 8, 5, 4)
    out = tmp_path / "sweep"
    jobs = build_jobs(["erm", "ours_shot"], [0], [0, 1], out, "demo",
                      fold_data=lambda cfg: (np.asarray(counts), tuple(f"c{i}" for i in range(12))))
    by_id = {j.id: j for j in jobs}

    def record(jid):
        (out / "records" / jid).mkdir(parents=True, exist_ok=True)
        (out / "records" / jid / RECORD_JSON).write_text("{}")

    # seed 0 finished on another machine: every run of it recorded; seed 1: the shot teachers recorded only,
    # while ours_shot of seed 1 still has to run (it needs those teachers' best.pt: they run again)
    for jid in by_id:
        if jid.startswith("fold0/seed0/") or jid.startswith("fold0/seed1/teachers_shot/"):
            record(jid)
    kept = {j.id: j for j in table3_cli.skip_recorded(jobs, out)}
    assert not any(jid.startswith("fold0/seed0/") for jid in kept)
    seed1 = {jid for jid in by_id if jid.startswith("fold0/seed1/")}
    assert set(kept) == seed1  # the recorded seed-1 teachers run again for ours_shot
    assert kept["fold0/seed1/ours_shot"].deps == by_id["fold0/seed1/ours_shot"].deps
    # a finished run here whose dependency is only recorded keeps no dangling dependency
    (out / "fold0/seed1/ours_shot").mkdir(parents=True)
    (out / "fold0/seed1/ours_shot/result.json").write_text("{}")
    for jid in seed1:
        record(jid)
    kept = {j.id: j for j in table3_cli.skip_recorded(jobs, out)}
    assert list(kept) == ["fold0/seed1/ours_shot"] and kept["fold0/seed1/ours_shot"].deps == ()
