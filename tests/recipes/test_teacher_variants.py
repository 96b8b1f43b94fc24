"""Teacher variants in the recipes: cross-fitted teachers (``method.crossfit_k``) and ERM-initialised
teachers (``method.teacher_init='erm'``): their config checks, their teacher task, and their jobs in
the sweep's graph. No training runs (tests/e2e/test_crossfit_run.py trains a cross-fitted student)."""
from __future__ import annotations

import io
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.config import CONFIG_DIR, ConfigError, load_config
from recipes.engine.checkpoints import config_differences, plain_config
from recipes.engine.tasks import RunContext, TeacherTask, make_task
from recipes.engine.teacher_sources import rows_sha256
from recipes.models.backbones import build_model
from recipes.table3 import cli as table3_cli
from recipes.table3 import jobs as table3_jobs
from recipes.table3.collect import collect_tables
from recipes.table3.jobs import build_jobs, print_commands
from recipes.table3.rows import ROWS, TABLE3_ROWS, TABLE4_ROWS, TEACHER_VARIANT_ROWS, teachers_dir

COUNTS = (502, 318, 202, 128, 81, 51, 33, 20, 13, 8, 5, 4)  # the demo's 12 classes: 3 shot subsets
NAMES = tuple(f"c{i}" for i in range(12))
SHOT = 3


def fold_data(cfg):
    return np.asarray(COUNTS), NAMES


def _jobs(tmp_path, rows, seeds=(0,), sets=(), teacher_seed=None):
    return build_jobs(list(rows), [0], list(seeds), tmp_path / "sw", "demo", sets=sets, fold_data=fold_data,
                      teacher_seed=teacher_seed)


def _by_id(jobs):
    return {j.id: j for j in jobs}


# ------------------------------------------------------------------------------------ rows and configs

def test_variant_rows_are_selectable_but_in_no_default_table():
    assert set(TEACHER_VARIANT_ROWS) == {"ours_shot_xf", "ours_shot_erminit"} <= set(ROWS)
    assert not set(TEACHER_VARIANT_ROWS) & (set(TABLE3_ROWS) | set(TABLE4_ROWS))
    xf = load_config(CONFIG_DIR / ROWS["ours_shot_xf"].config, "demo")["method"]
    init = load_config(CONFIG_DIR / ROWS["ours_shot_erminit"].config, "demo")["method"]
    assert (xf["crossfit_k"], xf["teacher_init"], xf["partition"]["rule"]) == (4, None, "shot")
    assert (init["crossfit_k"], init["teacher_init"], init["partition"]["rule"]) == (0, "erm", "shot")
    plain = load_config(CONFIG_DIR / ROWS["ours_shot"].config, "demo")["method"]
    assert (plain["crossfit_k"], plain["crossfit_part"], plain["teacher_init"]) == (0, None, None)


@pytest.mark.parametrize("config, sets, message", [
    ("ours_shot", ["method.crossfit_k=1"], r"'method.crossfit_k' must be an int: 0 .* or K >= 2 .*, got 1"),
    ("teacher_shot", ["method.crossfit_k=3"], r"'method.crossfit_part' must be the part the teacher leaves out, "
                                              r"an int in \[0, 2\] \(method.crossfit_k=3\), got None"),
    ("teacher_shot", ["method.crossfit_part=0"], r"'method.crossfit_part' must be None when method.crossfit_k is 0"),
    ("teacher_shot", ["method.teacher_init='erm'"], r"'method.init_from' must be the ERM run folder .*, got None"),
    ("ours_shot", ["method.teacher_init='imagenet'"], r"'method.teacher_init' must be None or 'erm'"),
    ("ours_shot", ["method.crossfit_k=2", "method.teacher_init='erm'"], r"must not be combined.*not be out of fold"),
    ("ours_shot", ["method.crossfit_k=2", "method.teacher_mode='online'"], r"'method.teacher_mode' must be 'bank'"),
])
def test_bad_variant_settings_are_refused(config, sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG_DIR / "table3" / f"{config}.py", "demo", sets)


def test_a_run_saved_before_the_new_keys_resumes():
    cfg = plain_config(load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo", ["method.subset=1"]))
    old = {**cfg, "method": {k: v for k, v in cfg["method"].items()
                             if k not in ("crossfit_k", "crossfit_part", "teacher_init")}}
    assert config_differences(old, cfg) == []  # absent then, the default now: nothing changed
    xf = plain_config(load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo",
                                  ["method.subset=1", "method.crossfit_k=2", "method.crossfit_part=0"]))
    assert config_differences(old, xf) == ["method.crossfit_k (saved '<absent>', now 2)",
                                           "method.crossfit_part (saved '<absent>', now 0)"]


