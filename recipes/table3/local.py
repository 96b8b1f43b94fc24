"""Running the sweep's jobs on this machine, in dependency order.

A finished run (``result.json``) is skipped, so a stopped sweep resumes where it stopped. Three modes:
one after another in this process (the default on CPU: no interpreter start-up per run), each in a
child process (``--subprocess``), or ``--jobs N`` child processes at once / ``--gpus 0 1 ...``: one
child per GPU (``CUDA_VISIBLE_DEVICES``), a job starting as soon as its dependencies are done and a
slot is free. A failed job is reported, the jobs that depend on it are not started, the others go on.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.table3.jobs import REPO_ROOT, Job, is_finished, job_argv, job_command, topological_order

__all__ = ["RunReport", "unfinished_jobs", "run_jobs", "child_env"]


@dataclass
class RunReport:
    """What :func:`run_jobs` did, by job id."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)   # finished before this sweep
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)   # a dependency failed

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


def unfinished_jobs(jobs: Sequence[Job]) -> tuple[list[Job], RunReport, dict[str, str], list[Job]]:
    """(jobs in dependency order, a report listing the finished ones as skipped, their status, the rest)."""
    order = topological_order(jobs)
    report = RunReport()
    status = {j.id: "done" for j in order if is_finished(j)}
    report.skipped.extend(status)
    return order, report, status, [j for j in order if j.id not in status]


def _log_path(out: Path, job: Job) -> Path:
    return out / "logs" / (job.id.replace("/", "__") + ".log")


def _run_in_process(job: Job) -> bool:
    """Run ``job`` in this process. A user's error (recipes/cli.py: config, data, prior, model, disk)
    stops the sweep with that error (the other jobs would meet it too; a restart skips finished runs);
    a bug fails this job only, with its traceback."""
    from recipes.cli import user_errors
    from recipes.train import main as train_main

    try:
        train_main(job_argv(job))
    except user_errors():
        print(f"[sweep] {job.id} stopped the sweep:", flush=True)
        raise
    except (KeyboardInterrupt, SystemExit) as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        print(f"[sweep] {job.id} exited with status {exc.code}", file=sys.stderr, flush=True)
        return False
    except Exception:  # a failed run must not stop the jobs that do not depend on it
        traceback.print_exc()
        return False
    return is_finished(job)


@dataclass
class _SweepState:
    """What :func:`run_jobs` and its helpers share: the sweep folder, each job's status
    (``done`` / ``failed`` / ``blocked``), the report and the start time."""

    out: Path
    report: RunReport
    status: dict[str, str]
    t_start: float

    def blocked(self, j: Job) -> bool:
        """Whether a dependency of ``j`` failed or was itself not started."""
        return any(self.status.get(d) in ("failed", "blocked") for d in j.deps)

    def mark_blocked(self, j: Job) -> None:
        self.status[j.id] = "blocked"
        self.report.blocked.append(j.id)

    def record(self, jid: str, ok: bool) -> None:
        self.status[jid] = "done" if ok else "failed"
        (self.report.done if ok else self.report.failed).append(jid)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout on ``PYTHONPATH``, so that a child's
    ``python -m recipes.train`` imports these recipes from any working directory."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


def _run_sequential(todo: Sequence[Job], state: _SweepState, in_process: bool) -> None:
    """Run the jobs one after another, in this process (``in_process``) or each as a child process."""
    for n, j in enumerate(todo, 1):
        if state.blocked(j):
            state.mark_blocked(j)
            print(f"[sweep] ({n}/{len(todo)}) {j.id}: not started, a dependency failed", flush=True)
            continue
        print(f"[sweep] ({n}/{len(todo)}) {j.id}  [{time.time() - state.t_start:.0f}s]", flush=True)
        if in_process:
            ok = _run_in_process(j)
        else:
            ok = subprocess.run(job_command(j), env=child_env()).returncode == 0 and is_finished(j)
        state.record(j.id, ok)


