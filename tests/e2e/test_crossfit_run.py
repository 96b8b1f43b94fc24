"""A cross-fitted student end to end: the sweep's jobs for ``ours_shot_xf`` with K = 2 on a tiny synthetic
set (2 x 3 teachers, then the student), and the bank it distilled checked row by row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_setup import write_tiny_profile
from torch.utils.data import DataLoader

from recipes.config import load_config
from recipes.data.augment import BatchAugment
from recipes.data.folds import make_dataset, prepare_data
from recipes.data.views import View
from recipes.engine.predict import predict
from recipes.engine.teacher_sources import load_teachers, rows_sha256
from recipes.table3.jobs import build_jobs
from recipes.table3.local import run_jobs
from recipes.table3.rows import config_path
from rskd_loss import CrossFitTeachers, TeacherLogitBank

pytestmark = pytest.mark.slow  # seven training runs (26 s on 2 shared CPU cores)


def test_a_cross_fitted_student_distils_out_of_fold_logits(tmp_path: Path) -> None:
    profile = write_tiny_profile(tmp_path)
    out = tmp_path / "sw"
    jobs = build_jobs(["ours_shot_xf"], [0], [0], out, str(profile), sets=["method.crossfit_k=2"])
    assert len(jobs) == 2 * 3 + 1
    report = run_jobs(jobs, out)
    assert report.ok, report
    student = jobs[-1]
    result = json.loads((Path(student.out_dir) / "result.json").read_text())
    assert result["name"] == "ours_shot_xf" and len(result["teacher_val_ap"]) == 8

    tdir = out / "fold0" / "seed0" / "teachers_shot_xf2"
    bank = TeacherLogitBank(tdir / "bank_train_32px.rskd")
    assert bank.header["metadata"]["crossfit"]["k"] == 2
    parts = bank.crossfit_parts()
    cfg = load_config(config_path(student.config), str(profile), student.sets)
    data = prepare_data(cfg, 0, 1)
    train_rows = data["rows"]["train"]
    assert bank.num_samples == len(train_rows) == sum(len(p) for p in parts)
    # each set left out exactly the part whose rows it gave: its teachers' records name those CSV rows
    for k, part in enumerate(parts):
        for j in range(3):
            rec = json.loads((tdir / f"part{k}" / f"subset{j}" / "result.json").read_text())["crossfit"]
            assert (rec["k"], rec["part"], rec["left_out"]) == (2, k, len(part))
            assert rec["left_out_sha256"] == rows_sha256(train_rows[part])
    # and each row holds the logits of that set, not of the set that trained on it
    teachers, _, _ = load_teachers(cfg, data, torch.device("cpu"))
    assert isinstance(teachers, CrossFitTeachers)
    loader = DataLoader(View(make_dataset(cfg, data, "train")), batch_size=64, shuffle=False)
    augment = BatchAugment(32)
    own = [predict(s, loader, torch.device("cpu"), augment, False)["logits"] for s in teachers.sets]
    table = bank.numpy().astype(np.float32)
    for k, part in enumerate(parts):
        mine, other = (np.abs(table[part] - own[s][part].astype(np.float16)).max() for s in (k, 1 - k))
        print(f"part {k}: max |bank - own set| {mine:.2e}, |bank - other set| {other:.2e}")
        assert 4 * mine < other  # measured: 0 (float16 rounding at most) against 2.7e-3 for the other set
