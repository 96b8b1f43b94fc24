"""recipes/table3/slurm.py: the Table 3 job graph through submitit, without a cluster.

* ``--launcher local`` (submitit's local executor) trains the tiny sweep (ERM, the shot rule's
  teachers and student, OLTR stage 1 -> 2) and gives the results of the in-process sweep;
* ``--launcher slurm`` with fake ``sbatch`` / ``srun`` on ``PATH``: submitit writes its real
  submission files; the test reads their ``#SBATCH`` lines (parameters, ``afterok`` dependencies) and
  the pickled task (the ``train.py`` arguments); the job states (``sacct``) are a fake.
"""
from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("submitit")

from recipes.table3 import cli as table3_cli
from recipes.table3 import jobs as table3_jobs
from recipes.table3 import rows as table3_rows
from recipes.table3 import slurm
from recipes.train import get_args_parser

ROWS = ["erm", "ours_shot", "oltr"]
# the jobs of ROWS on the tiny set: ERM, the shot rule's 2 teachers -> its student, OLTR stage 1 -> 2
JOB_IDS = ["fold0/seed0/erm", "fold0/seed0/teachers_shot/subset0", "fold0/seed0/teachers_shot/subset1",
           "fold0/seed0/ours_shot", "fold0/seed0/oltr_stage1", "fold0/seed0/oltr"]


def _tiny_profile(tmp: Path) -> Path:
    """tests/test_train.py's tiny set: 240 synthetic 32 px images, 8 classes, 1 epoch of 2 steps.

    Training counts 112, 54, 26, 13, 6, 3, 2, 1: shot thresholds (50, 1) give two teachers (head,
    medium; the tail is empty), one job less to start than three.
    """
    profile = tmp / "tiny.py"
    profile.write_text(
        "data = dict(root=%r, synthetic=dict(seed=0, num_images=240, image_size=32, num_classes=8),\n"
        "            scheme='holdout', image_size=32, batch_size=16, eval_batch_size=64, num_workers=0,\n"
        "            preload=True, augment=False)\n"
        "model = dict(name='small_cnn', pretrained=False, width=4)\n"
        "schedule = dict(epochs=1)\n"
        "run = dict(device='cpu', max_steps_per_epoch=2)\n"
        "method = dict(partition=dict(thresholds=(50, 1), prior='synthetic'))\n" % str(tmp / "data"))
    return profile


def _sweep(profile: Path, out: Path, *extra: str) -> int:
    return table3_cli.main(["--profile", str(profile), "--tables", "3", "--rows", *ROWS, "--out", str(out),
                        "--no-figures", *extra])


def _results(out: Path) -> dict[str, dict]:
    return {p.parent.relative_to(out).as_posix(): json.loads(p.read_text()) for p in out.glob("fold0/**/result.json")}


def test_local_executor_gives_the_results_of_the_in_process_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children: one thread, as this process below
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        profile = _tiny_profile(tmp_path)
        assert _sweep(profile, tmp_path / "inproc") == 0
        # 2 at once: each started once its dependencies are done
        assert _sweep(profile, tmp_path / "local", "--launcher", "local", "--jobs", "2") == 0
    finally:
        torch.set_num_threads(n)
    ref, got = _results(tmp_path / "inproc"), _results(tmp_path / "local")
    assert sorted(got) == sorted(ref) == sorted(JOB_IDS)
    for jid in JOB_IDS:
        for split in ("val", "test"):
            a = np.asarray(ref[jid][split]["ap"], dtype=float)
            b = np.asarray(got[jid][split]["ap"], dtype=float)
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=f"{jid} {split}")
    # each job ran as a submitit job (its own log folder); the collected table is the same
    assert len(list((tmp_path / "local/submitit_local").glob("*/*_result.pkl"))) == len(JOB_IDS)
    assert (tmp_path / "local/table3.md").read_text() == (tmp_path / "inproc/table3.md").read_text()
    # a second local sweep finds everything finished and starts nothing
    before = sorted(p.name for p in (tmp_path / "local/submitit_local").iterdir())
    assert _sweep(profile, tmp_path / "local", "--launcher", "local") == 0
    assert sorted(p.name for p in (tmp_path / "local/submitit_local").iterdir()) == before


