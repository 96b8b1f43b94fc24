"""Tests of the Table 3 / Table 4 sweep (recipes/table3/) and of every config file. No training runs.

The fold data (training class counts, class names) is a fixed vector passed to ``build_jobs``, so no
data set is generated; ``recipes.train.main`` and the child-process command are replaced by fakes
that only write ``result.json``.
"""
from __future__ import annotations

import csv
import inspect
import json
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest

from recipes.config import CONFIG_DIR, ConfigError, load_config
from recipes.table3 import cli as table3_cli
from recipes.table3 import figures as table3_figures
from recipes.table3 import jobs as table3_jobs
from recipes.table3 import local as table3_local
from recipes.table3.collect import collect_table, write_table
from recipes.table3.jobs import Job, build_jobs, is_finished, job_argv, topological_order
from recipes.table3.local import run_jobs
from recipes.table3.rows import OURS, ROWS, TABLE3_ROWS, TABLE4_ROWS, SweepError, run_dir_name, teachers_dir

PROFILES = sorted(p.stem for p in (CONFIG_DIR / "profiles").glob("*.py"))
METHOD_CONFIGS = sorted(p for d in ("table3", "table4") for p in (CONFIG_DIR / d).glob("*.py"))

# The demo's data: the first 12 classes of the synthetic catalogue (recipes/data/synthetic.py CATALOGUE)
# with the hold-out training counts of 1500 images (target_class_counts(1500, 12) * 0.7, rounded).
NAMES12 = ("hemorrhage", "hard_exudate", "drusen", "disc_cupping", "cotton_wool_spot", "perivascular_hemorrhage",
           "pigmentation", "macular_hypopigmentation", "disc_pallor", "perivascular_sheathing", "macular_hole",
           "macular_pigment_clump")
COUNTS12 = (502, 318, 202, 128, 81, 51, 33, 20, 13, 8, 5, 4)
# Subsets by hand, from rskd_loss/priors/synthetic.json:
# shot (100, 20): head >= 100 {502, 318, 202, 128}, medium [20, 100) {81, 51, 33, 20}, tail {13, 8, 5, 4} -> 3
# region: optic_disc {disc_cupping, disc_pallor}, macula {drusen, macular_hypopigmentation, macular_hole,
#   macular_pigment_clump}, vessels {perivascular_hemorrhage, perivascular_sheathing}, global {hemorrhage,
#   hard_exudate, cotton_wool_spot, pigmentation} -> 4
# feature: red_dots {hemorrhage, perivascular_hemorrhage}, yellow_spots {hard_exudate, drusen}, pale_patch
#   {cotton_wool_spot, macular_hypopigmentation, disc_pallor, perivascular_sheathing}, dark_pigment
#   {pigmentation, macular_pigment_clump}, ring {disc_cupping, macular_hole} -> 5
K_DEMO = {"shot": 3, "region": 4, "feature": 5}


def fixed_fold_data(counts=COUNTS12, names=NAMES12):
    return lambda cfg: (np.asarray(counts), tuple(names))


def demo_jobs(tmp_path, rows=TABLE3_ROWS + TABLE4_ROWS, folds=(0,), seeds=(0,), ours_rule="shot", profile="demo",
              counts=COUNTS12, sets=()):
    rows = list(dict.fromkeys(rows))
    return build_jobs(rows, folds, seeds, tmp_path / "sweep", profile, ours_rule=ours_rule, sets=sets,
                      fold_data=fixed_fold_data(counts))


# ------------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("profile", PROFILES)
def test_every_method_config_loads_with_every_profile(profile):
    assert set(PROFILES) == {"cpu_long", "cpu_pretrained", "cpu_pretrained_v2", "demo", "paper", "rfmid"}
    # 15 Table 3 rows incl. OLTR stage 1, ASL and Ours + ASL, 2 teacher-variant rows, 3 teacher configs, 3 Table 4 rows
    assert len(METHOD_CONFIGS) == 25
    for path in METHOD_CONFIGS:
        cfg = load_config(path, profile)  # unknown keys / bad values raise ConfigError
        crit = cfg["method"]["criterion"]
        leftovers = [k for k in crit if k.startswith("_")]
        assert not leftovers, f"{path}: mmengine key {leftovers} reached the criterion"
        if path.stem.startswith("teacher_"):
            assert cfg["method"]["stage"] == "teacher"
            assert cfg["method"]["partition"]["rule"] == path.stem.split("_", 1)[1]


