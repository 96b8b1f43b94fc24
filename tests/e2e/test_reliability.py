"""Fault injection on recipes/train.py: kills, resume, one process against two, bad data,
mismatched resumes. Every run is a real subprocess on a tiny synthetic set, CPU, deterministic.

A kill is a real SIGKILL, delivered by the process to itself at a chosen point
(``RSKD_FAULT=step:N``: before the N-th training step; ``RSKD_FAULT=save:N``: after writing the
N-th checkpoint to its temporary file, before the rename; ``recipes.engine.checkpoints.fault_point``), so the test does not depend on timing.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # whole runs in subprocesses: make test-lib and -m "not slow" leave them out
STEPS_PER_EPOCH = 10  # 168 training images (70 % of 240), batch 16, last partial batch dropped
EPOCHS = 3


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reliability")
    (tmp / "tiny.py").write_text(
        "data = dict(root=%r, synthetic=dict(seed=0, num_images=240, image_size=32, num_classes=8),\n"
        "            scheme='holdout', image_size=32, batch_size=16, eval_batch_size=64, num_workers=0,\n"
        "            preload=True)\n"
        "model = dict(name='small_cnn', pretrained=False, width=4, norm='group')\n"
        "schedule = dict(epochs=%d, lr=1e-3)\n"
        "run = dict(device='cpu', deterministic=True, log_every=4)\n"
        "method = dict(partition=dict(mode='quantile', prior='synthetic'))\n" % (str(tmp / "data"), EPOCHS))
    (tmp / "erm.py").write_text("method = dict(name='erm', stage='baseline', criterion=dict(name='bce'))\n")
    (tmp / "rs.py").write_text("method = dict(name='rs', stage='baseline', criterion=dict(name='bce'), "
                               "sampler='class_aware')\n")
    return tmp


def train(env: Path, out: str, *sets: str, config: str = "erm", fault: str | None = None, resume: bool = False,
          nproc: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    cmd = ["-m", "recipes.train", "--config", str(env / f"{config}.py"), "--profile", str(env / "tiny.py"),
           "--out-dir", str(env / out)]
    if sets:
        cmd += ["--set", *sets]
    if resume:
        cmd.append("--resume")
    if nproc > 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={port}", *cmd]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "RSKD_FAULT": fault or ""}
    proc = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=300, cwd=ROOT, env=environ)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(folder: Path) -> list[dict]:
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    for line in lines:
        line.pop("seconds")
    return lines


def weights(folder: Path, name: str = "last.pt") -> dict[str, torch.Tensor]:
    return torch.load(folder / name, weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical weights of last.pt and best.pt, identical metrics per epoch and test result."""
    for name in ("last.pt", "best.pt"):
        wa, wb = weights(a, name), weights(b, name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{name}: {key} differs"
    assert metrics(a) == metrics(b)
    ra, rb = (json.loads((f / "result.json").read_text()) for f in (a, b))
    assert ra["test"] == rb["test"] and ra["best_epoch"] == rb["best_epoch"]
    assert not [p for p in os.listdir(b) if p.endswith(".tmp")]


@pytest.fixture(scope="module")
def uninterrupted(env: Path) -> Path:
    train(env, "full")
    return env / "full"


# a random step, drawn with a fixed seed so that a failure can be rerun: in epoch 1 or 2, after >= 3 of
# its steps (so that a checkpoint every 2 steps has been written inside the epoch)
_rng = random.Random(6)
KILL_EPOCH, KILL_DONE = _rng.randrange(1, EPOCHS), _rng.randrange(3, STEPS_PER_EPOCH)
KILL_STEP = KILL_EPOCH * STEPS_PER_EPOCH + KILL_DONE + 1  # killed before this (1-based) step


@pytest.mark.parametrize("checkpoint_every", [0, 2], ids=["epoch-checkpoints", "every-2-steps"])
def test_sigkill_mid_epoch_then_resume_equals_the_uninterrupted_run(env, uninterrupted, checkpoint_every):
    out = f"kill_step_{checkpoint_every}"
    sets = [f"run.checkpoint_every={checkpoint_every}"]
    killed = train(env, out, *sets, fault=f"step:{KILL_STEP}", check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not (env / out / "result.json").exists()
    state = torch.load(env / out / "last.pt", weights_only=True)
    if checkpoint_every:  # the last checkpoint inside the killed epoch: the resumed run starts there
        assert (state["epoch"], state["step"]) == (KILL_EPOCH, KILL_DONE // 2 * 2)
    else:  # the end of the epoch before
        assert (state["epoch"], state["step"]) == (KILL_EPOCH - 1, 0)
    resumed = train(env, out, *sets, resume=True)
    # it really continued (a restart from scratch would give the same result, more slowly)
    assert f"at epoch {state['epoch'] + (state['step'] == 0)} step {state['step']}" in resumed.stdout
    assert resumed.stdout.count("[erm] epoch ") == EPOCHS - KILL_EPOCH
    assert_same_run(uninterrupted, env / out)


COSINE = ["schedule.kind='cosine'", "schedule.min_lr=1e-5", "schedule.optimizer='sgd'", "schedule.momentum=0.8",
          "run.checkpoint_every=2"]


def test_sigkill_mid_epoch_of_a_cosine_sgd_run_then_resume_equals_the_uninterrupted_run(env):
    """The per-step cosine and SGD's momentum buffers continue from a checkpoint inside an epoch."""
    train(env, "cosine_full", *COSINE)
    killed = train(env, "cosine_kill", *COSINE, fault=f"step:{KILL_STEP}", check=False)
    assert killed.returncode == -signal.SIGKILL
    state = torch.load(env / "cosine_kill" / "last.pt", weights_only=True)
    assert state["scheduler"] == {"steps_done": KILL_EPOCH * STEPS_PER_EPOCH + KILL_DONE // 2 * 2,
                                  "total_steps": EPOCHS * STEPS_PER_EPOCH}
    resumed = train(env, "cosine_kill", *COSINE, resume=True)
    assert f"at epoch {KILL_EPOCH} step {KILL_DONE // 2 * 2}" in resumed.stdout
    assert_same_run(env / "cosine_full", env / "cosine_kill")
    # the rate after each epoch is the cosine's of the next step: a function of the step alone, min_lr at the end
    total = EPOCHS * STEPS_PER_EPOCH
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * min((e + 1) * STEPS_PER_EPOCH, total - 1)
                                                      / (total - 1))) / 2 for e in range(EPOCHS)]
    assert [m["lr"] for m in metrics(env / "cosine_kill")] == pytest.approx(expected, rel=1e-12)
    assert metrics(env / "cosine_kill")[-1]["lr"] == 1e-5


