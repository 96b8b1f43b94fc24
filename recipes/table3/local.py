"""Running the sweep's jobs on this machine, in dependency order, with a progress line per job.

A finished run (``result.json``) is skipped, so a stopped sweep resumes where it stopped. Three modes:
one after another in this process (the default on CPU: no interpreter start-up per run), each in a
child process (``--subprocess``), or ``--jobs N`` child processes at once / ``--gpus 0 1 ...``: one
child per GPU (``CUDA_VISIBLE_DEVICES``), a job starting as soon as its dependencies are done and a
slot is free. A failed job is reported, the jobs that depend on it are not started, the others go on.

The progress line of a job estimates the time left from the runs this sweep finished so far
(:func:`estimate_seconds_left`): ``[sweep] (5/30) fold0/seed0/ours_shot  [312s elapsed, ~41 min left,
ends ~19:52]``.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.table3.jobs import REPO_ROOT, Job, is_finished, job_argv, job_command, job_kind, topological_order

__all__ = ["RunReport", "unfinished_jobs", "run_jobs", "child_env", "estimate_seconds_left", "progress_note"]


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


# ------------------------------------------------------------------------------------ progress

def estimate_seconds_left(kinds_left: Sequence[str], durations: Mapping[str, Sequence[float]],
                          slots: int = 1) -> float | None:
    """Seconds until the jobs of ``kinds_left`` are done, from the durations of the finished ones.

    A job takes the mean duration of the finished runs of its kind (:func:`recipes.table3.jobs.job_kind`:
    its row, or ``teacher``), or, for a kind not finished yet, the mean over every finished run.
    ``slots`` jobs run at once: the sum is divided among them, but is never less than the longest
    single job. ``None`` while no run has finished (nothing to estimate from).
    """
    every = [float(d) for ds in durations.values() for d in ds]
    if not every:
        return None
    overall = sum(every) / len(every)
    means = {k: sum(ds) / len(ds) for k, ds in durations.items() if ds}
    each = [means.get(k, overall) for k in kinds_left]
    if not each:
        return 0.0
    return max(sum(each) / max(1, slots), max(each))


def _span(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def progress_note(elapsed_s: float, left_s: float | None, now: float) -> str:
    """``[312s elapsed, ~41 min left, ends ~19:52]`` (local time of ``now + left_s``; the weekday
    too when that is not today); ``[312s elapsed]`` without an estimate."""
    if left_s is None:
        return f"[{elapsed_s:.0f}s elapsed]"
    end = time.localtime(now + left_s)
    fmt = "%H:%M" if time.strftime("%Y%m%d", end) == time.strftime("%Y%m%d", time.localtime(now)) else "%a %H:%M"
    return f"[{elapsed_s:.0f}s elapsed, ~{_span(left_s)} left, ends ~{time.strftime(fmt, end)}]"


# ------------------------------------------------------------------------------------ running

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
    (``done`` / ``failed`` / ``blocked``), the report, the start time, and the seconds each finished
    run took, by kind (:func:`recipes.table3.jobs.job_kind`), for the estimate of the time left."""

    out: Path
    report: RunReport
    status: dict[str, str]
    t_start: float
    slots: int = 1
    durations: dict[str, list[float]] = field(default_factory=dict)

    def blocked(self, j: Job) -> bool:
        """Whether a dependency of ``j`` failed or was itself not started."""
        return any(self.status.get(d) in ("failed", "blocked") for d in j.deps)

    def mark_blocked(self, j: Job) -> None:
        self.status[j.id] = "blocked"
        self.report.blocked.append(j.id)

    def record(self, j: Job, ok: bool, seconds: float) -> None:
        self.status[j.id] = "done" if ok else "failed"
        (self.report.done if ok else self.report.failed).append(j.id)
        if ok:  # a failed run stopped early: its time says nothing of a whole run's
            self.durations.setdefault(job_kind(j), []).append(seconds)

    def progress(self, left: Sequence[Job]) -> str:
        """The progress note of a line, estimating the time of the jobs ``left`` (not finished yet)."""
        now = time.time()
        estimate = estimate_seconds_left([job_kind(j) for j in left], self.durations, self.slots)
        return progress_note(now - self.t_start, estimate, now)


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
        left = [k for k in todo[n - 1:] if k.id not in state.status]
        print(f"[sweep] ({n}/{len(todo)}) {j.id}  {state.progress(left)}", flush=True)
        t0 = time.time()
        if in_process:
            ok = _run_in_process(j)
        else:
            ok = subprocess.run(job_command(j), env=child_env()).returncode == 0 and is_finished(j)
        state.record(j, ok, time.time() - t0)