@pytest.mark.parametrize("profile", PROFILES)
def test_profile_alone_loads(profile):
    cfg = load_config(None, profile)
    assert cfg["method"]["partition"]["prior"] in ("synthetic", "rfmid")


def test_method_names_and_rows_match_config_files():
    for row, spec in ROWS.items():
        cfg = load_config(CONFIG_DIR / spec.config, "demo")
        assert cfg["method"]["name"] == row
        assert (cfg["method"]["stage"] == "student") == (spec.rule is not None)
        assert (cfg["method"]["oltr_stage"] == 2) == spec.oltr_init
        if spec.rule not in (None, OURS):
            assert cfg["method"]["partition"]["rule"] == spec.rule
    # LDAM rows need the cosine head; the other rows keep the linear one
    for row in ROWS:
        head = load_config(CONFIG_DIR / ROWS[row].config, "demo")["model"]["head"]
        assert head == ("normed" if row in ("ldam", "ours_ldam") else "linear"), row


def test_table4_rows_are_kd_without_dynamic_weights_at_their_temperature():
    for t in (3, 10, 20):
        m = load_config(CONFIG_DIR / f"table4/kd_t{t}.py", "demo")["method"]
        assert m["kd"]["temperature"] == float(t)
        assert m["kd"]["dynamic_weights"] is False
        assert m["partition"]["rule"] == "feature"
    weighted = load_config(CONFIG_DIR / "table3/ours_feature.py", "demo")["method"]
    assert weighted["kd"]["dynamic_weights"] is True and weighted["kd"]["temperature"] == 10.0


def test_criterion_configs_state_the_library_defaults():
    # the configs spell the knobs out; they must be the documented defaults of the baselines
    from rskd_loss.baselines.focal import FocalLoss
    from rskd_loss.baselines.ldam import LDAMLoss
    from rskd_loss.baselines.reweight import ReweightedBCE

    def defaults(cls):
        return {k: v.default for k, v in inspect.signature(cls).parameters.items()
                if v.default is not inspect.Parameter.empty}

    for row, cls in (("focal", FocalLoss), ("ours_focal", FocalLoss), ("ldam", LDAMLoss), ("ours_ldam", LDAMLoss),
                     ("rw", ReweightedBCE)):
        crit = dict(load_config(CONFIG_DIR / ROWS[row].config, "demo")["method"]["criterion"])
        crit.pop("name")
        lib = defaults(cls)
        for key, value in crit.items():
            assert lib[key] == value, (row, key, value, lib[key])


def test_paper_profile_is_section_3_1():
    cfg = load_config(CONFIG_DIR / "table3/erm.py", "paper")
    assert cfg["model"]["name"] == "resnet50" and cfg["model"]["pretrained"] is True
    assert cfg["data"]["image_size"] == 256 and cfg["data"]["scheme"] == "kfold" and cfg["data"]["n_folds"] == 4
    s = cfg["schedule"]
    got = (s["epochs"], s["lr"], s["plateau_factor"], s["plateau_patience"], s["min_lr"])
    assert got == (100, 1e-4, 0.1, 5, 1e-7)
    assert cfg["method"]["kd"]["delta"] == 0.6
    rfmid = load_config(CONFIG_DIR / "table3/erm.py", "rfmid")
    assert rfmid["data"]["dataset"] == "rfmid" and rfmid["method"]["partition"]["prior"] == "rfmid"
    assert rfmid["schedule"] == s


def test_demo_profile_is_cpu_small_cnn():
    cfg = load_config(CONFIG_DIR / "table3/erm.py", "demo")
    assert cfg["model"]["name"] == "small_cnn" and cfg["run"]["device"] == "cpu"
    assert cfg["data"]["preload"] is True and cfg["data"]["num_workers"] == 0
    assert cfg["data"]["scheme"] == "holdout" and cfg["data"]["fold"] == 0


