"""Whole runs of recipes/train.py with the benchmark's schedule keys: ``schedule.select='last'`` tests the last
epoch (and writes it as best.pt), the default the best validation epoch; a run with
``method.partition.mode='quantile'`` reports, records and collects the groups of ``shot_groups``' quantile
split. The resume of a cosine run is in test_reliability.py (a real SIGKILL)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_setup import write_tiny_profile

import recipes.engine.trainer as trainer_module
from recipes.table3.collect import collect_table
from recipes.table3.store import RunStore, gather_records
from recipes.train import main
from rskd_loss.metrics import shot_cuts, shot_groups

pytestmark = pytest.mark.slow  # whole runs: make test-lib and -m "not slow" leave them out
EPOCHS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("schedule")
    write_tiny_profile(tmp)  # method.partition.mode='quantile'
    (tmp / "erm.py").write_text("method = dict(name='erm', stage='baseline', criterion=dict(name='bce'))\n")
    return tmp


def _run(env: Path, out: str, *sets: str) -> dict:
    return main(["--config", str(env / "erm.py"), "--profile", str(env / "tiny.py"), "--out-dir", str(env / out),
                 "--set", *sets])


@pytest.mark.parametrize("select", ["best", "last"])
def test_select_last_tests_the_last_epoch_and_best_the_best_one(env, monkeypatch, select):
    real, calls = trainer_module.group_scores, []

    def falling(ap, counts, cuts):
        """The validation total mAP of the epochs falls, 0.8, 0.7, 0.6: the best validation epoch is the first."""
        out = real(ap, counts, cuts)
        if len(calls) < EPOCHS:  # fit's calls, one per epoch; the test's own are real
            calls.append(1)
            out = {**out, "total": 0.9 - 0.1 * len(calls)}
        return out

    monkeypatch.setattr(trainer_module, "group_scores", falling)
    res = _run(env, f"select_{select}", f"schedule.epochs={EPOCHS}", f"schedule.select={select!r}",
               "run.max_steps_per_epoch=2")
    folder = env / f"select_{select}"
    best, last = (torch.load(folder / name, weights_only=True) for name in ("best.pt", "last.pt"))
    same = [torch.equal(best["model"][k], last["model"][k]) for k in last["model"]]
    assert res["select"] == select and json.loads((folder / "result.json").read_text())["select"] == select
    if select == "last":
        assert res["best_epoch"] == best["epoch"] == EPOCHS - 1 and all(same)  # teachers, OLTR stage 2 read it
    else:
        assert res["best_epoch"] == best["epoch"] == 0 and not all(same)


def _means(ap: list[float | None], groups: dict[str, np.ndarray]) -> dict[str, float | None]:
    a = np.array([np.nan if v is None else v for v in ap])
    out = {g: float(np.nanmean(a[idx])) if np.isfinite(a[idx]).any() else None for g, idx in groups.items()}
    return {**out, "total": float(np.nanmean(a))}


def test_quantile_groups_in_the_result_the_record_and_the_collection(env):
    sweep = env / "sweep"
    res = _run(env, "sweep/fold0/seed0/erm", "run.max_steps_per_epoch=2")
    counts = np.asarray(res["train_class_counts"])
    assert res["groups"] == {"mode": "quantile", "cuts": list(shot_cuts(counts, mode="quantile"))}
    split = shot_groups(counts, mode="quantile")
    assert all(split[g].size for g in ("head", "medium", "tail"))  # the test below compares three groups
    for part in ("test", "val"):
        expected = _means(res[part]["ap"], split)
        assert res[part]["map"].keys() == expected.keys()
        for g, v in expected.items():
            assert res[part]["map"][g] == (None if v is None else pytest.approx(v, rel=1e-12)), (part, g)
    record = json.loads((sweep / "fold0/seed0/erm/record.json").read_text())
    assert record["result"]["groups"] == res["groups"]
    gather_records(sweep)
    for store in (RunStore(sweep), RunStore(sweep, records=sweep / "records")):
        (row,) = collect_table(3, ["erm"], sweep, (0,), (0,), store=store)
        expected = {g: np.nan if v is None else 100 * v for g, v in _means(res["test"]["ap"], split).items()}
        assert row.mean == pytest.approx(expected, rel=1e-12, nan_ok=True)
