"""``python -m recipes.table3 --launcher slurm``: what the user fixes ends as one ``error:`` line, exit status 2.

Each case runs the real entry point in a child process with ``PATH`` holding only the fake SLURM
commands it needs (the interpreter is called by its absolute path): sbatch refusing the job, sacct
failing, a damaged ``slurm_jobs.json``, no SLURM on the machine, no submitit. The sweep is one ERM
run of the demo profile: building its job needs no data (no teachers), so each case takes the
interpreter's start-up only.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ["--launcher", "slurm", "--slurm-partition", "nosuch", "--profile", "demo", "--tables", "3", "--rows", "erm",
          "--seeds", "0"]
OK_SBATCH = 'echo "Submitted batch job 4242"'


def _fakes(bin_dir: Path, **scripts: str) -> Path:
    """``bin_dir`` with one executable shell script per keyword (``sbatch="echo ..."``)."""
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _submit(tmp_path: Path, bin_dir: Path, *, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env["PATH"] = str(bin_dir)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (pythonpath, ROOT) if p is not None)
    return subprocess.run([sys.executable, "-m", "recipes.table3", *SUBMIT, "--out", str(tmp_path / "sw")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


def _assert_one_error_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    err = done.stderr
    assert done.returncode == 2, (done.returncode, err[-2000:])
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in err, err
    return err


def _records(tmp_path: Path, doc) -> None:
    """An earlier submission's ``slurm_jobs.json`` (written as text when ``doc`` is a string)."""
    out = tmp_path / "sw"
    out.mkdir(parents=True, exist_ok=True)
    (out / "slurm_jobs.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))


def test_sbatch_refusing_the_job(tmp_path):
    bin_dir = _fakes(tmp_path / "bin", srun="exit 1",
                     sbatch='echo "sbatch: error: invalid partition specified: nosuch" >&2\n'
                            'echo "sbatch: error: Batch job submission failed: Invalid partition name specified" >&2\n'
                            "exit 1")
    err = _assert_one_error_line(_submit(tmp_path, bin_dir), "sbatch did not take fold0/seed0/erm",
                                 "sbatch: error: invalid partition specified: nosuch", "fix the --slurm-* options")
    assert "nothing was submitted" in err
    assert not (tmp_path / "sw" / "slurm_jobs.json").exists()  # nothing was queued: nothing recorded


def test_sacct_failing(tmp_path):
    _records(tmp_path, {"jobs": {"fold0/seed0/erm": {"slurm_id": "777"}}})  # asks sacct whether 777 still runs
    bin_dir = _fakes(tmp_path / "bin", srun="exit 1", sbatch=OK_SBATCH,
                     sacct='echo "sacct: error: Problem talking to the database: Connection refused" >&2\nexit 1')
    _assert_one_error_line(_submit(tmp_path, bin_dir), "cannot ask SLURM for the state",
                           "sacct: error: Problem talking to the database", "submit again where sacct works")


def test_sacct_missing_while_jobs_are_recorded(tmp_path):
    _records(tmp_path, {"jobs": {"fold0/seed0/erm": {"slurm_id": "777"}}})
    bin_dir = _fakes(tmp_path / "bin", srun="exit 1", sbatch=OK_SBATCH)
    _assert_one_error_line(_submit(tmp_path, bin_dir), "cannot ask SLURM for the state", "sacct")


@pytest.mark.parametrize("doc, expected", [
    ("{not json", "invalid JSON"),
    ([1, 2], 'expected an object {"jobs"'),
    ({"jobs": {"fold0/seed0/erm": {"submitted": "2026-01-01T00:00:00"}}}, "expected a SLURM id for job"),
], ids=["not-json", "a-list", "no-slurm-id"])
def test_damaged_jobs_file(tmp_path, doc, expected):
    _records(tmp_path, doc)
    bin_dir = _fakes(tmp_path / "bin", srun="exit 1", sbatch=OK_SBATCH, sacct="exit 0")
    _assert_one_error_line(_submit(tmp_path, bin_dir), "slurm_jobs.json", expected, "remove the file")


def test_no_slurm_on_this_machine(tmp_path):
    err = _assert_one_error_line(_submit(tmp_path, _fakes(tmp_path / "bin")), "needs SLURM's sbatch and srun, not found on PATH",
                                 "without --launcher")
    assert "Could not detect" not in err
    only_sbatch = _fakes(tmp_path / "bin2", sbatch=OK_SBATCH)  # srun missing: submitit's RuntimeError before
    _assert_one_error_line(_submit(tmp_path, only_sbatch), "needs SLURM's srun, not found")


def test_no_submitit(tmp_path):
    shadow = tmp_path / "shadow" / "submitit"  # a submitit that cannot be imported, first on sys.path
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named submitit')\n")
    bin_dir = _fakes(tmp_path / "bin", srun="exit 1", sbatch=OK_SBATCH)
    _assert_one_error_line(_submit(tmp_path, bin_dir, pythonpath=tmp_path / "shadow"), "--launcher needs submitit",
                           "pip install")