# ------------------------------------------------------------------------------------ job graph

def test_job_graph_has_every_row_of_both_tables_in_dependency_order(tmp_path):
    jobs = demo_jobs(tmp_path, folds=(0,), seeds=(0, 1))
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids))
    pos = {j.id: i for i, j in enumerate(jobs)}
    for seed in (0, 1):
        rows = {j.row for j in jobs if j.seed == seed and j.row is not None}
        assert rows == set(TABLE3_ROWS) | set(TABLE4_ROWS)
    for j in jobs:
        for d in j.deps:
            assert pos[d] < pos[j.id], f"{j.id} listed before its dependency {d}"
    # per seed: 19 rows + OLTR stage 1 + the teachers of the three rules
    assert len(jobs) == 2 * (19 + 1 + sum(K_DEMO.values()))
    assert topological_order(jobs) == jobs  # already in a valid order: the stable sort keeps it


@pytest.mark.parametrize("rule", ["shot", "region", "feature"])
def test_teacher_jobs_per_rule_match_the_partition(tmp_path, rule):
    row = f"ours_{rule}"
    jobs = demo_jobs(tmp_path, rows=[row])
    teachers = [j for j in jobs if j.stage == "teacher"]
    assert len(teachers) == K_DEMO[rule]
    tdir = teachers_dir(tmp_path / "sweep", 0, 0, rule)
    assert [Path(j.out_dir) for j in teachers] == [tdir / f"subset{k}" for k in range(K_DEMO[rule])]
    assert [f"method.subset={k}" in j.sets for k, j in enumerate(teachers)] == [True] * K_DEMO[rule]
    student = jobs[-1]
    assert student.row == row and student.stage == "student"
    assert set(student.deps) == {j.id for j in teachers}
    assert f"method.teachers_dir={str(tdir)!r}" in student.sets


def test_shot_rule_without_tail_gives_two_teachers(tmp_path, capsys):
    # every count >= 20: the shot rule's tail group is empty and dropped (rskd_loss.partition), so k = 2
    counts = (502, 318, 202, 128, 81, 51, 33, 20, 25, 30, 40, 60)
    jobs = demo_jobs(tmp_path, rows=["ours_shot"], counts=counts)
    assert sum(j.stage == "teacher" for j in jobs) == 2
    err = capsys.readouterr().err  # train.make_partition prints the partitioner's warning
    assert "tail" in err and "empty" in err


def test_ours_plus_rows_use_the_ours_rule_teachers_and_their_own_folder(tmp_path):
    jobs = demo_jobs(tmp_path, rows=["ours_db", "ours_focal"], ours_rule="region")
    teachers = [j for j in jobs if j.stage == "teacher"]
    assert len(teachers) == K_DEMO["region"]  # shared by both rows, listed once
    for j in jobs[-2:]:
        assert j.id.endswith(f"{j.row}-region")
        assert "method.partition.rule='region'" in j.sets
        assert set(j.deps) == {t.id for t in teachers}
    assert run_dir_name("ours_db", "feature") == "ours_db-feature"
    assert run_dir_name("ours_shot", "feature") == "ours_shot"


def test_oltr_rows_depend_on_stage_one_and_start_from_it(tmp_path):
    jobs = demo_jobs(tmp_path, rows=["oltr", "ours_oltr"])
    stage1 = [j for j in jobs if j.config == "table3/oltr_stage1.py"]
    assert len(stage1) == 1 and jobs.index(stage1[0]) == 0
    for row in ("oltr", "ours_oltr"):
        job = next(j for j in jobs if j.row == row)
        assert stage1[0].id in job.deps
        assert f"method.init_from={stage1[0].out_dir!r}" in job.sets
        cfg = load_config(CONFIG_DIR / job.config, "demo", job.sets)
        assert cfg["method"]["oltr_stage"] == 2 and cfg["method"]["sampler"] == "class_aware"


