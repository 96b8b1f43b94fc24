"""The recipes on a user's own export: metadata columns, the user's prior, one-line errors with exit
status 2, and one live process per run folder. Tiny runs on CPU (8 classes, 32 px, 2 steps an epoch)."""
from __future__ import annotations

import csv
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.cli import run_command
from recipes.data import generate_synthetic
from recipes.train import main

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # whole runs in subprocesses: make test-lib and -m "not slow" leave them out
METADATA = ["patient_age", "quality", "note"]


def _export_name(name: str) -> str:
    return name.replace("_", " ").title()  # "hard_exudate" -> "Hard Exudate": not in any shipped prior


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A hospital-style export of a tiny synthetic set: BOM, the image column second, class names with
    spaces, an integer age, a 0/1/2 quality grade and a free-text note."""
    tmp = tmp_path_factory.mktemp("userdata")
    generate_synthetic(tmp / "syn", num_images=240, image_size=32, num_classes=8, workers=1)
    rows = list(csv.reader((tmp / "syn" / "labels.csv").open()))
    rng = np.random.default_rng(0)
    out = [["patient_age", "Image file", *map(_export_name, rows[0][1:]), "quality", "note"]]
    for r in rows[1:]:
        out.append([str(rng.integers(20, 90)), r[0], *r[1:], str(rng.integers(0, 3)), rng.choice(["od", "os, blur"])])
    data = tmp / "export"
    data.mkdir()
    (data / "images").symlink_to(tmp / "syn" / "images")
    with (data / "export.csv").open("w", encoding="utf-8-sig", newline="") as f:
        csv.writer(f).writerows(out)
    (tmp / "tiny.py").write_text(
        f"data = dict(dataset='csv', root={str(data)!r}, csv='export.csv', image_column='Image file',\n"
        "            scheme='holdout', image_size=32, batch_size=16, eval_batch_size=64, num_workers=0)\n"
        "model = dict(name='small_cnn', pretrained=False, width=4)\n"
        "schedule = dict(epochs=1)\n"
        "run = dict(device='cpu', max_steps_per_epoch=2, deterministic=True)\n"
        "method = dict(partition=dict(mode='quantile'))\n")
    configs = {
        "erm": "method = dict(name='erm', stage='baseline', criterion=dict(name='bce'))",
        "teacher": "method = dict(name='teacher', stage='teacher', criterion=dict(name='bce'))",
        "student": f"method = dict(name='ours', stage='student', criterion=dict(name='bce'), "
                   f"teachers_dir={str(tmp / 'teachers')!r})",
    }
    for name, text in configs.items():
        (tmp / f"{name}.py").write_text(text + "\n")
    return tmp


def _argv(env: Path, config: str, out: Path, *sets: str) -> list[str]:
    argv = ["--config", str(env / f"{config}.py"), "--profile", str(env / "tiny.py"), "--out-dir", str(out)]
    return argv + (["--set", *sets] if sets else [])


def _classes(env: Path) -> list[str]:
    header = (env / "export" / "export.csv").read_text(encoding="utf-8-sig").splitlines()[0].split(",")
    return header[2:-2]


def test_every_stage_runs_with_label_columns_found_or_named(env, capsys):
    classes = _classes(env)
    assert _run_ok(env, "erm", env / "erm")["class_names"] == classes
    printed = capsys.readouterr().out
    assert (f"data: export.csv: took 8 label column(s) (every column of 0/1 values): {classes}; skipped 3 "
            f"column(s) with other values: 'patient_age'") in printed
    assert "'quality'" in printed and "'note'" in printed
    for k in range(3):  # the shot rule in quantile mode: three teachers
        _run_ok(env, "teacher", env / "teachers" / f"subset{k}", f"method.subset={k}")
    student = _run_ok(env, "student", env / "ours")
    assert student["class_names"] == classes and len(student["teacher_val_ap"]) == 8
    named = classes[:5]
    result = _run_ok(env, "erm", env / "erm_named", f"data.class_names={named!r}")
    assert result["class_names"] == named and len(result["test"]["ap"]) == 5
    assert f"took 5 label column(s) (as named): {named}" in capsys.readouterr().out


def _run_ok(env: Path, config: str, out: Path, *sets: str) -> dict:
    return main(_argv(env, config, out, *sets))


def test_the_region_rule_runs_with_the_users_prior(env, tmp_path, capsys):
    from recipes.data.describe import main as describe

    prior_file = tmp_path / "my_prior.json"
    assert describe(["--csv", str(env / "export" / "export.csv"), "--image-column", "Image file",
                     "--write-prior", str(prior_file)]) == 0
    prior = json.loads(prior_file.read_text())
    classes = _classes(env)
    prior["region"] = {"left": classes[:4], "right": classes[4:]}  # the user groups the classes
    prior_file.write_text(json.dumps(prior))
    result = _run_ok(env, "teacher", tmp_path / "region" / "subset1", "method.partition.rule='region'",
                     f"method.partition.prior={str(prior_file)!r}", "method.subset=1")
    assert result["class_names"] == classes[4:]
    part = json.loads((tmp_path / "region" / "partition.json").read_text())
    assert [len(s) for s in part["subsets"]] == [4, 4]


def _cli(argv: list[str], capsys, program: str = "train") -> str:
    """``recipes.train``'s (or ``recipes.table3``'s) command line in process: stderr after the expected exit status 2."""
    from recipes.table3.cli import main as table3_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        if program == "train":
            run_command(lambda: main(argv))
        else:
            run_command(lambda: table3_main(argv))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _bad_label(env: Path, tmp_path: Path) -> list[str]:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images").symlink_to(env / "export" / "images")
    lines = (env / "export" / "export.csv").read_text(encoding="utf-8-sig").splitlines()
    cells = lines[3].split(",")
    cells[2] = "2"
    lines[3] = ",".join(cells)
    (bad / "export.csv").write_text("\n".join(lines) + "\n")
    return [f"data.root={str(bad)!r}", f"data.class_names={_classes(env)!r}"]


def _changed_csv(env: Path, tmp_path: Path) -> list[str]:
    moved = tmp_path / "changed"
    moved.mkdir()
    (moved / "images").symlink_to(env / "export" / "images")
    lines = (env / "export" / "export.csv").read_text(encoding="utf-8-sig").splitlines()
    (moved / "export.csv").write_text("\n".join(lines) + "\n")
    main(_argv(env, "erm", tmp_path / "first", f"data.root={str(moved)!r}"))  # makes the CSV's splits
    cells = lines[5].split(",")
    cells[2] = "1" if cells[2] == "0" else "0"  # one label changed: the splits no longer fit
    lines[5] = ",".join(cells)
    (moved / "export.csv").write_text("\n".join(lines) + "\n")
    return [f"data.root={str(moved)!r}"]


ERRORS = {
    "label 2 in a named column": (_bad_label, r"line 4, column '.*': expected a label 0 or 1, got '2'"),
    "region rule without a prior": (lambda env, tmp: ["method.partition.rule='region'", "method.subset=0"],
                                    r"'method.partition.prior' must name a prior for the region rule.*--write-prior"),
    "prior without the classes": (lambda env, tmp: ["method.partition.rule='region'", "method.subset=0",
                                                     "method.partition.prior='synthetic'"],
                                  r"lacks 8 of the 8 classes.*'Hemorrhage'.*--write-prior"),
    "a changed CSV": (_changed_csv, r"splits.*--replace"),
    "a model setting": (lambda env, tmp: ["model.freeze=2"], r"model.freeze is supported for efficientnet_lite0"),
    "an unknown key": (lambda env, tmp: ["schedule.epoch=2"], r"schedule.epoch"),
}


@pytest.mark.parametrize("program", ["train", "table3"])
@pytest.mark.parametrize("case", list(ERRORS))
def test_every_user_error_is_one_line_and_exit_status_2(env, tmp_path, capsys, case, program):
    make_sets, message = ERRORS[case]
    sets = make_sets(env, tmp_path)
    if program == "train":
        argv = _argv(env, "teacher" if "prior" in case else "erm", tmp_path / "run", *sets)
    else:  # the sweep: ERM, or the region rule's first teacher for the prior cases
        rows = ["ours_region"] if "prior" in case else ["erm"]
        sets = [s for s in sets if not s.startswith(("method.partition.rule", "method.subset"))]
        argv = ["--profile", str(env / "tiny.py"), "--rows", *rows, "--out", str(tmp_path / "sweep"),
                "--no-figures", *(["--set", *sets] if sets else [])]
    err = _cli(argv, capsys, program)
    assert re.search(message, err), err


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_and_keeps_the_last_one(env, tmp_path, capsys,
                                                                                   monkeypatch):
    out = tmp_path / "run"
    main(_argv(env, "erm", out))
    before = {name: (out / name).read_bytes() for name in ("last.pt", "best.pt")}

    def full_disk(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    err = _cli(_argv(env, "erm", out, "schedule.epochs=2") + ["--resume"], capsys)
    assert re.search(r"cannot write .*/run/(best|last)\.pt: disk full \(ENOSPC\)", err) and "unchanged" in err
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    # the sweep: the run's error stops it, as one line
    err = _cli(["--profile", str(env / "tiny.py"), "--rows", "erm", "--out", str(tmp_path / "sweep"),
                "--no-figures"], capsys, "table3")
    assert re.search(r"cannot write .*/sweep/fold0/seed0/erm/(best|last)\.pt: disk full \(ENOSPC\)", err)


# ---------------------------------------------------------------------------- one process per folder

def _train_process(env: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.Popen:
    environ = {**os.environ, "OMP_NUM_THREADS": "1"}
    if fault:
        environ["RSKD_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "recipes.train",
                             *_argv(env, "erm", out, "schedule.epochs=2", "run.checkpoint_every=1"), *extra],
                            cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_stopped(proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        state = Path(f"/proc/{proc.pid}/stat").read_text().split(")")[-1].split()[0]
        if state == "T":
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise TimeoutError("the first run never reached its stop point")


def _final_state(out: Path) -> tuple:
    state = torch.load(out / "last.pt", weights_only=True)
    result = json.loads((out / "result.json").read_text())
    return {k: v for k, v in state["model"].items()}, result["test"]["ap"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process states from /proc")
def test_a_second_process_is_refused_and_a_killed_owners_lock_is_taken_over(env, tmp_path):
    reference = tmp_path / "reference"
    assert _train_process(env, reference).wait(timeout=300) == 0
    out = tmp_path / "run"
    first = _train_process(env, out, fault="step:3:stop")  # stops itself mid-run, alive, holding the lock
    try:
        _wait_stopped(first)
        files = sorted(os.listdir(out))
        second = _train_process(env, out, "--resume")
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert f"pid {first.pid}" in err
        assert sorted(os.listdir(out)) == files
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0
    model, ap = _final_state(out)
    ref_model, ref_ap = _final_state(reference)
    assert ap == ref_ap and all(torch.equal(model[k], ref_model[k]) for k in ref_model)

    killed = tmp_path / "killed"
    assert _train_process(env, killed, fault="step:3").wait(timeout=300) == -signal.SIGKILL
    assert (killed / ".lock").is_file()
    resumed = _train_process(env, killed, "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "took over" in err
    model, ap = _final_state(killed)
    assert ap == ref_ap and all(torch.equal(model[k], ref_model[k]) for k in ref_model)


def test_a_second_sweep_on_a_live_sweep_folder_is_refused(env, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from recipes.engine.run_lock import RunLock; "
                               "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)",
                               str(sweep)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _cli(["--profile", str(env / "tiny.py"), "--rows", "erm", "--out", str(sweep), "--no-figures"],
                   capsys, "table3")
        assert f"pid {holder.pid}" in err and str(sweep) in err
        assert sorted(os.listdir(sweep)) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