# ------------------------------------------------------------------------------------ SLURM, faked

@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """``sbatch`` answering "Submitted batch job <n>" (n = 1001, 1002, ...) and logging its calls; an ``srun``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "sbatch_calls"
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f"n=$(($(cat {tmp_path}/sbatch_calls 2>/dev/null | wc -l) + 1001))\n"
        f'echo "$n $1" >> {calls}\n'
        'echo "Submitted batch job $n"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for f in ("sbatch", "srun"):
        (bin_dir / f).chmod((bin_dir / f).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(table3_jobs, "fold_class_data",
                        lambda cfg: (np.asarray([120, 80, 60, 40, 30, 20, 10, 5]), tuple(f"c{i}" for i in range(8))))
    monkeypatch.chdir(tmp_path)

    def n_calls() -> int:
        return len(calls.read_text().splitlines()) if calls.exists() else 0

    return n_calls


def _write_result(folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"name": name, "stage": "baseline", "class_names": ["c0", "c1"], "train_class_counts": [150, 50],
           "thresholds": [100, 20], "test": {"ap": [0.5, 0.5]}, "val": {"ap": [0.5, 0.5]}, "seconds": 1.0}
    (folder / "result.json").write_text(json.dumps(doc))


def _sbatch(out: Path, slurm_id: str) -> dict[str, str]:
    """The ``#SBATCH --key=value`` lines of a submission file, and its command (last non-empty line)."""
    text = (out / "slurm" / slurm_id / f"{slurm_id}_submission.sh").read_text()
    flags = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line[len("#SBATCH --"):].partition("=")
            flags[key] = value
    flags["_command"] = [ln for ln in text.splitlines() if ln.strip()][-1]
    flags["_text"] = text
    return flags


def _task(out: Path, slurm_id: str) -> slurm.TrainTask:
    with open(out / "slurm" / slurm_id / f"{slurm_id}_submitted.pkl", "rb") as fh:
        delayed = pickle.load(fh)
    assert isinstance(delayed.function, slurm.TrainTask)
    return delayed.function


SLURM_ARGS = ["--launcher", "slurm", "--slurm-partition", "gpu", "--slurm-gpus-per-node", "2", "--slurm-nodes", "2",
              "--slurm-time", "90", "--slurm-account", "lab", "--slurm-constraint", "a100", "--slurm-param", "qos=high",
              "--slurm-setup", "module load cuda"]


def _submit(*extra: str) -> int:
    return table3_cli.main(["--profile", "demo", "--tables", "3", "--rows", *ROWS, "--out", "sw", *SLURM_ARGS, *extra])