def test_folds_and_seeds_expand_into_separate_cells(tmp_path):
    jobs = demo_jobs(tmp_path, rows=["erm"], folds=(0, 1, 2), seeds=(0, 5), profile="paper")
    assert [(j.fold, j.seed) for j in jobs] == [(0, 0), (0, 5), (1, 0), (1, 5), (2, 0), (2, 5)]
    assert [j.id for j in jobs][-1] == "fold2/seed5/erm"
    for j in jobs:
        cfg = load_config(CONFIG_DIR / j.config, j.profile, j.sets)
        assert (cfg["data"]["fold"], cfg["run"]["seed"]) == (j.fold, j.seed)


def test_teacher_seed_trains_each_folds_teachers_once_for_every_seed(tmp_path):
    rows = ["ours_shot"]
    jobs = build_jobs(rows, (0, 1), (0, 1), tmp_path / "sweep", "paper", fold_data=fixed_fold_data(),
                      teacher_seed=0)
    teachers = [j for j in jobs if j.stage == "teacher"]
    assert [j.id for j in teachers] == [f"fold{f}/seed0/teachers_shot/subset{k}" for f in (0, 1) for k in range(3)]
    assert all(j.seed == 0 and "run.seed=0" in j.sets for j in teachers)
    students = [j for j in jobs if j.stage == "student"]
    assert [j.id for j in students] == ["fold0/seed0/ours_shot", "fold0/seed1/ours_shot",
                                        "fold1/seed0/ours_shot", "fold1/seed1/ours_shot"]
    for j in students:  # the seed-1 student distils the fold's seed-0 teachers
        cfg = load_config(CONFIG_DIR / j.config, j.profile, j.sets)
        assert cfg["run"]["seed"] == j.seed
        assert cfg["method"]["teachers_dir"] == str(tmp_path / "sweep" / f"fold{j.fold}" / "seed0" / "teachers_shot")
        assert set(j.deps) == {f"fold{j.fold}/seed0/teachers_shot/subset{k}" for k in range(3)}
    assert topological_order(jobs) == jobs
    # without it, every cell has its own teachers
    per_cell = build_jobs(rows, (0, 1), (0, 1), tmp_path / "sweep", "paper", fold_data=fixed_fold_data())
    assert sum(j.stage == "teacher" for j in per_cell) == 12


def test_bad_sweep_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown row"):
        demo_jobs(tmp_path, rows=["erm", "nope"])
    with pytest.raises(ValueError, match="ours_rule must be one of"):
        demo_jobs(tmp_path, rows=["ours_db"], ours_rule="size")
    with pytest.raises(ConfigError, match="data.fold"):
        demo_jobs(tmp_path, rows=["erm"], folds=(1,))  # the demo is one hold-out split
    with pytest.raises(ConfigError, match="unknown config key"):
        demo_jobs(tmp_path, rows=["erm"], sets=("schedule.epoch=3",))


def test_topological_order_sorts_and_rejects_bad_graphs():
    a, b, c = (Job(i, "table3/erm.py", "demo", i, (), deps) for i, deps in (("a", ()), ("b", ("a",)), ("c", ("b",))))
    assert [j.id for j in topological_order([c, b, a])] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="not in the job list"):
        topological_order([b, c])
    loop = [Job("x", "c", None, "x", (), ("y",)), Job("y", "c", None, "y", (), ("x",))]
    with pytest.raises(ValueError, match="cycle"):
        topological_order(loop)
    with pytest.raises(ValueError, match="duplicate"):
        topological_order([a, a])


# ------------------------------------------------------------------------------------ running

def _write_result(out_dir, name, stage="baseline", fold=0, seed=0, ap=(0.5, 0.5), counts=(150, 10), seconds=1.0):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "stage": stage, "fold": fold, "seed": seed, "class_names": [f"c{i}" for i in range(len(ap))],
           "train_class_counts": list(counts), "thresholds": [100, 20],
           "test": {"ap": list(ap), "map": {}}, "val": {"ap": list(ap), "map": {}}, "epochs": 1, "seconds": seconds}
    (out_dir / "result.json").write_text(json.dumps(doc))