def test_sigkill_while_writing_a_checkpoint_leaves_the_old_one_and_resumes_exactly(env, uninterrupted):
    out = env / "kill_save"
    # saves per epoch: best.pt when improved, then last.pt; the 3rd save is epoch 1's first
    killed = train(env, "kill_save", fault="save:3", check=False)
    assert killed.returncode == -signal.SIGKILL
    partial = [p for p in os.listdir(out) if p.endswith(".tmp")]
    assert partial  # the kill really happened during a write
    for name in ("last.pt", "best.pt"):  # what is there is complete and loads
        torch.load(out / name, weights_only=True)
    resumed = train(env, "kill_save", resume=True)
    assert "partly written" in resumed.stderr and "at epoch 1 step 0" in resumed.stdout
    assert_same_run(uninterrupted, out)


def _final_state(folder: Path) -> tuple[dict, list]:
    return weights(folder), metrics(folder)


@pytest.mark.parametrize("config", ["erm", "rs"], ids=["shuffle", "class-aware-sampler"])
def test_two_processes_equal_one_with_the_same_global_batch(env, config):
    sets = ["schedule.epochs=1", "run.max_steps_per_epoch=4"]
    train(env, f"one_{config}", *sets, "data.batch_size=16", config=config)
    train(env, f"two_{config}", *sets, "data.batch_size=8", config=config, nproc=2)
    w1, m1 = _final_state(env / f"one_{config}")
    w2, m2 = _final_state(env / f"two_{config}")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=0, atol=1e-5, msg=f"{key} differs")
    assert abs(m1[0]["train_loss"] - m2[0]["train_loss"]) < 1e-5
    assert abs(m1[0]["val_loss"] - m2[0]["val_loss"]) < 1e-5
    r1, r2 = (json.loads((env / f / "result.json").read_text()) for f in (f"one_{config}", f"two_{config}"))
    assert r2["world_size"] == 2
    assert r1["test"]["ap"] == pytest.approx(r2["test"]["ap"], abs=1e-5, nan_ok=True)


