"""recipes/train.py end to end on a tiny synthetic set: every stage, OLTR's two runs, torchrun, resume,
and configuration errors refused before any training starts."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_setup import write_tiny_profile

from recipes.config import ConfigError, load_config
from recipes.train import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # whole runs in subprocesses: make test-lib and -m "not slow" leave them out


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    write_tiny_profile(tmp)
    configs = {
        "erm": "method = dict(name='erm', stage='baseline', criterion=dict(name='bce'))",
        "rs": "method = dict(name='rs', stage='baseline', criterion=dict(name='focal'), sampler='class_aware')",
        "ldam": "method = dict(name='ldam', stage='baseline', criterion=dict(name='ldam'))\nmodel = dict(head='normed')",
        "teacher": "method = dict(name='teacher', stage='teacher', criterion=dict(name='bce'))",
        "student": "method = dict(name='ours', stage='student', criterion=dict(name='db'), teachers_dir=%r)"
                   % str(tmp / "teachers"),
        "oltr1": "method = dict(name='oltr1', stage='baseline', criterion=dict(name='oltr'), oltr_stage=1)",
        "oltr2": "method = dict(name='oltr', stage='baseline', criterion=dict(name='oltr'), oltr_stage=2, "
                 "init_from=%r, sampler='class_aware')" % str(tmp / "oltr1"),
    }
    for name, text in configs.items():
        (tmp / f"{name}.py").write_text(text + "\n")
    return tmp


def _run(env: Path, config: str, out: str, *extra: str) -> dict:
    return main(["--config", str(env / f"{config}.py"), "--profile", str(env / "tiny.py"),
                 "--out-dir", str(env / out), *extra])


def _check_run_folder(folder: Path) -> dict:
    result = json.loads((folder / "result.json").read_text())
    for name in ("last.pt", "best.pt"):
        state = torch.load(folder / name, weights_only=True)  # plain tensors and values only
        assert set(state) >= {"model", "optimizer", "epoch", "config", "class_names"}
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == result["epochs"]
    assert not [p for p in os.listdir(folder) if p.startswith(".tmp")]
    return result


def test_baseline_teacher_student(env: Path) -> None:
    res = _check_run_folder(Path(_run(env, "erm", "erm") and env / "erm"))
    assert res["stage"] == "baseline" and len(res["test"]["ap"]) == 8
    assert set(res["test"]["map"]) == {"head", "medium", "tail", "total"}
    from rskd_loss import Partition

    # the shot rule in tertile mode on the training counts gives three teachers
    for k in range(3):
        _run(env, "teacher", f"teachers/subset{k}", "--set", f"method.subset={k}")
    part = Partition.from_json(env / "teachers" / "partition.json")
    assert part.num_subsets == 3
    t0 = _check_run_folder(env / "teachers" / "subset0")
    assert t0["classes"] == list(part.subsets[0]) and len(t0["test"]["ap"]) == len(part.subsets[0])
    student = _check_run_folder(Path(_run(env, "student", "ours") and env / "ours"))
    assert student["stage"] == "student" and len(student["teacher_val_ap"]) == 8
    line = json.loads((env / "ours" / "metrics.jsonl").read_text().splitlines()[-1])
    assert len(line["kd_weights"]) == 8 and all(0.0 <= w <= 1.0 for w in line["kd_weights"])
    # the gradient diagnostic: mean |dL/dz| per class of the base loss and of the KD term
    assert len(line["grad_base"]) == len(line["grad_kd"]) == 8
    assert all(g > 0 for g in line["grad_base"]) and all(g >= 0 for g in line["grad_kd"])
    # measured in the first and the last epoch only (kept off the other epochs' steps)
    _run(env, "student", "ours3", "--set", "schedule.epochs=3")
    lines = [json.loads(x) for x in (env / "ours3" / "metrics.jsonl").read_text().splitlines()]
    assert ["grad_kd" in x for x in lines] == [True, False, True]
    # per-image predictions of the best model: the test AP of result.json recomputed from them
    from rskd_loss.metrics import average_precision_per_class

    pred = np.load(env / "ours" / "predictions.npz")
    assert pred["test_logits"].shape == (len(pred["test_rows"]), 8) and pred["classes"].tolist() == list(range(8))
    ap = average_precision_per_class(pred["test_logits"], pred["test_targets"])
    assert np.allclose(np.nan_to_num(ap, nan=-1), [-1 if a is None else a for a in student["test"]["ap"]])
    t_pred = np.load(env / "teachers" / "subset0" / "predictions.npz")
    assert t_pred["val_logits"].shape[1] == len(part.subsets[0]) and t_pred["classes"].tolist() == list(part.subsets[0])
    assert list(env.joinpath("teachers").glob("bank_train_*px.rskd"))
    # a student whose partition differs from the teachers' is refused
    with pytest.raises(ValueError, match=r"partition.json was built for another partition or fold"):
        _run(env, "student", "ours_other", "--set", "method.partition.rule='region'")
    # teachers trained on another split (or fold, or CSV) are refused before anything is built
    with pytest.raises(ValueError, match=r"subset0/best.pt was trained on other data: .*:split_seed0:fold0 .*"
                                         r"this run uses .*:split_seed1:fold0"):
        _run(env, "student", "ours_other_split", "--set", "data.split_seed=1")


def test_sampler_ldam_and_oltr_two_stages(env: Path) -> None:
    _check_run_folder(Path(_run(env, "rs", "rs") and env / "rs"))
    _check_run_folder(Path(_run(env, "ldam", "ldam") and env / "ldam"))
    _run(env, "oltr1", "oltr1")
    res = _check_run_folder(Path(_run(env, "oltr2", "oltr2") and env / "oltr2"))
    state = torch.load(env / "oltr2" / "best.pt", weights_only=True)
    assert state["criterion"]["centroids"].abs().sum() > 0  # initialised from stage-1 class means
    group = state["centroid_optimizer"]["param_groups"][0]  # the centroids' own SGD, as the official code
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.01, 0.9, 5e-4)
    assert res["name"] == "oltr"


def test_resume_continues(env: Path) -> None:
    _run(env, "erm", "resume", "--set", "schedule.epochs=1")
    _run(env, "erm", "resume", "--set", "schedule.epochs=2", "--resume")
    lines = [json.loads(x) for x in (env / "resume" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]


def test_torchrun_two_processes(env: Path) -> None:
    out = env / "ddp"
    with socket.socket() as sock:  # a free port: two test runs on one machine must not collide
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # torchrun's own rendezvous (c10d), as a multi-node launch uses it (recipes/README.md), on one node
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=rskd-test",
           "-m", "recipes.train", "--config", str(env / "rs.py"), "--profile", str(env / "tiny.py"),
           "--out-dir", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    assert res["world_size"] == 2


@pytest.mark.parametrize("override, message", [
    ("schedule.lrr=0.1", r"unknown config key 'schedule.lrr'; valid keys here: .*lr.*"),
    ("schedule.lr=-0.1", r"'schedule.lr' must be a number > 0, got -0.1"),
    ("method.kd.delta=1.5", r"'method.kd.delta' must be a number in \(0, 1\), got 1.5"),
    ("method.kd.temperature=0", r"'method.kd.temperature' must be a number > 0, got 0"),
    ("method.partition.thresholds=(20,100)", r"'method.partition.thresholds' must be \(head, tail\) with head > tail > 0"),
    ("method.stage='teachr'", r"'method.stage' must be one of baseline, teacher, student, got 'teachr'"),
    ("data.fold=4", r"'data.fold' must be an int in \[0, 3\], got 4"),
])
def test_bad_config_refused(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, None, [override])


def test_every_default_is_valid() -> None:
    cfg = load_config(None, None, [])
    assert cfg["schedule"]["lr"] == 1e-4 and cfg["method"]["kd"]["delta"] == 0.6
    assert cfg["method"]["kd"]["temperature"] == 10.0 and cfg["model"]["name"] == "resnet50"


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(env: Path, monkeypatch, bad: float) -> None:
    import recipes.engine.tasks as tasks

    real_build = tasks.build_criterion

    class NaNAfter(torch.nn.Module):
        """The real criterion, then NaN / inf from its 3rd call on (epoch 1, step 0 with 2 steps an epoch)."""

        def __init__(self, base: torch.nn.Module) -> None:
            super().__init__()
            self.base, self.calls = base, 0

        def forward(self, logits, targets, **kwargs):
            self.calls += 1
            loss = self.base(logits, targets, **kwargs)
            return loss * bad if self.calls >= 3 else loss

    monkeypatch.setattr(tasks, "build_criterion", lambda *a, **k: NaNAfter(real_build(*a, **k)))
    with pytest.raises(FloatingPointError, match=r"loss is not finite \(nan or inf\) at epoch 1 step 0; last good checkpoint: .*_run/last.pt"):
        _run(env, "erm", f"{bad}_run", "--set", "schedule.epochs=2")
    state = torch.load(env / f"{bad}_run" / "last.pt", weights_only=True)
    assert state["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (env / f"{bad}_run" / "result.json").exists()