def _fake_train_main(calls, fail=()):
    def fake(argv):
        from recipes.train import get_args_parser

        args = get_args_parser().parse_args(argv)
        calls.append(args.out_dir)
        if any(args.out_dir.endswith(f) for f in fail):
            raise RuntimeError("boom")
        cfg = load_config(args.config, args.profile, args.set)
        _write_result(args.out_dir, cfg["method"]["name"], cfg["method"]["stage"])
        return {}
    return fake


def test_finished_runs_are_skipped_and_the_rest_run_in_order(tmp_path, monkeypatch):
    import recipes.train

    jobs = demo_jobs(tmp_path, rows=["erm", "ours_shot"])
    finished = [j for j in jobs if j.row == "erm" or j.id.endswith("subset1")]
    for j in finished:
        _write_result(j.out_dir, "already")
    calls: list[str] = []
    monkeypatch.setattr(recipes.train, "main", _fake_train_main(calls))
    report = run_jobs(jobs, tmp_path / "sweep")
    assert sorted(report.skipped) == sorted(j.id for j in finished)
    expected = [j.out_dir for j in jobs if j not in finished]
    assert calls == expected
    assert report.ok and all(is_finished(j) for j in jobs)
    # a second sweep runs nothing
    calls.clear()
    again = run_jobs(jobs, tmp_path / "sweep")
    assert calls == [] and len(again.skipped) == len(jobs)


def test_a_failed_job_blocks_its_dependents_only(tmp_path, monkeypatch):
    import recipes.train

    jobs = demo_jobs(tmp_path, rows=["ours_shot", "erm"])
    calls: list[str] = []
    monkeypatch.setattr(recipes.train, "main", _fake_train_main(calls, fail=("subset0",)))
    report = run_jobs(jobs, tmp_path / "sweep")
    assert not report.ok
    assert [Path(p).name for p in report.failed] == ["subset0"]
    assert report.blocked == ["fold0/seed0/ours_shot"]
    assert "fold0/seed0/erm" in report.done
    assert not (tmp_path / "sweep/fold0/seed0/ours_shot/result.json").exists()


def test_parallel_slots_respect_dependencies(tmp_path, monkeypatch):
    jobs = demo_jobs(tmp_path, rows=["ours_shot", "oltr", "erm"])
    # each fake job fails unless every dependency's result.json exists when it starts
    script = ("import json, os, sys, time; out, deps = sys.argv[1], sys.argv[2:]; "
              "ok = all(os.path.exists(os.path.join(d, 'result.json')) for d in deps); time.sleep(0.05); "
              "os.makedirs(out, exist_ok=True); ok and open(os.path.join(out, 'result.json'), 'w').write('{}'); "
              "sys.exit(0 if ok else 3)")
    dirs = {j.id: j.out_dir for j in jobs}
    monkeypatch.setattr(table3_local, "job_command",
                        lambda job, **kw: [sys.executable, "-c", script, job.out_dir, *(dirs[d] for d in job.deps)])
    report = run_jobs(jobs, tmp_path / "sweep", jobs_at_once=3, poll_s=0.02)
    assert report.ok, report
    assert sorted(report.done) == sorted(dirs)
    assert (tmp_path / "sweep/logs").is_dir()


def test_print_commands_parse_into_train_py_runs(tmp_path, monkeypatch, capsys):
    from recipes.train import get_args_parser

    monkeypatch.setattr(table3_jobs, "fold_class_data", fixed_fold_data())
    monkeypatch.chdir(tmp_path)
    rc = table3_cli.main(["--profile", "demo", "--print-commands", "--nproc-per-node", "2", "--out", "sw",
                      "--set", "schedule.epochs=1"])
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("# 32 job(s)")
    seen: set[str] = set()
    rows: set[str] = set()
    commands = 0
    last = ""
    for line in lines[1:]:
        if line.startswith("# job "):
            head, _, after = line[len("# job "):].partition("  after: ")
            assert all(d in seen for d in after.split()), line
            last = head.strip()
            seen.add(last)
            continue
        argv = shlex.split(line)
        assert argv[:5] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "recipes.train"]
        args = get_args_parser().parse_args(argv[5:])
        assert args.profile == "demo" and args.set[0] == "schedule.epochs=1"
        cfg = load_config(args.config, args.profile, [*args.set, f"run.out_dir={args.out_dir!r}"])
        assert Path(args.out_dir) == Path("sw") / last  # the command of the job named just above it
        assert cfg["schedule"]["epochs"] == 1
        rows.add(cfg["method"]["name"])
        commands += 1
    assert commands == 32 and set(TABLE3_ROWS) | set(TABLE4_ROWS) <= rows
    assert not Path("sw/sweep.json").exists()  # printing runs nothing and records nothing