def test_slurm_submission_files_dependencies_and_command(tmp_path, fake_slurm, monkeypatch, capsys):
    out = Path("sw")
    # subset0 finished: no dependency on it; subset1 queued by an earlier submission (SLURM id 777,
    # PENDING): afterok on 777 and not submitted again; subset2 ran and failed (id 778): submitted again
    table3_cli.check_manifest(out, "demo", [], None)
    _write_result(out / "fold0/seed0/teachers_shot/subset0", "teacher")
    slurm._write_records(out, {"fold0/seed0/teachers_shot/subset1": {"slurm_id": "777"},
                               "fold0/seed0/teachers_shot/subset2": {"slurm_id": "778"}})
    asked: list[list[str]] = []
    fake_states = {"777": "PENDING", "778": "FAILED"}
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: asked.append(list(ids)) or
                        {i: fake_states[i] for i in ids if i in fake_states})
    # an interrupted OLTR stage 1: its task resumes
    (out / "fold0/seed0/oltr_stage1").mkdir(parents=True)
    (out / "fold0/seed0/oltr_stage1/last.pt").write_bytes(b"")

    assert _submit() == 0
    assert sorted(asked[0]) == ["777", "778"]
    printed = capsys.readouterr().out
    assert "5 job(s) submitted, 1 already queued or running, 1 finished" in printed
    records = slurm.read_records(out)
    ids = {jid: r["slurm_id"] for jid, r in records.items()}
    # in dependency order: erm, subset2, ours_shot, oltr_stage1, oltr
    assert [ids[j] for j in ("fold0/seed0/erm", "fold0/seed0/teachers_shot/subset2", "fold0/seed0/ours_shot",
                             "fold0/seed0/oltr_stage1", "fold0/seed0/oltr")] == ["1001", "1002", "1003", "1004", "1005"]
    assert ids["fold0/seed0/teachers_shot/subset1"] == "777"
    assert all(f"{ids[j]} {j}" in printed for j in ids if ids[j] != "777")

    erm, sub2, student, oltr1, oltr2 = (_sbatch(out, str(i)) for i in range(1001, 1006))
    for f in (erm, sub2, student, oltr1, oltr2):
        assert f["partition"] == "gpu" and f["account"] == "lab" and f["constraint"] == "a100"
        assert f["qos"] == "high" and f["kill-on-invalid-dep"] == "yes"
        assert f["nodes"] == "2" and f["gpus-per-node"] == "2" and f["ntasks-per-node"] == "2"  # one task per GPU
        assert f["time"] == "90" and f["signal"].startswith("USR2@")  # submitit's requeue signal before the limit
        assert "module load cuda" in f["_text"] and f"export PYTHONPATH={slurm.REPO_ROOT}" in f["_text"]
        assert f["_command"].startswith("srun ") and "-m submitit.core._submit" in f["_command"]
    assert "dependency" not in erm and "dependency" not in sub2 and "dependency" not in oltr1
    assert student["dependency"] == "afterok:777:1002"  # subset0 finished, subset1 queued, subset2 new
    assert oltr2["dependency"] == "afterok:1004"
    assert erm["job-name"] == "rskd:fold0/seed0/erm"

    # the pickled tasks run train.py on their run folder; OLTR stage 1 with --resume
    for slurm_id, jid in (("1001", "fold0/seed0/erm"), ("1004", "fold0/seed0/oltr_stage1")):
        task = _task(out, slurm_id)
        assert task.job.id == jid and task.cwd == str(tmp_path)
        args = get_args_parser().parse_args(task.argv())
        assert Path(args.out_dir) == out / jid and args.profile == "demo"
        assert args.resume is (jid.endswith("oltr_stage1"))
    assert "method.init_from='sw/fold0/seed0/oltr_stage1'" in _task(out, "1005").argv()


def test_resubmission_submits_nothing_while_jobs_are_queued_or_finished(tmp_path, fake_slurm, monkeypatch, capsys):
    states: dict[str, str] = {}
    monkeypatch.setattr(slurm, "slurm_states", lambda ids: {i: states[i] for i in ids if i in states})
    assert _submit() == 0
    assert fake_slurm() == 7
    first = slurm.read_records("sw")
    # all pending: nothing new
    states.update({r["slurm_id"]: "PENDING" for r in first.values()})
    assert _submit() == 0
    assert fake_slurm() == 7 and slurm.read_records("sw") == first
    assert "0 job(s) submitted, 7 already queued or running, 0 finished" in capsys.readouterr().out
    # ERM and the teachers done, the student running, OLTR stage 1 requeued (preempted), OLTR 2 pending
    for jid in ("fold0/seed0/erm", *(f"fold0/seed0/teachers_shot/subset{k}" for k in range(3))):
        _write_result(Path("sw", jid), jid.split("/")[-1])
        states[first[jid]["slurm_id"]] = "COMPLETED"
    states[first["fold0/seed0/ours_shot"]["slurm_id"]] = "RUNNING"
    states[first["fold0/seed0/oltr_stage1"]["slurm_id"]] = "REQUEUED"
    assert _submit() == 0
    assert fake_slurm() == 7 and slurm.read_records("sw") == first
    assert "0 job(s) submitted, 3 already queued or running, 4 finished" in capsys.readouterr().out
    # --collect-only reads the finished runs and submits nothing
    assert table3_cli.main(["--profile", "demo", "--tables", "3", "--rows", *ROWS, "--out", "sw", "--collect-only",
                        "--no-figures"]) == 0
    assert "| ERM | 50.00 | 50.00 | n/a | 50.00 | 1 |" in capsys.readouterr().out
    assert fake_slurm() == 7
    # a cancelled student is submitted again, its dependencies finished: no dependency
    states[first["fold0/seed0/ours_shot"]["slurm_id"]] = "CANCELLED"
    assert _submit() == 0
    assert fake_slurm() == 8
    new = slurm.read_records("sw")["fold0/seed0/ours_shot"]["slurm_id"]
    assert new == "1008" and "dependency" not in _sbatch(Path("sw"), new)