def test_resume_with_another_config_is_refused_naming_the_keys(env, uninterrupted):
    proc = train(env, "full", "schedule.lr=0.01", "method.criterion.name='focal'", resume=True, check=False)
    assert proc.returncode != 0
    assert "--resume: " in proc.stderr and "was written with another config; differing keys:" in proc.stderr
    assert "schedule.lr (saved 0.001, now 0.01)" in proc.stderr
    assert "method.criterion.name (saved 'bce', now 'focal')" in proc.stderr


def test_resume_may_extend_the_schedule(env, uninterrupted):
    shutil.copytree(uninterrupted, env / "extended")
    proc = train(env, "extended", f"schedule.epochs={EPOCHS + 1}", resume=True)
    assert f"at epoch {EPOCHS} step 0" in proc.stdout
    assert [m["epoch"] for m in metrics(env / "extended")] == list(range(EPOCHS + 1))


# ------------------------------------------------------------------------------------ bad data

@pytest.fixture()
def data_copy(env, uninterrupted, tmp_path) -> Path:
    """A copy of the tiny data set (labels.csv + images/) to damage; the generator is not rerun."""
    shutil.copytree(env / "data", tmp_path / "data", ignore=shutil.ignore_patterns(".cache", "splits*"))
    return tmp_path / "data"


def _train_in_process(env: Path, root: Path, out: Path, *sets: str) -> dict:
    from recipes.train import main

    return main(["--config", str(env / "erm.py"), "--profile", str(env / "tiny.py"), "--out-dir", str(out),
                 "--set", f"data.root={str(root)!r}", "data.dataset='csv'", "schedule.epochs=1",
                 "run.max_steps_per_epoch=2", *sets])