def test_print_commands_leave_out_finished_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(table3_jobs, "fold_class_data", fixed_fold_data())
    monkeypatch.chdir(tmp_path)
    _write_result("sw/fold0/seed0/erm", "erm")
    table3_cli.main(["--profile", "demo", "--print-commands", "--out", "sw", "--rows", "erm", "rs"])
    out = capsys.readouterr().out
    assert "1 finished run(s) left out" in out and "sw/fold0/seed0/rs" in out and "seed0/erm " not in out


def test_an_interrupted_run_is_resumed_and_a_fresh_one_is_not(tmp_path):
    from recipes.train import get_args_parser

    jobs = demo_jobs(tmp_path, rows=["erm", "rs"])
    Path(jobs[0].out_dir).mkdir(parents=True)
    (Path(jobs[0].out_dir) / "last.pt").write_bytes(b"")
    assert get_args_parser().parse_args(job_argv(jobs[0])).resume is True
    assert get_args_parser().parse_args(job_argv(jobs[1])).resume is False


def test_manifest_refuses_another_profile_in_the_same_folder(tmp_path):
    table3_cli.check_manifest(tmp_path, "demo", ["schedule.epochs=2"])
    table3_cli.check_manifest(tmp_path, "demo", ["schedule.epochs=2"])  # same: fine
    with pytest.raises(SweepError, match="profile 'demo'.*expected profile 'cpu_long'"):
        table3_cli.check_manifest(tmp_path, "cpu_long", ["schedule.epochs=2"])
    with pytest.raises(SweepError, match="choose another --out"):
        table3_cli.check_manifest(tmp_path, "demo", [])


# ------------------------------------------------------------------------------------ collecting

# Fixture results, classes c0 (150 training positives: head), c1 (50: medium), c2 (10: tail); thresholds (100, 20).
# erm, fold 0: AP (0.9, 0.5, 0.1)  -> head 90, medium 50, tail 10,  total (0.9+0.5+0.1)/3 = 50
# erm, fold 1: AP (0.7, 0.3, None) -> head 70, medium 30, tail n/a, total (0.7+0.3)/2 = 50
#   head   mean 80, sample std sqrt(((90-80)^2 + (70-80)^2) / (2-1)) = sqrt(200) = 14.1421
#   medium mean 40, std sqrt(200) = 14.1421;  tail: one value, 10 (no std);  total 50 +- 0
# ours_feature, fold 0: AP (0.8, 0.6, 0.4) -> 80, 60, 40, total 60; fold 1: (0.8, 0.4, 0.4) -> 80, 40, 40, 53.3333
#   total mean (60 + 53.3333) / 2 = 56.6667, std |60 - 53.3333| / sqrt(2) = 4.7140
COUNTS3 = (150, 50, 10)
FIXTURE = {
    "erm": {0: (0.9, 0.5, 0.1), 1: (0.7, 0.3, None)},
    "ours_feature": {0: (0.8, 0.6, 0.4), 1: (0.8, 0.4, 0.4)},
}


def _write_fixture(out):
    for row, per_fold in FIXTURE.items():
        for fold, ap in per_fold.items():
            stage = "student" if row.startswith("ours") else "baseline"
            _write_result(Path(out) / f"fold{fold}/seed0" / row, row, stage, fold, 0, ap, COUNTS3,
                          seconds=10.0 + fold)


