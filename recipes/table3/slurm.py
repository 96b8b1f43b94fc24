"""The Table 3 job graph through submitit: submitted to SLURM, or run by submitit's local executor.

    python -m recipes.table3 --profile paper --launcher slurm --slurm-partition gpu --slurm-time 720
    python -m recipes.table3 --profile demo --launcher local      # the same graph on this machine

``--launcher slurm`` submits every unfinished job of :func:`recipes.table3.jobs.build_jobs` with
``sbatch`` (through submitit), in dependency order; a job's dependencies become
``--dependency=afterok:<id>:...`` on the SLURM ids of the jobs it needs that are not finished yet
(queued or running from an earlier submission, or submitted just now); a finished one
(``result.json``) adds none. ``kill-on-invalid-dep=yes``: a job whose dependency failed is cancelled
instead of waiting forever. The SLURM ids are written, after each submission, to
``<out>/slurm_jobs.json``; a later submission of the same sweep asks ``sacct`` for their state and
submits again only the jobs that neither finished nor are pending / running, so nothing is submitted
twice. Logs and submitit's files (``<id>_submission.sh``, the pickled task) are under
``<out>/slurm/<id>/``.

Each job runs ``recipes.train.main`` once per task, ``--slurm-gpus-per-node`` tasks per node (one
per GPU) on ``--slurm-nodes`` nodes, with torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) exported from submitit's
job environment, so ``train.py`` runs as under torchrun. The task is ``Checkpointable``: when SLURM
preempts the job or its time limit comes, submitit requeues it (the same SLURM id, so the dependents
still wait on it), and the requeued task builds its arguments again: the run folder's ``last.pt``
adds ``--resume`` (:func:`recipes.table3.jobs.job_argv`) and training continues from its last epoch.

``--launcher local``: submitit's ``LocalExecutor`` runs each job in a child process on this machine
(``--jobs N`` at once), a job started once its dependencies finished; a failed job blocks its
dependents only, as in :func:`recipes.table3.local.run_jobs`. It needs no cluster: the stand-in for
tests and for trying the launcher out.

What the user can fix (no SLURM on this machine, ``sbatch`` refusing a job, ``sacct`` failing, a
damaged ``slurm_jobs.json``) is a :class:`~recipes.table3.rows.SweepError` with a one-line message
saying what failed and what to do: ``python -m recipes.table3`` prints it as one ``error:`` line,
exit status 2.

Conventions (no code copied): submitit's documentation (github.com/facebookincubator/submitit,
docs/ "checkpointing", "examples": ``AutoExecutor``, ``slurm_*`` parameters, ``Checkpointable``,
``helpers.TorchDistributedEnvironment``) and the launchers DeiT, DINO and ConvNeXt ship
(``run_with_submitit.py``: one task per GPU, ``timeout_min`` / ``slurm_partition`` /
``slurm_additional_parameters``, requeue on preemption with the run's checkpoint).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recipes.config import ConfigError
from recipes.table3.jobs import REPO_ROOT, Job, is_finished, job_argv, topological_order
from recipes.table3.local import RunReport, unfinished_jobs
from recipes.table3.rows import SweepError
from rskd_loss.fileio import atomic_write_text

__all__ = ["ACTIVE_STATES", "JOBS_FILE", "SlurmOptions", "SubmitReport", "TrainTask", "add_arguments",
           "options_from_args", "slurm_states", "submit_slurm", "run_local", "launch", "read_records"]

JOBS_FILE = "slurm_jobs.json"
TORCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
#: sacct states of a job that is still to run or running: it is not submitted again (a requeued or
#: preempted job keeps its id, and runs again with --resume)
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                           "SUSPENDED", "CONFIGURING", "COMPLETING", "PREEMPTED", "STAGE_OUT", "SIGNALING"})


def _submitit() -> Any:
    try:
        import submitit
    except ImportError as exc:  # an optional extra
        raise ConfigError("--launcher needs submitit: pip install 'rskd_loss[slurm]' "
                          "(or pip install submitit)") from exc
    return submitit


# ------------------------------------------------------------------------------------ options

@dataclass(frozen=True)
class SlurmOptions:
    """What each submitted job asks SLURM for (sbatch parameters)."""

    partition: str | None = None
    gpus_per_node: int = 1
    nodes: int = 1
    time_min: int = 24 * 60
    account: str | None = None
    constraint: str | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    extra: Mapping[str, str] = field(default_factory=dict)  # --slurm-param KEY=VALUE: #SBATCH --KEY=VALUE
    setup: tuple[str, ...] = ()                              # shell lines before srun
    max_num_timeout: int = 10                                # requeues after the time limit


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``--launcher`` and the ``--slurm-*`` options, added to ``recipes/table3/``'s parser."""
    p.add_argument("--launcher", choices=("slurm", "local"), default=None,
                   help="submit the jobs through submitit (recipes/table3/slurm.py): 'slurm' to a SLURM cluster with "
                        "afterok dependencies, 'local' with submitit's local executor on this machine")
    g = p.add_argument_group("--launcher slurm (sbatch parameters of every job)")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-gpus-per-node", type=int, default=1, help="GPUs (= tasks, one per GPU) per node; default 1")
    g.add_argument("--slurm-nodes", type=int, default=1, help="nodes per job (default 1)")
    g.add_argument("--slurm-time", type=int, default=24 * 60,
                   help="time limit per job in minutes (default 1440); a job that reaches it is requeued and resumes")
    g.add_argument("--slurm-account", default=None)
    g.add_argument("--slurm-constraint", default=None)
    g.add_argument("--slurm-cpus-per-task", type=int, default=None)
    g.add_argument("--slurm-mem-gb", type=float, default=None)
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other sbatch parameter, repeatable, e.g. --slurm-param qos=high")
    g.add_argument("--slurm-setup", action="append", default=[], metavar="LINE",
                   help="a shell line run before the job, repeatable, e.g. 'module load cuda'")