#: the child processes of a parallel sweep, by job id: (process, slot index, open log file)
_Running = dict[str, tuple[subprocess.Popen, int, Any]]


def _start_in_slot(j: Job, slot: int, slots: Sequence[str | None],
                   state: _SweepState) -> tuple[subprocess.Popen, int, Any]:
    """Start ``j`` as a child process in ``slot`` (on its GPU when the slot is one), writing to its log."""
    env = child_env() if slots[slot] is None else child_env(CUDA_VISIBLE_DEVICES=str(slots[slot]))
    log = _log_path(state.out, j)
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "w")  # a stream, read while it grows: not an atomic artefact
    where = f"GPU {slots[slot]}" if slots[slot] is not None else f"slot {slot}"
    print(f"[sweep] start {j.id} on {where} (log {log})  [{time.time() - state.t_start:.0f}s]", flush=True)
    proc = subprocess.Popen(job_command(j), stdout=fh, stderr=subprocess.STDOUT, env=env)
    return proc, slot, fh


def _start_ready(pending: list[Job], free: list[int], slots: Sequence[str | None], running: _Running,
                 state: _SweepState) -> None:
    """Drop the pending jobs whose dependency failed, then start those whose dependencies are done,
    in order, while a slot is free."""
    for j in list(pending):
        if state.blocked(j):
            pending.remove(j)
            state.mark_blocked(j)
            print(f"[sweep] {j.id}: not started, a dependency failed", flush=True)
    for j in list(pending):
        if not free:
            break
        if all(state.status.get(d) == "done" for d in j.deps):
            slot = free.pop(0)
            running[j.id] = _start_in_slot(j, slot, slots, state)
            pending.remove(j)


def _poll_finished(todo: Sequence[Job], free: list[int], running: _Running, state: _SweepState) -> None:
    """Record the running jobs that have exited, freeing their slots."""
    for jid, (proc, slot, fh) in list(running.items()):
        if proc.poll() is None:
            continue
        fh.close()
        del running[jid]
        free.append(slot)
        job = next(j for j in todo if j.id == jid)
        ok = proc.returncode == 0 and is_finished(job)
        state.record(jid, ok)
        print(f"[sweep] {'done' if ok else 'FAILED'} {jid} (exit {proc.returncode})  "
              f"[{time.time() - state.t_start:.0f}s]", flush=True)


def _run_parallel(todo: Sequence[Job], state: _SweepState, slots: Sequence[str | None], poll_s: float) -> None:
    """Run the jobs as child processes, one per slot (a GPU, or ``None``), each as soon as its
    dependencies are done and a slot is free; poll every ``poll_s`` seconds while none has exited."""
    free = list(range(len(slots)))
    running: _Running = {}
    pending = list(todo)
    while pending or running:
        _start_ready(pending, free, slots, running, state)
        _poll_finished(todo, free, running, state)
        if running and not any(p.poll() is not None for p, _, _ in running.values()):
            time.sleep(poll_s)


def run_jobs(
    jobs: Sequence[Job],
    out: str | os.PathLike[str],
    *,
    gpus: Sequence[str] = (),
    jobs_at_once: int = 1,
    in_process: bool = True,
    poll_s: float = 0.5,
) -> RunReport:
    """Run the unfinished jobs in dependency order; see the module doc for the three modes."""
    order, report, status, todo = unfinished_jobs(jobs)
    out = Path(out)
    print(f"[sweep] {len(order)} job(s): {len(report.skipped)} finished, {len(todo)} to run", flush=True)
    state = _SweepState(out, report, status, time.time())
    parallel = bool(gpus) or jobs_at_once > 1
    if not parallel:
        _run_sequential(todo, state, in_process)
    else:
        slots: list[str | None] = list(gpus) if gpus else [None] * jobs_at_once
        _run_parallel(todo, state, slots, poll_s)
    return report