def test_collector_builds_table3_from_fixture_results(tmp_path):
    out = tmp_path / "sweep"
    _write_fixture(out)
    rows = collect_table(3, TABLE3_ROWS, out, folds=(0, 1), seeds=(0,))
    by = {r.row: r for r in rows}
    assert [r.row for r in rows] == list(TABLE3_ROWS)
    assert by["erm"].runs == 2 and by["rs"].runs == 0
    assert by["erm"].mean["head"] == pytest.approx(80.0) and by["erm"].std["head"] == pytest.approx(math.sqrt(200))
    assert by["erm"].mean["medium"] == pytest.approx(40.0)
    assert by["erm"].std["medium"] == pytest.approx(math.sqrt(200))
    assert by["erm"].mean["tail"] == pytest.approx(10.0) and math.isnan(by["erm"].std["tail"])
    assert by["erm"].mean["total"] == pytest.approx(50.0) and by["erm"].std["total"] == pytest.approx(0.0)
    assert by["ours_feature"].mean["total"] == pytest.approx(170 / 3)
    assert by["ours_feature"].std["total"] == pytest.approx((60 - 160 / 3) / math.sqrt(2))
    assert by["erm"].seconds == pytest.approx(10.5)

    md = write_table(3, rows, out, title="fixture")
    lines = md.splitlines()
    assert lines[0] == "### Table 3: fixture"
    assert lines[4] == "| ERM | 80.00 ± 14.14 | 40.00 ± 14.14 | 10.00 | 50.00 ± 0.00 | 2 |"
    assert lines[5] == "| RS | n/a | n/a | n/a | n/a | 0 |"
    ours = lines[4 + TABLE3_ROWS.index("ours_feature")]
    assert ours.startswith("| Ours (feature-based) | 80.00 ± 0.00 | 50.00 ± 14.14 |")
    assert (out / "table3.md").read_text() == md
    with open(out / "table3.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["row"] for r in table] == list(TABLE3_ROWS)
    assert float(table[0]["head_mean"]) == pytest.approx(80.0)
    assert float(table[0]["head_std"]) == pytest.approx(14.1421)
    assert table[0]["tail_std"] == "" and table[1]["runs"] == "0" and table[1]["total_mean"] == ""


def test_collector_builds_table4_with_weighted_from_ours_feature(tmp_path):
    out = tmp_path / "sweep"
    _write_fixture(out)
    rows = collect_table(4, TABLE4_ROWS, out, folds=(0, 1), seeds=(0,))
    md = write_table(4, rows, out)
    assert [r.label for r in rows] == ["ERM", "KD (T = 3)", "KD (T = 10)", "KD (T = 20)", "Weighted"]
    assert "| Weighted | 80.00 ± 0.00 | 50.00 ± 14.14 | 40.00 ± 0.00 | 56.67 ± 4.71 | 2 |" in md
    assert (out / "table4.csv").is_file()


def test_collector_uses_the_thresholds_of_each_result(tmp_path):
    out = tmp_path / "sweep"
    _write_result(out / "fold0/seed0/erm", "erm", ap=(0.9, 0.5, 0.1), counts=COUNTS3)
    doc = json.loads((out / "fold0/seed0/erm/result.json").read_text())
    doc["thresholds"] = [40, 20]  # now c1 (50) is head: head (0.9 + 0.5) / 2 = 70, medium empty
    (out / "fold0/seed0/erm/result.json").write_text(json.dumps(doc))
    (r,) = collect_table(3, ["erm"], out, (0,), (0,))
    assert r.mean["head"] == pytest.approx(70.0) and math.isnan(r.mean["medium"])
    assert r.mean["tail"] == pytest.approx(10.0)


def test_collector_refuses_a_result_of_another_row(tmp_path):
    out = tmp_path / "sweep"
    _write_result(out / "fold0/seed0/rs", "erm")
    with pytest.raises(SweepError, match="expected the result of row 'rs'"):
        collect_table(3, ["rs"], out, (0,), (0,))
    (out / "fold0/seed0/rs/result.json").write_text("{not json")
    with pytest.raises(SweepError, match="invalid JSON"):
        collect_table(3, ["rs"], out, (0,), (0,))


def test_fig5_is_the_best_ours_minus_erm_sorted_by_count(tmp_path):
    out = tmp_path / "sweep"
    _write_fixture(out)
    # a second "Ours" row with a lower total: the figure must pick ours_feature
    _write_result(out / "fold0/seed0/ours_shot", "ours_shot", "student", 0, 0, (0.1, 0.1, 0.1), COUNTS3)
    rows = collect_table(3, TABLE3_ROWS, out, (0, 1), (0,))
    path = table3_figures.figure_ap_change(rows, out)
    assert path is not None and path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "figures/fig5_ap_change.csv", newline="") as fh:
        got = list(csv.DictReader(fh))
    # per class: mean over folds of ours_feature minus mean of erm (NaN-aware), in points
    # c0: 80 - 80 = 0; c1: 50 - 40 = 10; c2: 40 - 10 = 30 (erm's fold-1 AP of c2 is undefined)
    assert [g["class"] for g in got] == ["c0", "c1", "c2"]
    assert [float(g["delta_points"]) for g in got] == pytest.approx([0.0, 10.0, 30.0])
    assert [g["group"] for g in got] == ["head", "medium", "tail"]