def test_torch_env_from_the_slurm_job_environment(monkeypatch):
    # rank 3 of 4 tasks, 2 nodes x 2 GPUs: what srun sets for the second task of the second node
    for k, v in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "4", "SLURM_PROCID": "3",
                 "SLURM_LOCALID": "1", "SLURM_NODEID": "1", "SLURM_JOB_NUM_NODES": "2",
                 "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}.items():
        monkeypatch.setenv(k, v)
    for k in (*slurm.TORCH_ENV, "CUDA_VISIBLE_DEVICES"):
        monkeypatch.setenv(k, "")  # recorded, so that teardown removes what export_torch_env sets
        monkeypatch.delenv(k)
    env = slurm.export_torch_env()
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "gpu07"}
    assert 20000 <= int(env["MASTER_PORT"]) <= 60000  # the same on every task: seeded by the job id
    assert "CUDA_VISIBLE_DEVICES" not in os.environ  # LOCAL_RANK picks the GPU, as under torchrun


def test_processes_forked_by_a_task_end_on_sigterm():
    # submitit's SIGTERM handler only logs; a Pool forked under it does not end a busy worker on
    # terminate(), and join() waits for ever (the synthetic set's generation in a job hung so, once).
    # The task gives its children the default SIGTERM. Without it this script does not end.
    script = ("import signal, time, multiprocessing as mp; signal.signal(signal.SIGTERM, lambda *a: None); "
              "from recipes.table3 import slurm; slurm._default_signals_in_children(); "
              "pool = mp.get_context('fork').Pool(1); print(pool.apply(abs, (-1,))); "
              "pool.apply_async(time.sleep, (30,)); time.sleep(0.5); pool.terminate(); pool.join(); print('ended')")
    env = {**os.environ, "PYTHONPATH": str(slurm.REPO_ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0 and done.stdout.split() == ["1", "ended"], done.stderr


def test_sbatch_refusing_a_later_job_keeps_the_earlier_ones_recorded(tmp_path, fake_slurm, capsys):
    sbatch = tmp_path / "bin" / "sbatch"  # takes two jobs, then refuses
    sbatch.write_text(sbatch.read_text().replace(
        'echo "Submitted batch job $n"\n',
        'if [ "$n" -gt 1002 ]; then echo "sbatch: error: QOSMaxSubmitJobPerUserLimit" >&2; exit 1; fi\n'
        'echo "Submitted batch job $n"\n'))
    with pytest.raises(table3_rows.SweepError) as stop:
        _submit()
    message = str(stop.value)
    assert "\n" not in message and "sbatch: error: QOSMaxSubmitJobPerUserLimit" in message
    assert "the 2 job(s) submitted before it are recorded in sw/slurm_jobs.json" in message
    assert sorted(r["slurm_id"] for r in slurm.read_records("sw").values()) == ["1001", "1002"]
    assert "QOSMaxSubmitJobPerUserLimit" not in capsys.readouterr().err  # submitit's print of it held back
