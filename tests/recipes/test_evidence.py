"""Tests of recipes/table3/evidence.py on a hand-made sweep folder whose answers are known.

The fake sweep: 2 folds x 2 seeds, 5 classes with training counts (150, 120, 50, 30, 10), i.e. head
{0, 1}, medium {2, 3}, tail {4} at thresholds (100, 20). 48 images: fold 0 tests the even CSV rows,
fold 1 the odd ones (written in decreasing order, so pooling must sort). Rows:

* erm: noisy logits (targets + noise, different per cell);
* ours_shot: ERM's logits exactly (test images stored in another order), so every difference against ERM is 0;
* focal: perfect logits (= targets), so its AP is 1 for every class;
* ours_focal (folder ours_focal-shot): perfect logits on another scale, so it equals focal;
* shot teachers (subsets (0, 1), (2, 3), (4,)): subset 0 has perfect val logits, subsets 1, 2 ERM's.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from recipes.config import ConfigError
from recipes.table3 import cli as table3_cli
from recipes.table3.evidence import (
    bootstrap_group_maps,
    paired_interval,
    t_interval,
    verdict,
    weighted_ap,
    write_evidence,
)
from rskd_loss.metrics import average_precision_per_class
from rskd_loss.partition import Partition

COUNTS = [150, 120, 50, 30, 10]
GROUP_IDX = {"head": [0, 1], "medium": [2, 3], "tail": [4], "total": [0, 1, 2, 3, 4]}
N_IMG, N_VAL, C = 48, 20, 5
ROWS = ["erm", "ours_shot", "focal", "ours_focal"]
PAIRS = [("ours_focal", "focal")]


def _targets(rng: np.random.Generator, n: int) -> np.ndarray:
    y = (rng.random((n, C)) < [0.5, 0.4, 0.3, 0.25, 0.1]).astype(np.float64)
    y[:2, 4] = 1.0  # every class has positives in every part
    y[2:5, :4] = 1.0
    return y


def _data(fold: int, seed: int) -> dict[str, np.ndarray]:
    """One cell's test / val parts and ERM's logits, deterministic."""
    y_all = _targets(np.random.default_rng(123), N_IMG)
    test_rows = np.arange(fold, N_IMG, 2)[::-1]
    rng = np.random.default_rng(10 * fold + seed)
    val_rows = np.arange(100 + 30 * fold, 100 + 30 * fold + N_VAL)
    y_val = _targets(rng, N_VAL)
    return {"test_rows": test_rows, "test_targets": y_all[test_rows],
            "test_logits": y_all[test_rows] + rng.normal(0, 0.8, (len(test_rows), C)),
            "val_rows": val_rows, "val_targets": y_val, "val_logits": y_val + rng.normal(0, 0.8, (N_VAL, C))}


def _hand_groups(ap: np.ndarray) -> dict[str, float]:
    return {g: float(np.nanmean(ap[idx])) for g, idx in GROUP_IDX.items()}


def _write_run(run: Path, name: str, stage: str, fold: int, seed: int, classes, d: dict, lines=()) -> None:
    run.mkdir(parents=True, exist_ok=True)
    ap = {p: average_precision_per_class(d[f"{p}_logits"], d[f"{p}_targets"]) for p in ("test", "val")}
    res = {"name": name, "stage": stage, "fold": fold, "seed": seed, "classes": list(classes),
           "class_names": [f"c{c}" for c in classes], "train_class_counts": [COUNTS[c] for c in classes],
           "thresholds": [100, 20], **{p: {"ap": [None if math.isnan(a) else a for a in ap[p]]} for p in ap}}
    (run / "result.json").write_text(json.dumps(res))
    np.savez(run / "predictions.npz", classes=np.asarray(classes), **d)
    (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _student_lines(cell: int) -> list[dict]:
    # kd weights: head classes 0.1 e and 0.2 e (mean 0.15 e), medium 0.5 and 0.7 (0.6), tail 1 + cell
    # grads: first epoch base (1, 3, 2, 2, 4), kd (2, 2, 1, 1, 2): ratio of group means head 1, medium 0.5,
    # tail 0.5, total 8/12; last epoch kd doubled
    base, kd = [1, 3, 2, 2, 4], [2, 2, 1, 1, 2]
    return [{"epoch": e, "val_map": {}, "kd_weights": [0.1 * e, 0.2 * e, 0.5, 0.7, 1.0 + cell],
             "grad_base": base, "grad_kd": [k * (2 if e == 2 else 1) for k in kd]} for e in range(3)]


def make_sweep(out: Path) -> Path:
    cell = 0
    for fold in (0, 1):
        for seed in (0, 1):
            base = out / f"fold{fold}" / f"seed{seed}"
            d = _data(fold, seed)
            perfect = {**d, "test_logits": d["test_targets"].copy(), "val_logits": d["val_targets"].copy()}
            _write_run(base / "erm", "erm", "baseline", fold, seed, range(C), d)
            perm = np.random.default_rng(fold).permutation(len(d["test_rows"]))  # same predictions, stored shuffled
            _write_run(base / "ours_shot", "ours_shot", "student", fold, seed, range(C),
                       {**d, **{f"test_{k}": d[f"test_{k}"][perm] for k in ("rows", "logits", "targets")}},
                       _student_lines(cell))
            _write_run(base / "focal", "focal", "baseline", fold, seed, range(C), perfect)
            _write_run(base / "ours_focal-shot", "ours_focal", "student", fold, seed, range(C),
                       {**perfect, "test_logits": 3 * perfect["test_logits"] - 1}, _student_lines(cell))
            tdir = base / "teachers_shot"
            part = Partition(subsets=((0, 1), (2, 3), (4,)), names=("head", "medium", "tail"), num_classes=C)
            part.to_json(tdir / "partition.json")
            for j, sub in enumerate(part.subsets):
                src = perfect if j == 0 else d
                _write_run(tdir / f"subset{j}", f"teacher{j}", "teacher", fold, seed, sub,
                           {k: (v[:, list(sub)] if k.endswith(("logits", "targets")) else v) for k, v in src.items()})
            cell += 1
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = make_sweep(tmp_path_factory.mktemp("sweep"))
    text = write_evidence(out, [0, 1], [0, 1], ROWS, pairs=PAIRS, n_boot=300, figures=True)
    return out, text


# ------------------------------------------------------------------------------------ statistics

def test_weighted_ap_equals_ap_of_the_resampled_images_with_ties():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.3).astype(float)
    y[:, 3] = 0
    y[7, 3] = 1  # a class with one positive: absent from some draws
    s = np.round(rng.normal(size=(60, 4)) + y, 1)  # many tied scores
    idx = rng.integers(0, 60, (25, 60))
    w = np.stack([np.bincount(i, minlength=60) for i in idx])
    want = np.stack([average_precision_per_class(s[i], y[i]) for i in idx])
    got = weighted_ap(s, y, w)
    assert np.array_equal(np.isnan(got), np.isnan(want)) and np.isnan(want[:, 3]).any()
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_allclose(weighted_ap(s, y, np.ones((1, 60), int))[0], average_precision_per_class(s, y))


def test_t_interval_matches_scipy_and_collapses_for_constant_input():
    x = [1.0, 4.0, 2.5, float("nan")]
    m, sd = 2.5, float(np.std([1.0, 4.0, 2.5], ddof=1))
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert t_interval(x) == pytest.approx({"n": 3, "mean": m, "sd": sd, "lo": m - half, "hi": m + half})
    assert t_interval([0.0, 0.0, 0.0]) == {"n": 3, "mean": 0.0, "sd": 0.0, "lo": 0.0, "hi": 0.0}
    assert math.isnan(t_interval([1.0])["lo"])


def test_bootstrap_is_paired_and_refuses_different_images():
    rng = np.random.default_rng(1)
    y = (rng.random((40, 5)) < 0.4).astype(float)
    s = rng.normal(size=(40, 5)) + y
    got = bootstrap_group_maps({"a": (s, y), "b": (s.copy(), y)}, np.asarray(COUNTS, float), (100, 20), 50)
    assert np.array_equal(got["a"], got["b"]) and np.nanstd(got["a"][:, 3]) > 0
    with pytest.raises(ValueError, match="same images"):
        bootstrap_group_maps({"a": (s, y), "b": (s[:30], y[:30])}, np.asarray(COUNTS, float), (100, 20), 5)


# ------------------------------------------------------------------------------------ the fake sweep

def _erm_maps(pooled: bool) -> list[dict[str, float]]:
    """Hand group maps (fractions) of ERM: per cell (fold-major) or pooled per seed."""
    if not pooled:
        return [_hand_groups(average_precision_per_class(d["test_logits"], d["test_targets"]))
                for d in (_data(f, s) for f in (0, 1) for s in (0, 1))]
    out = []
    for s in (0, 1):
        parts = [_data(f, s) for f in (0, 1)]
        logits = np.concatenate([p["test_logits"] for p in parts])
        targets = np.concatenate([p["test_targets"] for p in parts])
        out.append(_hand_groups(average_precision_per_class(logits, targets)))
    return out


def test_the_fold_is_the_unit_of_the_paired_test_hand_computed():
    # 2 folds x 2 seeds, differences (points): fold 0 seeds (1, 3), fold 1 seeds (4, 6).
    # Fold as unit: fold means 2 and 5; mean 3.5; sd = |5 - 2| / sqrt(2) = 2.12132; se = sd / sqrt(2) = 1.5;
    # df = 1, whose t is Cauchy's: t_0.975 = tan(0.475 pi) = 12.7062, half-width 19.0593 -> [-15.5593, 22.5593].
    # Bonferroni over 3 comparisons: level 1 - 0.05 / 3; t = tan(pi (0.991667 - 0.5)) = 38.1885, half 57.2828.
    # The cells as if independent (the old test): mean 3.5, sd = sqrt((2.5^2 + 0.5^2 + 0.5^2 + 2.5^2) / 3) = 2.08167,
    # se 1.04083, t_0.975,3 = 3.18245, half 3.31242 -> [0.1876, 6.8124]: "above 0", which the folds do not support.
    d = {0: [1.0, 3.0], 1: [4.0, 6.0]}
    fold = paired_interval(d)
    assert (fold["unit"], fold["n"], fold["df"], fold["above"]) == ("fold", 2, 1, 2)
    assert fold["mean"] == pytest.approx(3.5) and fold["sd"] == pytest.approx(2.12132, abs=1e-5)
    assert (fold["lo"], fold["hi"]) == (pytest.approx(-15.5593, abs=1e-4), pytest.approx(22.5593, abs=1e-4))
    bonf = paired_interval(d, 1 - 0.05 / 3)
    assert (bonf["hi"] - bonf["lo"]) / 2 == pytest.approx(57.2828, abs=1e-3)
    assert verdict(fold) == "no difference resolved (half-width 19.06)"
    cells = t_interval([1.0, 3.0, 4.0, 6.0])
    assert (cells["lo"], cells["hi"]) == (pytest.approx(0.1876, abs=1e-4), pytest.approx(6.8124, abs=1e-4))
    assert verdict(cells) == "above 0"
    # one fold (a hold-out profile): the cells are the unit, said so, no error
    one = paired_interval({0: [1.0, 3.0]})
    assert (one["unit"], one["n"], one["df"], one["mean"]) == ("cell", 2, 1, 2.0)
    assert math.isnan(paired_interval({0: [1.0]})["lo"]) and verdict(paired_interval({0: [1.0]})).startswith("not")


def test_paired_differences_against_hand_computation(sweep):
    out, text = sweep
    got = {(r["row"], r["reference"], r["group"]): r for r in _csv(out / "evidence" / "paired.csv")}
    cells = {(r["row"], r["reference"], r["group"]): r for r in _csv(out / "evidence" / "paired_cells.csv")}
    for g in ("head", "medium", "tail", "total"):
        zero = got[("ours_shot", "erm", g)]
        assert (float(zero["mean"]), float(zero["lo"]), float(zero["hi"]), zero["above"], zero["n"]) == (0, 0, 0, "0", "2")
        d = [100 * (1 - m[g]) for m in _erm_maps(pooled=False)]  # focal has AP 1 everywhere; cells fold-major
        folds = [(d[0] + d[1]) / 2, (d[2] + d[3]) / 2]              # the seeds of a fold averaged first
        half = stats.t.ppf(0.975, 1) * np.std(folds, ddof=1) / math.sqrt(2)
        r = got[("focal", "erm", g)]
        assert (r["unit"], r["df"], r["n"]) == ("fold", "1", "2")
        assert float(r["mean"]) == pytest.approx(np.mean(folds), abs=1e-4)
        assert float(r["lo"]) == pytest.approx(np.mean(folds) - half, abs=1e-4)
        assert float(r["hi"]) == pytest.approx(np.mean(folds) + half, abs=1e-4)
        assert int(r["above"]) == sum(x > 0 for x in folds)
        c = cells[("focal", "erm", g)]  # the secondary per-cell view: df 3
        cell_half = stats.t.ppf(0.975, 3) * np.std(d, ddof=1) / 2
        assert float(c["hi"]) - float(c["lo"]) == pytest.approx(2 * cell_half, abs=1e-4) and c["n"] == "4"
        assert float(got[("ours_focal", "focal", g)]["mean"]) == 0.0
    # the primary comparison (ours_shot vs erm, the only rule row here): Bonferroni over 1 = the 95 % interval;
    # focal is not primary
    assert got[("ours_shot", "erm", "total")]["primary"] == "True" and got[("focal", "erm", "total")]["primary"] == "False"
    assert float(got[("ours_shot", "erm", "total")]["bonferroni_level"]) == pytest.approx(0.95)
    assert "fold as unit" in text and "df = folds - 1" in text and "1a. Primary tests" in text


def test_bonferroni_over_the_configured_primary_comparisons_and_quoted_widths(tmp_path):
    out = make_sweep(tmp_path / "sw")
    prim = [("focal", "erm"), ("ours_shot", "erm")]
    text = write_evidence(out, [0, 1], [0, 1], ROWS, primary=prim, n_boot=5, figures=False)
    got = {(r["row"], r["group"]): r for r in _csv(out / "evidence" / "paired.csv") if r["reference"] == "erm"}
    r = got[("focal", "total")]
    assert float(r["bonferroni_level"]) == pytest.approx(0.975)  # 1 - 0.05 / 2 comparisons
    half = (float(r["bonferroni_hi"]) - float(r["bonferroni_lo"])) / 2
    assert half == pytest.approx(stats.t.ppf(1 - 0.025 / 2, 1) * float(r["sd"]) / math.sqrt(2), rel=1e-6)
    assert got[("ours_focal", "total")]["bonferroni_level"] == "nan"  # not a primary comparison
    # every interval quoted in the report is the computed one, to 2 decimals
    assert f"[{float(r['lo']):.2f}, {float(r['hi']):.2f}]" in text
    assert f"[{float(r['bonferroni_lo']):.2f}, {float(r['bonferroni_hi']):.2f}]" in text


def test_a_single_fold_falls_back_to_cells_with_a_note(tmp_path):
    out = make_sweep(tmp_path / "sw")
    text = write_evidence(out, [0], [0, 1], ROWS, n_boot=5, figures=False)
    r = {(x["row"], x["group"]): x for x in _csv(out / "evidence" / "paired.csv")}[("focal", "total")]
    assert (r["unit"], r["n"], r["df"]) == ("cell", "2", "1")
    assert "one fold only" in text and "ONE fold only" in text


def test_pooled_map_is_the_ap_of_the_concatenation(sweep):
    out, _ = sweep
    rows = _csv(out / "evidence" / "pooled.csv")
    erm = {r["group"]: r for r in rows if r["kind"] == "row" and r["row"] == "erm"}
    hand = _erm_maps(pooled=True)
    for g in ("head", "medium", "tail", "total"):
        vals = [100 * h[g] for h in hand]
        assert float(erm[g]["value"]) == pytest.approx(np.mean(vals), abs=1e-4)
        assert float(erm[g]["sd"]) == pytest.approx(np.std(vals, ddof=1), abs=1e-4)
        focal = next(r for r in rows if r["kind"] == "row" and r["row"] == "focal" and r["group"] == g)
        assert float(focal["value"]) == 100.0
    counts = _csv(out / "evidence" / "pooled_counts.csv")
    y = _targets(np.random.default_rng(123), N_IMG).sum(0)
    assert [int(r["test_positives_seed0"]) for r in counts] == y.astype(int).tolist()
    assert [r["group"] for r in counts] == ["head", "head", "medium", "medium", "tail"]


def test_bootstrap_interval_contains_the_estimate_and_collapses_for_equal_predictions(sweep):
    out, text = sweep
    pairs = [r for r in _csv(out / "evidence" / "pooled.csv") if r["kind"] == "pair"]
    hand = _erm_maps(pooled=True)
    for r in pairs:
        v, lo, hi = float(r["value"]), float(r["lo"]), float(r["hi"])
        if (r["row"], r["reference"]) in (("ours_shot", "erm"), ("ours_focal", "focal")):  # same ranking: 0
            assert (v, lo, hi) == (0.0, 0.0, 0.0), r
        else:
            assert lo <= v <= hi and lo < hi, r
            seeds = [int(r["seed"])] if r["seed"] != "mean" else [0, 1]
            assert v == pytest.approx(np.mean([100 * (1 - hand[s][r["group"]]) for s in seeds]), abs=1e-4)
    assert {r["seed"] for r in pairs} == {"0", "1", "mean"}
    assert "300 image resamples" in text


def test_teachers_are_compared_with_erm_on_their_classes(sweep):
    out, text = sweep
    rows = _csv(out / "evidence" / "teachers.csv")
    per_class = {int(r["class"]): r for r in rows if r["class"] != ""}
    erm_val = []
    for f in (0, 1):
        for s in (0, 1):
            d = _data(f, s)
            view = d["val_targets"][:, [2, 3]].any(1)
            erm_val.append((average_precision_per_class(d["val_logits"], d["val_targets"]),
                            average_precision_per_class(d["val_logits"][view][:, [2, 3]], d["val_targets"][view][:, [2, 3]])))
    for c in (0, 1):
        assert float(per_class[c]["teacher_all"]) == 100.0
        assert float(per_class[c]["erm_all"]) == pytest.approx(100 * np.mean([a[c] for a, _ in erm_val]), abs=1e-4)
    for c in (2, 3):
        assert float(per_class[c]["diff_all"]) == 0.0 and float(per_class[c]["diff_view"]) == 0.0
        assert float(per_class[c]["erm_view"]) == pytest.approx(100 * np.mean([v[c - 2] for _, v in erm_val]), abs=1e-4)
    head = next(r for r in rows if r["class"] == "" and r["group"] == "head")
    assert float(head["teacher_all"]) == 100.0
    assert "**3. Are subset teachers better" in text


def test_kd_weights_and_gradient_ratios_by_group(sweep):
    out, text = sweep
    kd = {(r["row"], int(r["epoch"]), r["group"]): float(r["weight"]) for r in _csv(out / "evidence" / "kd_weights.csv")}
    assert {k[0] for k in kd} == {"ours_shot", "ours_focal"}  # erm and focal are no students
    for e in range(3):
        assert kd[("ours_shot", e, "head")] == pytest.approx(0.15 * e)
        assert kd[("ours_shot", e, "medium")] == pytest.approx(0.6)
        assert kd[("ours_shot", e, "tail")] == pytest.approx(2.5)  # 1 + mean of cells 0..3
    gr = {(r["row"], r["group"]): r for r in _csv(out / "evidence" / "grad_ratio.csv")}
    want = {"head": 1.0, "medium": 0.5, "tail": 0.5, "total": 8 / 12}
    for g, v in want.items():
        assert float(gr[("ours_focal", g)]["first"]) == pytest.approx(v)
        assert float(gr[("ours_focal", g)]["last"]) == pytest.approx(2 * v)
    assert "1.00 → 2.00" in text


def test_ap_change_and_files_are_written(sweep):
    out, text = sweep
    ev = out / "evidence"
    for name in ("evidence.md", "paired.md", "paired.csv", "pooled.md", "pooled.csv", "pooled_counts.csv",
                 "teachers.md", "teachers.csv", "kd_weights.csv", "grad_ratio.md", "grad_ratio.csv", "ap_change.csv",
                 "fig_teacher_vs_erm.png", "fig_kd_weights.png", "fig_grad_ratio.png", "fig_ap_change.png"):
        assert (ev / name).is_file() and (ev / name).stat().st_size > 0, name
    assert (ev / "fig_ap_change.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ev / "evidence.md").read_text() == text
    change = [r for r in _csv(ev / "ap_change.csv") if r["row"] == "ours_shot"]
    assert [int(r["class"]) for r in change] == [0, 1, 2, 3, 4] and all(float(r["change"]) == 0 for r in change)
    assert not any(p.name.endswith(".tmp") for p in ev.iterdir())


def test_a_missing_run_is_reported_not_crashed(tmp_path):
    out = make_sweep(tmp_path / "sw")
    for f in (out / "fold1" / "seed1" / "focal").iterdir():
        f.unlink()
    (out / "fold0" / "seed0" / "teachers_shot" / "subset2" / "predictions.npz").unlink()
    text = write_evidence(out, [0, 1], [0, 1], ROWS, pairs=PAIRS, n_boot=20, figures=False)
    assert "fold1/seed1/focal/result.json" in text and "fold0/seed0/teachers_shot/subset2/predictions.npz" in text
    assert "pooled: focal seed 1 skipped" in text
    paired = {(r["row"], r["reference"], r["group"]): r for r in _csv(out / "evidence" / "paired.csv")}
    # fold 1 of focal has one seed left: its fold mean is that seed's difference; still 2 folds
    assert paired[("focal", "erm", "total")]["n"] == "2" and paired[("ours_focal", "focal", "total")]["n"] == "2"
    cells = {(r["row"], r["reference"], r["group"]): r for r in _csv(out / "evidence" / "paired_cells.csv")}
    assert cells[("focal", "erm", "total")]["n"] == "3"
    pooled = [r for r in _csv(out / "evidence" / "pooled.csv") if r["kind"] == "pair" and r["row"] == "focal"]
    assert {r["seed"] for r in pooled} == {"0", "mean"}
    teach = {int(r["class"]): r for r in _csv(out / "evidence" / "teachers.csv") if r["class"] != ""}
    assert teach[4]["cells"] == "3" and teach[0]["cells"] == "4"


def test_an_empty_folder_gives_a_report(tmp_path):
    text = write_evidence(tmp_path, [0], [0], ROWS, n_boot=10)
    assert "no finished erm run" in text and (tmp_path / "evidence" / "evidence.md").is_file()


def test_an_image_in_two_folds_is_refused(tmp_path):
    out = make_sweep(tmp_path / "sw")
    run = out / "fold1" / "seed0" / "erm"
    d = dict(np.load(run / "predictions.npz"))
    d["test_rows"] = d["test_rows"] - 1  # odd rows -> even rows: fold 0's images
    np.savez(run / "predictions.npz", **d)
    with pytest.raises(ValueError, match="at most one fold"):
        write_evidence(out, [0, 1], [0], ["erm"], n_boot=5, figures=False)


def test_table3_cli_writes_evidence(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    make_sweep(tmp_path / "runs" / "table3" / "paper")
    seen = {}
    monkeypatch.setattr("recipes.table3.evidence.write_evidence", lambda *a, **k: seen.update(a=a, k=k) or "EVIDENCE")
    monkeypatch.setattr(table3_cli, "collect", lambda *a, **k: "")
    assert table3_cli.main(["--profile", "paper", "--collect-only", "--rows", "erm", "focal", "--evidence",
                        "--pair", "ours_focal:focal", "--no-figures"]) == 0
    assert "EVIDENCE" in capsys.readouterr().out
    assert seen["a"][1:] == ([0, 1, 2, 3], [0], ["erm", "focal"])
    assert seen["k"]["pairs"] == [("ours_focal", "focal")] and seen["k"]["ours_rule"] == "shot"
    with pytest.raises(ConfigError, match="ROW:REF"):
        table3_cli.main(["--profile", "paper", "--collect-only", "--evidence", "--pair", "ours_focal"])


def test_pooled_groups_follow_the_runs_recorded_rule():
    from recipes.table3.evidence import pooled_cuts
    from rskd_loss.metrics import shot_cuts

    counts = np.array([3000.0, 900, 550, 400, 200, 103, 74, 40, 20])
    fixed = [{"train_class_counts": counts.tolist()}]  # a run from before result.json recorded its groups
    assert pooled_cuts(fixed, counts, (100, 20)) == (100.0, 20.0)
    tertiles = [{"train_class_counts": counts.tolist(), "groups": {"mode": "quantile", "cuts": [0, 0]}}]
    assert pooled_cuts(tertiles, counts, (100, 20)) == tuple(shot_cuts(counts, (100, 20), mode="quantile"))
    assert pooled_cuts(tertiles, counts, (100, 20)) != (100.0, 20.0)