def test_collect_only_cli_writes_tables_without_data(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_fixture("runs/table3/demo")
    rc = table3_cli.main(["--profile", "demo", "--collect-only", "--folds", "0"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| ERM | 90.00 | 50.00 | 10.00 | 50.00 | 1 |" in text  # fold 0 only
    assert Path("runs/table3/demo/table3.md").is_file() and Path("runs/table3/demo/table4.md").is_file()
    assert Path("runs/table3/demo/figures/fig5_ap_change.png").is_file()


# ------------------------------------------------------------------------------------ progress

def test_time_left_is_estimated_per_kind_from_the_finished_runs():
    from recipes.table3.local import estimate_seconds_left

    durations = {"erm": [100.0, 140.0], "teacher": [30.0]}  # erm's mean 120; every run's mean 90
    assert estimate_seconds_left(["erm", "teacher", "teacher"], durations) == pytest.approx(120 + 30 + 30)
    # a kind not finished yet: the mean over every finished run (270 / 3 = 90)
    assert estimate_seconds_left(["ours_shot", "erm"], durations) == pytest.approx(90 + 120)
    # 2 slots share the work, but the longest job alone takes its time
    assert estimate_seconds_left(["erm", "erm", "teacher", "teacher"], durations, slots=2) == pytest.approx(150)
    assert estimate_seconds_left(["erm"], durations, slots=4) == pytest.approx(120)
    assert estimate_seconds_left([], durations) == 0.0
    assert estimate_seconds_left(["erm"], {}) is None and estimate_seconds_left(["erm"], {"erm": []}) is None


def test_progress_note_says_time_left_and_end():
    import time as _time

    from recipes.table3.local import progress_note

    now = _time.mktime((2026, 3, 2, 19, 11, 0, 0, 0, -1))  # local 19:11
    assert progress_note(312.4, None, now) == "[312s elapsed]"
    assert progress_note(312.4, 41 * 60, now) == "[312s elapsed, ~41 min left, ends ~19:52]"
    assert progress_note(5, 40, now) == "[5s elapsed, ~40 s left, ends ~19:11]"
    assert progress_note(5, 6 * 3600, now) == "[5s elapsed, ~6.0 h left, ends ~Tue 01:11]"  # tomorrow


def test_the_progress_line_estimates_from_the_runs_of_this_sweep(tmp_path, monkeypatch, capsys):
    import recipes.train

    jobs = demo_jobs(tmp_path, rows=["erm", "rs"])
    monkeypatch.setattr(recipes.train, "main", _fake_train_main([]))
    run_jobs(jobs, tmp_path / "sweep")
    lines = [s for s in capsys.readouterr().out.splitlines() if s.startswith("[sweep] (")]
    assert len(lines) == 2
    assert lines[0].startswith("[sweep] (1/2) fold0/seed0/erm  [") and lines[0].endswith("s elapsed]")
    # rs is not finished yet: the mean of every finished run (erm's) estimates it
    assert lines[1].startswith("[sweep] (2/2) fold0/seed0/rs  [") and " left, ends ~" in lines[1], lines[1]