def options_from_args(a: argparse.Namespace) -> SlurmOptions:
    extra = {}
    for item in a.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--slurm-param must be KEY=VALUE (e.g. qos=high), got {item!r}")
        extra[key.strip().lstrip("-")] = value
    if a.slurm_gpus_per_node < 0 or a.slurm_nodes < 1 or a.slurm_time < 1:
        raise ConfigError(f"expected --slurm-gpus-per-node >= 0, --slurm-nodes >= 1 and --slurm-time >= 1, "
                         f"got {a.slurm_gpus_per_node}, {a.slurm_nodes} and {a.slurm_time}")
    return SlurmOptions(partition=a.slurm_partition, gpus_per_node=a.slurm_gpus_per_node, nodes=a.slurm_nodes,
                        time_min=a.slurm_time, account=a.slurm_account, constraint=a.slurm_constraint,
                        cpus_per_task=a.slurm_cpus_per_task, mem_gb=a.slurm_mem_gb, extra=extra,
                        setup=tuple(a.slurm_setup))


# ------------------------------------------------------------------------------------ the task

class _Checkpointable:  # replaced by submitit.helpers.Checkpointable when submitit is installed
    pass


try:
    from submitit.helpers import Checkpointable as _Base
except ImportError:  # the module imports without the extra; launching needs it
    _Base = _Checkpointable


class TrainTask(_Base):  # type: ignore[misc, valid-type]
    """One job of the graph as a submitit task: ``recipes.train.main(job_argv(job))`` under torchrun's variables.

    The arguments are built when the task runs, not when it is submitted: a requeued task finds the
    run folder's ``last.pt`` and resumes. ``checkpoint`` (submitit's requeue hook) resubmits the same
    task: the state to continue from is in the run folder.
    """

    def __init__(self, job: Job, cwd: str) -> None:
        # the fields, not the object: a task pickled before a change of the Job class (a job requeued
        # after an update of the checkout) still unpickles
        self.fields = dataclasses.asdict(job)
        self.cwd = cwd  # the launcher's working directory: the job's relative paths are relative to it

    @property
    def job(self) -> Job:
        return Job(**self.fields)

    def argv(self) -> list[str]:
        return job_argv(self.job)

    def __call__(self) -> str:
        os.chdir(self.cwd)
        _default_signals_in_children()
        export_torch_env()
        job = self.job
        result = Path(job.out_dir) / "result.json"
        if is_finished(job):  # e.g. requeued after it had finished
            return str(result)
        from recipes.train import main as train_main

        train_main(self.argv())
        if int(os.environ.get("RANK", "0")) == 0 and not is_finished(job):
            raise RuntimeError(f"{job.id}: train.py returned without writing {result}")
        return str(result)