def _damage_three_images(root: Path) -> list[str]:
    """Row 3: truncated PNG; row 5: a text file named .png; row 8: deleted. Returns their names."""
    rows = (root / "labels.csv").read_text().splitlines()[1:]
    names = [rows[i].split(",")[0] for i in (3, 5, 8)]
    data = (root / "images" / names[0]).read_bytes()
    (root / "images" / names[0]).write_bytes(data[: len(data) // 3])
    (root / "images" / names[1]).write_text("not an image\n")
    (root / "images" / names[2]).unlink()
    return names


def test_bad_images_stop_the_run_naming_file_and_line(env, data_copy, tmp_path):
    from recipes.data import CSVDataError

    names = _damage_three_images(data_copy)
    with pytest.raises(CSVDataError, match=rf"expected every image to exist .* 1 missing: line 10: .*{names[2]}"):
        _train_in_process(env, data_copy, tmp_path / "run")
    (data_copy / "images" / names[2]).write_bytes((env / "data" / "images" / names[2]).read_bytes())
    from recipes.data import BadImageError

    with pytest.raises(BadImageError, match=rf"{names[0]} \(from .*labels.csv, line 5, column 'image'\)"):
        _train_in_process(env, data_copy, tmp_path / "run")


def test_bad_images_are_skipped_and_counted_only_with_the_flag(env, data_copy, tmp_path, capsys):
    names = _damage_three_images(data_copy)
    result = _train_in_process(env, data_copy, tmp_path / "run", "data.skip_bad_images=True")
    skipped = result["skipped_images"]
    assert skipped["count"] == 3 and skipped["train"] + skipped["val"] + skipped["test"] == 3
    assert sorted(Path(f["path"]).name for f in skipped["files"]) == sorted(names)
    assert {f["line"] for f in skipped["files"]} == {5, 7, 10}
    reasons = {Path(f["path"]).name: f["reason"] for f in skipped["files"]}
    assert reasons[names[2]] == "missing" and reasons[names[0]].startswith("undecodable")
    assert "data.skip_bad_images: skipping 3 unreadable image(s)" in capsys.readouterr().err
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["skipped_images"]["count"] == 3


@pytest.mark.parametrize("cell, message", [
    ("2", r"line 3, column 'hemorrhage'.*expected a label 0 or 1, got '2'"),
    ("-1", r"line 3, column 'hemorrhage'.*expected a label 0 or 1, got '-1'"),
    ("", r"line 3, column 'hemorrhage'.*expected a label 0 or 1, got ''"),
])
def test_bad_labels_stop_the_run_naming_line_and_column(env, data_copy, tmp_path, cell, message):
    from recipes.data import CSVDataError

    lines = (data_copy / "labels.csv").read_text().splitlines()
    first = lines[2].split(",")
    lines[2] = ",".join([first[0], cell, *first[2:]])
    (data_copy / "labels.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(CSVDataError, match=message):
        _train_in_process(env, data_copy, tmp_path / "run")


def test_duplicate_id_and_missing_class_column_stop_the_run(env, data_copy, tmp_path):
    from recipes.data import CSVDataError

    csv = data_copy / "labels.csv"
    original = csv.read_text()
    lines = original.splitlines()
    lines[4] = lines[2].split(",")[0] + "," + lines[4].split(",", 1)[1]
    csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(CSVDataError, match=r"duplicate"):
        _train_in_process(env, data_copy, tmp_path / "run")
    csv.write_text(original)
    header = original.splitlines()[0].split(",")[1:]
    with pytest.raises(ValueError, match=r"cotton_wool_spots"):
        _train_in_process(env, data_copy, tmp_path / "run",
                          f"data.class_names={[*header[:-1], 'cotton_wool_spots']!r}")


def test_a_data_error_on_the_command_line_is_one_message_not_a_traceback(env, data_copy, tmp_path):
    _damage_three_images(data_copy)
    proc = train(env, str(tmp_path / "cli"), f"data.root={str(data_copy)!r}", "data.dataset='csv'", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------ the sweep

def test_a_killed_sweep_restarts_only_its_unfinished_runs(env, tmp_path):
    """The sweep runner (jobs in its own process) is SIGKILLed in its 2nd run, in epoch 1; restarted,
    it leaves the finished run alone and resumes the killed one from its last checkpoint."""
    sweep = [sys.executable, "-m", "recipes.table3", "--profile", str(env / "tiny.py"), "--rows",
             "erm", "rs", "--out", str(tmp_path / "sweep"), "--no-figures"]
    environ = {**os.environ, "OMP_NUM_THREADS": "1"}
    fault = EPOCHS * STEPS_PER_EPOCH + STEPS_PER_EPOCH + 4  # erm's 30 steps, then rs's epoch 0 and 4 more
    killed = subprocess.run(sweep, capture_output=True, text=True, timeout=300, cwd=ROOT,
                            env={**environ, "RSKD_FAULT": f"step:{fault}"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    erm, rs = (next((tmp_path / "sweep").rglob(f"{name}/result.json"), None) for name in ("erm", "rs"))
    assert erm is not None and rs is None
    erm_bytes = erm.read_bytes()
    again = subprocess.run(sweep, capture_output=True, text=True, timeout=300, cwd=ROOT, env=environ)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "[sweep] 2 job(s): 1 finished, 1 to run" in again.stdout
    assert "resumed from" in again.stdout and "at epoch 1 step 0" in again.stdout
    assert erm.read_bytes() == erm_bytes  # the finished run was not touched
    assert next((tmp_path / "sweep").rglob("rs/result.json"), None) is not None


def test_resume_on_other_data_is_refused(env, uninterrupted, data_copy):
    shutil.copytree(uninterrupted, env / "other_data")
    lines = (data_copy / "labels.csv").read_text().splitlines()
    lines[1] = lines[1][:-1] + ("1" if lines[1].endswith("0") else "0")  # one label changed
    (data_copy / "labels.csv").write_text("\n".join(lines) + "\n")
    proc = train(env, "other_data", f"data.root={str(data_copy)!r}", f"schedule.epochs={EPOCHS + 1}",
                 resume=True, check=False)
    assert proc.returncode == 2
    assert "--resume: " in proc.stderr and "was trained on other data" in proc.stderr