@dataclass
class _Child:
    """A job running as a child process of a parallel sweep: in ``slot``, writing to ``log`` since ``t0``."""

    job: Job
    proc: subprocess.Popen
    slot: int
    log: Any
    t0: float


def _start_in_slot(j: Job, slot: int, slots: Sequence[str | None], state: _SweepState, left: Sequence[Job]) -> _Child:
    """Start ``j`` as a child process in ``slot`` (on its GPU when the slot is one), writing to its log;
    ``left``: the jobs not finished yet, for the progress line."""
    env = child_env() if slots[slot] is None else child_env(CUDA_VISIBLE_DEVICES=str(slots[slot]))
    log = _log_path(state.out, j)
    log.parent.mkdir(parents=True, exist_ok=True)
    fh = open(log, "w")  # a stream, read while it grows: not an atomic artefact
    where = f"GPU {slots[slot]}" if slots[slot] is not None else f"slot {slot}"
    print(f"[sweep] start {j.id} on {where} (log {log})  {state.progress(left)}", flush=True)
    proc = subprocess.Popen(job_command(j), stdout=fh, stderr=subprocess.STDOUT, env=env)
    return _Child(j, proc, slot, fh, time.time())


def _start_ready(pending: list[Job], free: list[int], slots: Sequence[str | None], running: dict[str, _Child],
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
            left = [*pending, *(c.job for c in running.values())]
            running[j.id] = _start_in_slot(j, free.pop(0), slots, state, left)
            pending.remove(j)


def _poll_finished(pending: Sequence[Job], free: list[int], running: dict[str, _Child], state: _SweepState) -> None:
    """Record the running jobs that have exited, freeing their slots."""
    for jid, child in list(running.items()):
        if child.proc.poll() is None:
            continue
        child.log.close()
        del running[jid]
        free.append(child.slot)
        ok = child.proc.returncode == 0 and is_finished(child.job)
        state.record(child.job, ok, time.time() - child.t0)
        left = [*pending, *(c.job for c in running.values())]
        print(f"[sweep] {'done' if ok else 'FAILED'} {jid} (exit {child.proc.returncode})  {state.progress(left)}",
              flush=True)


def _run_parallel(todo: Sequence[Job], state: _SweepState, slots: Sequence[str | None], poll_s: float) -> None:
    """Run the jobs as child processes, one per slot (a GPU, or ``None``), each as soon as its
    dependencies are done and a slot is free; poll every ``poll_s`` seconds while none has exited."""
    free = list(range(len(slots)))
    running: dict[str, _Child] = {}
    pending = list(todo)
    while pending or running:
        _start_ready(pending, free, slots, running, state)
        _poll_finished(pending, free, running, state)
        if running and not any(c.proc.poll() is not None for c in running.values()):
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
    print(f"[sweep] {len(order)} job(s): {len(report.skipped)} finished, {len(todo)} to run", flush=True)
    parallel = bool(gpus) or jobs_at_once > 1
    slots: list[str | None] = list(gpus) if gpus else [None] * jobs_at_once
    state = _SweepState(Path(out), report, status, time.time(), slots=len(slots) if parallel else 1)
    if not parallel:
        _run_sequential(todo, state, in_process)
    else:
        _run_parallel(todo, state, slots, poll_s)
    return report