def export_torch_env() -> dict[str, str]:
    """torchrun's variables from submitit's job environment (one task per GPU), exported; returns them.

    ``CUDA_VISIBLE_DEVICES`` is left as SLURM set it: ``LOCAL_RANK`` picks the task's GPU among the
    node's, as under torchrun (``recipes.distributed.setup_distributed``).
    """
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return {k: os.environ[k] for k in TORCH_ENV}


_FORK_HOOK: list[bool] = []


def _default_signals_in_children() -> None:
    """Processes forked by the task (a ``multiprocessing.Pool`` making the synthetic set or the resize
    cache, DataLoader workers) get the default SIGTERM and ignore submitit's requeue signal.

    submitit's handlers (``SIGTERM``: log and go on; ``SIGUSR2``: checkpoint and requeue) are inherited
    by a fork: ``Pool.terminate`` (SIGTERM) would then never end its workers (the task hangs), and a
    worker would requeue the job on the signal meant for the task.
    """
    if _FORK_HOOK:
        return
    from submitit import JobEnvironment

    usr = JobEnvironment._usr_sig()  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL says another

    def child() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCONT, signal.SIG_DFL)
        signal.signal(usr, signal.SIG_IGN)

    os.register_at_fork(after_in_child=child)
    _FORK_HOOK.append(True)


@contextlib.contextmanager
def _importable() -> Iterator[None]:
    """The checkout on the children's ``PYTHONPATH`` while submitting: they unpickle
    ``recipes.table3.slurm.TrainTask``."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


# ------------------------------------------------------------------------------------ records

def read_records(out: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``{job id: {"slurm_id": ..., "submitted": ...}}`` of the sweep's earlier submissions (empty: none).

    A file that is not what :func:`submit_slurm` writes is a ``SweepError``: without it a submission
    could submit a queued job twice.
    """
    path = Path(out) / JOBS_FILE
    if not path.is_file():
        return {}
    fix = "check the queue (squeue -u $USER) and remove the file to submit anew"
    try:
        doc = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise SweepError(f"{path}: expected JSON, got invalid JSON ({exc}); {fix}") from exc
    jobs = doc.get("jobs") if isinstance(doc, dict) else None
    if not isinstance(jobs, dict):
        raise SweepError(f"{path}: expected an object {{\"jobs\": {{job id: {{\"slurm_id\": ...}}}}}}, got "
                         f"{_short(doc)}; {fix}")
    for jid, record in jobs.items():
        if not isinstance(record, dict) or not str(record.get("slurm_id", "")).strip():
            raise SweepError(f"{path}: expected a SLURM id for job {jid!r} ({{\"slurm_id\": ...}}), got "
                             f"{_short(record)}; {fix}")
    return dict(jobs)