# ------------------------------------------------------------------------------------ the teacher task

def _fold(n: int = 300, seed: int = 0) -> dict:
    """A fold's data as ``prepare_data`` gives it, for 12 long-tailed classes (no images)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 12)) < np.geomspace(0.6, 0.02, 12)).astype(np.int64)
    rows = np.sort(rng.choice(2 * n, n, replace=False))  # CSV rows of the training part
    return {"class_names": list(NAMES), "train_targets": y, "train_counts": y.sum(0), "data_id": "test:fold0",
            "rows": {"train": rows}}


def test_a_cross_fitted_teacher_trains_without_its_part():
    data = _fold()
    views = {}
    for part in (0, 1):
        cfg = load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo",
                          ["method.subset=2", "method.crossfit_k=2", f"method.crossfit_part={part}",
                           "method.teacher_images='all'"])
        task = make_task(cfg, data, seed=0)
        views[part] = set(task.train_positions.tolist())
        rec = task.result()["crossfit"]
        assert (rec["k"], rec["part"], rec["left_out"]) == (2, part, 300 - len(views[part]))
    assert not views[0] & views[1] and views[0] | views[1] == set(range(300))  # "all": the other part, exactly
    left_out_0 = data["rows"]["train"][sorted(views[1])]  # part 0 is what set 1 trains on
    cfg0 = load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo",
                       ["method.subset=2", "method.crossfit_k=2", "method.crossfit_part=0"])
    assert make_task(cfg0, data, seed=0).result()["crossfit"]["left_out_sha256"] == rows_sha256(left_out_0)
    plain = make_task(load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo",
                                  ["method.subset=2", "method.teacher_images='all'"]), data, 0)
    assert plain.result() == {} and plain.train_positions.tolist() == list(range(300))  # in-sample: every image


def test_an_erm_initialised_teacher_starts_from_the_erm_backbone(tmp_path):
    data = _fold()
    cfg = load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo",
                      ["method.subset=0", "method.teacher_init='erm'", f"method.init_from={str(tmp_path / 'erm')!r}"])
    torch.manual_seed(1)
    erm = build_model(cfg["model"], 12, image_size=cfg["data"]["image_size"])
    (tmp_path / "erm").mkdir()
    torch.save({"model": erm.state_dict(), "data_id": data["data_id"]}, tmp_path / "erm" / "best.pt")
    task = make_task(cfg, data, seed=0)
    assert isinstance(task, TeacherTask)
    ctx = RunContext(cfg, data, torch.device("cpu"), 0, 1, False, None, tmp_path / "t" / "subset0", resuming=False)
    (tmp_path / "t" / "subset0").mkdir(parents=True)
    model = task.build(ctx)
    for key, value in erm.state_dict().items():
        if key.startswith("backbone."):
            assert torch.equal(model.state_dict()[key], value), key
    assert model.head.weight.shape[0] == len(task.columns) < 12  # its own head, of the subset's width
    resumed = make_task(cfg, data, seed=0).build(RunContext(cfg, data, torch.device("cpu"), 0, 1, False, None,
                                                            ctx.out_dir, resuming=True))
    assert not torch.equal(resumed.backbone[0].weight, erm.backbone[0].weight)  # a resumed run keeps its own
    wide = load_config(CONFIG_DIR / "table3/teacher_shot.py", "demo",
                       ["method.subset=0", "method.teacher_init='erm'", "model.width=8",
                        f"method.init_from={str(tmp_path / 'erm')!r}"])
    with pytest.raises(ConfigError, match=r"erm/best.pt: its backbone does not fit this teacher's model"):
        make_task(wide, data, seed=0).build(ctx)


# ------------------------------------------------------------------------------------ the job graph

def test_a_cross_fitted_row_trains_k_sets_and_its_student_waits_for_all(tmp_path):
    jobs = _jobs(tmp_path, ["ours_shot", "ours_shot_xf"])
    by_id = _by_id(jobs)
    tdir = teachers_dir(tmp_path / "sw", 0, 0, "shot", crossfit_k=4)
    assert tdir.name == "teachers_shot_xf4"
    xf_teachers = [j for j in jobs if "teachers_shot_xf4/" in j.id]
    assert len(xf_teachers) == 4 * SHOT
    assert sorted(j.id for j in xf_teachers) == sorted(f"fold0/seed0/teachers_shot_xf4/part{k}/subset{j}"
                                                      for k in range(4) for j in range(SHOT))
    for j in xf_teachers:
        part = int(j.id.split("/part")[1][0])
        assert {"method.crossfit_k=4", f"method.crossfit_part={part}"} <= set(j.sets) and j.deps == ()
    student = by_id["fold0/seed0/ours_shot_xf"]
    assert set(student.deps) == {j.id for j in xf_teachers}
    assert f"method.teachers_dir={str(tdir)!r}" in student.sets
    assert len([j for j in jobs if "/teachers_shot/" in j.id]) == SHOT  # the in-sample row keeps its own


def test_crossfit_k_set_on_the_command_line_applies_to_any_ours_row(tmp_path):
    jobs = _jobs(tmp_path, ["ours_focal"], sets=["method.crossfit_k=2"])
    teachers = [j for j in jobs if j.stage == "teacher"]
    assert len(teachers) == 2 * SHOT and all("/teachers_shot_xf2/part" in j.id for j in teachers)


def test_erm_initialised_teachers_wait_for_the_erm_run(tmp_path):
    jobs = _jobs(tmp_path, ["ours_shot_erminit", "erm"], seeds=(0, 1), teacher_seed=7)
    by_id = _by_id(jobs)
    erm7 = "fold0/seed7/erm"
    teachers = [j for j in jobs if j.stage == "teacher"]
    assert [j.id for j in teachers] == [f"fold0/seed7/teachers_shot_erminit/subset{j}" for j in range(SHOT)]
    for t in teachers:
        assert t.deps == (erm7,) and "method.teacher_init='erm'" in t.sets
        assert f"method.init_from={str(tmp_path / 'sw' / erm7)!r}" in t.sets
        cfg = load_config(CONFIG_DIR / t.config, "demo", t.sets)  # the teacher's command line is valid
        assert cfg["method"]["teacher_init"] == "erm"
    assert [j.id for j in jobs].count(erm7) == 1 and by_id[erm7].row == "erm"
    for seed in (0, 1):  # the students of both seeds distil the seed-7 teachers; each seed has its own ERM row
        assert set(by_id[f"fold0/seed{seed}/ours_shot_erminit"].deps) == {t.id for t in teachers}
        assert f"fold0/seed{seed}/erm" in by_id
    order = [j.id for j in table3_jobs.topological_order(jobs)]
    assert order.index(erm7) < min(order.index(t.id) for t in teachers)


def test_print_commands_of_the_variants_parse(tmp_path, monkeypatch):
    from recipes.train import get_args_parser

    monkeypatch.chdir(tmp_path)
    jobs = _jobs(tmp_path, ["ours_shot_xf", "ours_shot_erminit"], sets=["schedule.epochs=1"])
    buf = io.StringIO()
    assert print_commands(jobs, file=buf) == len(jobs) == 4 * SHOT + 1 + 1 + SHOT + 1
    commands = [shlex.split(line) for line in buf.getvalue().splitlines() if not line.startswith("#")]
    seen = {}
    for argv in commands:
        args = get_args_parser().parse_args(argv[5:])
        cfg = load_config(args.config, args.profile, args.set)
        seen[Path(args.out_dir).relative_to(tmp_path / "sw").as_posix()] = cfg["method"]
    assert seen["fold0/seed0/teachers_shot_xf4/part3/subset2"]["crossfit_part"] == 3
    assert seen["fold0/seed0/teachers_shot_erminit/subset1"]["init_from"] == str(tmp_path / "sw/fold0/seed0/erm")
    assert seen["fold0/seed0/ours_shot_xf"]["crossfit_k"] == 4


def test_the_cli_selects_a_variant_row_with_rows(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table3_jobs, "fold_class_data", fold_data)
    monkeypatch.chdir(tmp_path)
    assert table3_cli.main(["--profile", "demo", "--print-commands", "--out", "sw", "--rows", "ours_shot_xf",
                            "--set", "method.crossfit_k=2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {2 * SHOT + 1} job(s)") and "teachers_shot_xf2/part1/subset2" in out


def test_a_selected_variant_row_is_collected_into_table3(tmp_path):
    import json

    for row in ("ours_shot", "ours_shot_xf"):
        d = tmp_path / "fold0" / "seed0" / row
        d.mkdir(parents=True)
        ap = [0.5] * 12
        (d / "result.json").write_text(json.dumps({"name": row, "fold": 0, "seed": 0, "seconds": 1.0,
                                                   "train_class_counts": list(COUNTS),
                                                   "test": {"ap": ap, "map": {}}}))
    _, tables = collect_tables(tmp_path, [3], ["ours_shot", "ours_shot_xf"], [0], [0])
    assert [r.row for r in tables[3]] == ["ours_shot", "ours_shot_xf"]
    _, only_default = collect_tables(tmp_path, [3, 4], ["ours_shot"], [0], [0])
    assert [r.row for r in only_default[3]] == ["ours_shot"]