def _short(value: Any, limit: int = 80) -> str:
    """``value`` as JSON on one line, cut at ``limit`` characters (for a message)."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(text: str) -> str:
    """The line of a tool's output that says what went wrong (the first naming an error, else the first),
    with its white space collapsed: a message stays one line."""
    lines = [" ".join(s.split()) for s in text.splitlines() if s.strip()]
    return next((s for s in lines if "error" in s.lower()), lines[0] if lines else "no message")


def _write_records(out: Path, records: Mapping[str, Mapping[str, Any]]) -> None:
    atomic_write_text(out / JOBS_FILE, json.dumps({"jobs": dict(records)}, indent=1, sort_keys=True) + "\n")


def slurm_states(slurm_ids: Sequence[str]) -> dict[str, str]:
    """The sacct state (first word: ``CANCELLED by 0`` -> ``CANCELLED``) of each SLURM job id it knows.

    One ``sacct`` call for all ids. Raises ``SweepError`` when sacct cannot be asked: without the
    states a submission could submit a queued job twice.
    """
    if not slurm_ids:
        return {}
    cmd = ["sacct", "-j", ",".join(slurm_ids), "-X", "-n", "-P", "-o", "JobID,State"]
    try:
        text = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        said = _one_line(getattr(exc, "stderr", None) or str(exc))
        raise SweepError(f"cannot ask SLURM for the state of the sweep's jobs ({' '.join(cmd[:3])} ...: {said}); "
                         "submit again where sacct works, or wait until the accounting database answers") from exc
    states = {}
    for line in text.splitlines():
        jid, _, state = line.strip().partition("|")
        if jid and state:
            states[jid] = state.split()[0]
    return states


# ------------------------------------------------------------------------------------ SLURM

@dataclass
class SubmitReport:
    """What :func:`submit_slurm` did, by job id."""

    submitted: dict[str, str] = field(default_factory=dict)  # job id -> new SLURM id
    queued: dict[str, str] = field(default_factory=dict)     # pending / running from an earlier submission
    skipped: list[str] = field(default_factory=list)         # finished


def _slurm_params(opts: SlurmOptions, name: str, dependency: str | None) -> dict[str, Any]:
    tasks = max(1, opts.gpus_per_node)
    params: dict[str, Any] = dict(
        name=name, timeout_min=opts.time_min, nodes=opts.nodes, tasks_per_node=tasks,
        gpus_per_node=opts.gpus_per_node or None, cpus_per_task=opts.cpus_per_task, mem_gb=opts.mem_gb,
        slurm_partition=opts.partition, slurm_account=opts.account, slurm_constraint=opts.constraint,
        slurm_dependency=dependency,  # None: no dependency (a fresh executor per job, so none is left over)
        slurm_additional_parameters={"kill-on-invalid-dep": "yes", **opts.extra},
        slurm_setup=[f"export PYTHONPATH={REPO_ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", *opts.setup],
    )
    return {k: v for k, v in params.items() if v is not None}


def _require_slurm() -> None:
    """SLURM's ``sbatch`` and ``srun`` on ``PATH``, else a ``SweepError`` saying where to submit from.

    Checked before anything is submitted or recorded (submitit would stop at its first job, with
    ``RuntimeError: Could not detect "srun"``)."""
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise SweepError(f"--launcher slurm needs SLURM's {' and '.join(missing)}, not found on PATH here; "
                         "submit from a node of the SLURM cluster (a login node), or run the sweep on this "
                         "machine without --launcher (or with --launcher local)")


def _submit_one(submitit: Any, j: Job, out: Path, opts: SlurmOptions, dependency: str | None, cwd: str,
                n_before: int) -> str:
    """Submit one job with sbatch (through submitit); its SLURM id.

    sbatch's refusal (a bad partition, account, time limit ...) becomes one ``SweepError`` line quoting
    sbatch's error; submitit's own print of sbatch's stderr is held back (it would come before the
    ``error:`` line).
    """
    said = io.StringIO()
    try:
        ex = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster="slurm",
                                   slurm_max_num_timeout=opts.max_num_timeout)
        ex.update_parameters(**_slurm_params(opts, f"rskd:{j.id}", dependency))
        with _importable(), contextlib.redirect_stderr(said):
            sub = ex.submit(TrainTask(j, cwd))
    except Exception as exc:  # sbatch refused it, or could not be run
        reason = _one_line(f"{said.getvalue()}\n{exc}")
        before = (f"the {n_before} job(s) submitted before it are recorded in {out / JOBS_FILE}" if n_before
                  else "nothing was submitted")
        raise SweepError(f"sbatch did not take {j.id}: {reason}; {before}; fix the --slurm-* options and submit "
                         "the sweep again (what is queued is not submitted twice)") from exc
    sys.stderr.write(said.getvalue())  # sbatch's warnings on a submission it took
    return str(sub.job_id)


def submit_slurm(jobs: Sequence[Job], out: str | os.PathLike[str], opts: SlurmOptions, *,
                 states: Any = None) -> SubmitReport:
    """Submit every unfinished job that is not queued, each ``afterok`` on its unfinished dependencies.

    ``states``: ``[slurm ids] -> {id: sacct state}``, default :func:`slurm_states` (tests pass a fake).
    """
    submitit = _submitit()
    _require_slurm()
    states = slurm_states if states is None else states
    out = Path(out)
    order = topological_order(jobs)
    records = read_records(out)
    known = [str(records[j.id]["slurm_id"]) for j in order if j.id in records and not is_finished(j)]
    state = states(known) if known else {}
    report = SubmitReport()
    slurm_id: dict[str, str] = {}  # job id -> the SLURM id its dependents wait on
    cwd = os.getcwd()
    for j in order:
        if is_finished(j):
            report.skipped.append(j.id)
            continue
        old = str(records[j.id]["slurm_id"]) if j.id in records else None
        if old is not None and state.get(old) in ACTIVE_STATES:
            slurm_id[j.id] = report.queued[j.id] = old
            resubmitted = [d for d in j.deps if d in report.submitted]
            if resubmitted:
                print(f"[slurm] warning: {j.id} (SLURM job {old}) is {state[old]} but waits on the earlier "
                      f"run of {resubmitted}, submitted again now; scancel {old} and submit the sweep again",
                      file=sys.stderr, flush=True)
            print(f"[slurm] {old} {j.id}: {state[old].lower()}, not submitted again", flush=True)
            continue
        after = [slurm_id[d] for d in j.deps if d in slurm_id]  # the others finished
        dependency = "afterok:" + ":".join(after) if after else None
        new_id = _submit_one(submitit, j, out, opts, dependency, cwd, len(report.submitted))
        slurm_id[j.id] = report.submitted[j.id] = new_id
        records[j.id] = {"slurm_id": new_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_records(out, records)  # after each one: an interrupted submission still knows what it queued
        print(f"[slurm] {new_id} {j.id}" + (f"  after {' '.join(after)}" if after else ""), flush=True)
    print(f"[slurm] {len(report.submitted)} job(s) submitted, {len(report.queued)} already queued or running, "
          f"{len(report.skipped)} finished; ids in {out / JOBS_FILE}, logs in {out / 'slurm'}/<id>/; "
          f"collect with --collect-only when they are done", flush=True)
    return report


# ------------------------------------------------------------------------------------ local

def run_local(jobs: Sequence[Job], out: str | os.PathLike[str], *, jobs_at_once: int = 1, timeout_min: int = 24 * 60,
              poll_s: float = 0.5) -> RunReport:
    """Run the unfinished jobs with submitit's local executor in dependency order; a ``RunReport``."""
    submitit = _submitit()
    out = Path(out)
    order, report, status, pending = unfinished_jobs(jobs)
    print(f"[local] {len(order)} job(s): {len(report.skipped)} finished, {len(pending)} to run "
          f"(submitit local executor, logs in {out / 'submitit_local'}/<pid>/)", flush=True)
    running: dict[str, Any] = {}
    cwd = os.getcwd()
    while pending or running:
        for j in list(pending):
            if any(status.get(d) in ("failed", "blocked") for d in j.deps):
                pending.remove(j)
                status[j.id] = "blocked"
                report.blocked.append(j.id)
                print(f"[local] {j.id}: not started, a dependency failed", flush=True)
            elif len(running) < jobs_at_once and all(status.get(d) == "done" for d in j.deps):
                ex = submitit.AutoExecutor(folder=out / "submitit_local" / "%j", cluster="local")
                ex.update_parameters(name=f"rskd:{j.id}", timeout_min=timeout_min, tasks_per_node=1, gpus_per_node=0)
                with _importable():
                    running[j.id] = ex.submit(TrainTask(j, cwd))
                pending.remove(j)
                print(f"[local] start {j.id} (job {running[j.id].job_id})", flush=True)
        for jid, sub in list(running.items()):
            if not sub.done():
                continue
            del running[jid]
            job = next(j for j in order if j.id == jid)
            exc = sub.exception()
            ok = exc is None and is_finished(job)
            status[jid] = "done" if ok else "failed"
            (report.done if ok else report.failed).append(jid)
            print(f"[local] {'done' if ok else 'FAILED'} {jid}" + ("" if exc is None else f": {exc}"), flush=True)
        if running and not any(s.done() for s in running.values()):
            time.sleep(poll_s)
    return report


def launch(jobs: Sequence[Job], out: str | os.PathLike[str], a: argparse.Namespace) -> RunReport | None:
    """``--launcher`` of ``recipes/table3/``: ``None`` after a SLURM submission, a ``RunReport`` for local."""
    opts = options_from_args(a)
    if a.launcher == "slurm":
        submit_slurm(jobs, out, opts)
        return None
    return run_local(jobs, out, jobs_at_once=a.jobs, timeout_min=opts.time_min)
