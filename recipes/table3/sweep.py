"""The Table 3 / Table 4 sweep: every row x fold x seed as jobs, run in dependency order, then collected.

    python -m recipes.table3 --profile demo                      # the CPU demo (all 14 rows, one split)
    python -m recipes.table3 --profile cpu_long --seeds 0 1 2    # the longer CPU setting, 3 seeds
    python -m recipes.table3 --profile paper --gpus 0 1 2 3      # 4-fold CV, one GPU per job
    python -m recipes.table3 --profile rfmid --print-commands    # torchrun commands for a cluster
    python -m recipes.table3 --profile paper --launcher slurm --slurm-partition gpu   # SLURM (recipes/table3/slurm.py)
    python -m recipes.table3 --profile demo --collect-only       # tables + figures from finished runs

**Jobs.** Each selected row (Table 3: ERM, RS, RW, Focal, OLTR, LDAM, DB, Ours shot / region /
feature, Ours + DB / OLTR / LDAM / Focal; Table 4: ERM, KD T = 3 / 10 / 20 without the dynamic
weights, "Weighted" = Ours feature-based) becomes one run of ``recipes/train.py`` per fold and seed,
plus the runs it needs first:

* a student ("Ours ...", "KD ...") needs the k teachers of its rule, one run per subset
  (``method.subset=j``, out dir ``teachers_<rule>/subset<j>``). k is known only once the partition
  is computed, so the sweep computes it the way ``train.py`` does: ``recipes.data.folds.prepare_data``
  for the fold's training class counts (generating the synthetic data set first when it is
  missing), then ``recipes.engine.teacher_sources.make_partition``. The "Ours + X" rows use the teachers of ONE rule,
  ``--ours-rule`` (default ``shot``: the paper finds it best on the data set with the longer tail,
  Disease-48, Sec. 3.3); Table 4's rows use the feature rule (the paper's Table 4 is on it);
* OLTR (and "Ours + OLTR") need OLTR stage 1, whose ``best.pt`` initialises them.

Folder layout under ``--out`` (default ``runs/table3/<profile>``)::

    fold<k>/seed<s>/<row>/                 erm, rs, ..., ours_shot, kd_t3, ... (result.json when done)
    fold<k>/seed<s>/<row>-<rule>/          the "Ours + X" rows (ours_db-shot, ...): the rule is part
                                           of the name, so another --ours-rule never reuses them
    fold<k>/seed<s>/oltr_stage1/
    fold<k>/seed<s>/teachers_<rule>/       partition.json, subset0/ ... subset<k-1>/ (teacher runs)
    table3.md table3.csv table4.md table4.csv figures/ logs/ sweep.json

**Running.** A run whose ``result.json`` exists is finished and skipped, so a stopped sweep resumes
where it stopped; a run that was interrupted (its ``last.pt`` exists, its ``result.json`` does not)
is started with ``--resume`` and continues from its last epoch. One after another in this process
(default on CPU: no interpreter start-up per run), ``--jobs N`` child processes at once, or
``--gpus 0 1 ...``: one child per GPU
(``CUDA_VISIBLE_DEVICES``), a job starting as soon as its dependencies are done and a GPU is free.
A failed job is reported, the jobs that depend on it are not started, the others go on; the exit
status is 1 then. ``sweep.json`` records the profile and ``--set`` overrides of the folder; a later
sweep into the same folder with others is refused (its finished runs would be silently reused).

**Collecting.** For each selected table: test mAP (head / medium / tail / total, in %) as mean +-
sample standard deviation (``ddof=1``; blank with a single run) over the runs of the row (folds x
seeds). Per run, the groups are recomputed with :func:`rskd_loss.metrics.group_map` from the run's
per-class test AP, its ``train_class_counts`` and its ``thresholds`` (the profile's
``method.partition.thresholds`` for a result without them). Written atomically: ``table<N>.md``,
``table<N>.csv``, and under ``figures/``: the per-class AP change of the best "Ours" row (by mean
total mAP) against ERM, classes sorted by training count (``fig5_ap_change.png`` + ``.csv``, the
paper's Fig. 5), and, when the data set's CSV is present, the class distribution (``class_counts.png``,
Fig. 1) and each rule's subset distributions (``subsets_<rule>/subsets.png``, Fig. 4), both drawn by
:func:`recipes.data.describe.describe`.
``--evidence`` (with ``--pair ROW:REF``, repeatable) also writes ``evidence/``: paired differences, pooled-over-folds
mAP with bootstrap intervals and the method's diagnostics (:func:`recipes.table3.evidence.write_evidence`).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recipes.config import CONFIG_DIR, RULES, ConfigError, load_config, resolve_profile
from recipes.engine.run_lock import RunLock
from rskd_loss.errors import RSKDError
from rskd_loss.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "Row", "Job", "ROWS", "TABLE3_ROWS", "TABLE4_ROWS", "TABLES", "GROUPS",
    "run_dir_name", "teachers_dir", "build_jobs", "topological_order", "is_finished",
    "job_argv", "job_command", "run_jobs", "collect_table", "write_table", "collect", "main",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_MODULE = "recipes.train"  # run as a module from REPO_ROOT (the checkout), like every recipe
GROUPS = ("head", "medium", "tail", "total")
OURS = "<ours-rule>"  # placeholder rule of the "Ours + X" rows: the sweep's --ours-rule


@dataclass(frozen=True)
class Row:
    """One table row: its method config and what it needs before it can run.

    ``rule``: ``None`` (no teachers), a rule name (the teachers of that rule), or :data:`OURS`
    (the sweep's ``--ours-rule``). ``oltr_init``: initialised from the OLTR stage-1 run.
    """

    name: str
    label: str
    config: str
    rule: str | None = None
    oltr_init: bool = False


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("erm", "ERM", "table3/erm.py"),
    Row("rs", "RS", "table3/rs.py"),
    Row("rw", "RW", "table3/rw.py"),
    Row("focal", "Focal Loss", "table3/focal.py"),
    Row("oltr", "OLTR", "table3/oltr_stage2.py", oltr_init=True),
    Row("ldam", "LDAM", "table3/ldam.py"),
    Row("db", "DB Loss", "table3/db.py"),
    Row("ours_shot", "Ours (shot-based)", "table3/ours_shot.py", rule="shot"),
    Row("ours_region", "Ours (region-based)", "table3/ours_region.py", rule="region"),
    Row("ours_feature", "Ours (feature-based)", "table3/ours_feature.py", rule="feature"),
    Row("ours_db", "Ours + DB Loss", "table3/ours_db.py", rule=OURS),
    Row("ours_oltr", "Ours + OLTR", "table3/ours_oltr.py", rule=OURS, oltr_init=True),
    Row("ours_ldam", "Ours + LDAM", "table3/ours_ldam.py", rule=OURS),
    Row("ours_focal", "Ours + Focal Loss", "table3/ours_focal.py", rule=OURS),
    Row("kd_t3", "KD (T = 3)", "table4/kd_t3.py", rule="feature"),
    Row("kd_t10", "KD (T = 10)", "table4/kd_t10.py", rule="feature"),
    Row("kd_t20", "KD (T = 20)", "table4/kd_t20.py", rule="feature"),
)}
#: the paper's Table 3 row order
TABLE3_ROWS: tuple[str, ...] = ("erm", "rs", "rw", "focal", "oltr", "ldam", "db", "ours_shot", "ours_region",
                                "ours_feature", "ours_db", "ours_oltr", "ours_ldam", "ours_focal")
#: the paper's Table 4 row order; "Weighted" is Table 3's ours_feature run, reused
TABLE4_ROWS: tuple[str, ...] = ("erm", "kd_t3", "kd_t10", "kd_t20", "ours_feature")
TABLES: dict[int, tuple[str, ...]] = {3: TABLE3_ROWS, 4: TABLE4_ROWS}
TABLE_LABELS: dict[int, dict[str, str]] = {4: {"ours_feature": "Weighted"}}
TEACHER_CONFIG = {rule: f"table3/teacher_{rule}.py" for rule in RULES}
OLTR_STAGE1_CONFIG = "table3/oltr_stage1.py"


class SweepError(RSKDError, RuntimeError):
    """The sweep cannot go on as asked (the message says why and what to do)."""


@dataclass(frozen=True)
class Job:
    """One run of ``recipes/train.py``. ``id`` is also its folder relative to the sweep's ``--out``."""

    id: str
    config: str                  # relative to recipes/configs
    profile: str | None
    out_dir: str
    sets: tuple[str, ...]        # --set overrides, user's first, then the job's own
    deps: tuple[str, ...] = ()
    stage: str = "baseline"      # baseline | teacher | student
    row: str | None = None       # the table row it is (None: a teacher or OLTR stage 1)
    fold: int = 0
    seed: int = 0


# ------------------------------------------------------------------------------------ layout

def run_dir_name(row: str, ours_rule: str = "shot") -> str:
    """Folder name of a row's run: ``erm``, ``ours_shot``, ``ours_db-shot`` (the "Ours + X" rows)."""
    spec = ROWS[row]
    return f"{row}-{ours_rule}" if spec.rule == OURS else row


def _cell(out: str | os.PathLike[str], fold: int, seed: int) -> Path:
    return Path(out) / f"fold{fold}" / f"seed{seed}"


def teachers_dir(out: str | os.PathLike[str], fold: int, seed: int, rule: str) -> Path:
    """Folder of one rule's teachers (``partition.json``, ``subset<j>/``) for a fold and seed."""
    return _cell(out, fold, seed) / f"teachers_{rule}"


def _rel_id(out: str | os.PathLike[str], path: Path) -> str:
    return path.relative_to(Path(out)).as_posix()


def _lit(value: Any) -> str:
    """A ``--set`` value as a Python literal (strings quoted, so a path is never parsed as a number)."""
    return repr(value)


# ------------------------------------------------------------------------------------ planning

FoldData = Callable[[Mapping[str, Any]], tuple[Sequence[int], Sequence[str]]]


def fold_class_data(cfg: Mapping[str, Any]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Training class counts and class names of ``cfg``'s fold, found exactly as ``train.py`` finds them.

    Calls ``recipes.data.folds.prepare_data`` (which generates the synthetic data set or writes the
    merged RFMiD CSV when missing, and makes the split file) in this process, as rank 0 of 1.
    """
    from recipes.data.folds import prepare_data

    data = prepare_data(cfg, 0, 1)
    return np.asarray(data["train_counts"], dtype=np.int64), tuple(data["class_names"])


def count_subsets(cfg: Mapping[str, Any], class_counts: Sequence[int], class_names: Sequence[str]) -> int:
    """How many teachers the partition of ``cfg`` (``method.partition``) gives for these counts."""
    from recipes.engine.teacher_sources import make_partition

    return make_partition(cfg, list(class_counts), list(class_names)).num_subsets


def _config_path(rel: str) -> Path:
    return CONFIG_DIR / rel


@dataclass
class _JobPlan:
    """The job list :func:`build_jobs` grows, one (fold, seed) cell at a time, with what it needs to do so.

    ``listed``: the ids already in ``jobs`` (a dependency or a row is listed once); ``k_cache``: the
    number of teachers per (fold, rule), computed once per fold and rule.
    """

    out: str | os.PathLike[str]
    profile: str | None
    sets: tuple[str, ...]
    ours_rule: str
    fold_data: FoldData
    teacher_seed: int | None
    jobs: list[Job] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)
    k_cache: dict[tuple[int, str], int] = field(default_factory=dict)

    def load(self, rel: str, extra: Sequence[str]) -> dict:
        return load_config(_config_path(rel), self.profile, [*self.sets, *extra])

    def add(self, job: Job) -> None:
        self.listed.add(job.id)
        self.jobs.append(job)

    def need_oltr1(self, fold: int, seed: int) -> str:
        """The id of the cell's OLTR stage-1 job, adding the job when not yet listed."""
        d = _cell(self.out, fold, seed) / "oltr_stage1"
        jid = _rel_id(self.out, d)
        if jid not in self.listed:
            base = (f"data.fold={fold}", f"run.seed={seed}")
            cfg = self.load(OLTR_STAGE1_CONFIG, base)
            self.add(Job(jid, OLTR_STAGE1_CONFIG, self.profile, str(d), (*self.sets, *base), (),
                         cfg["method"]["stage"], None, fold, seed))
        return jid

    def need_teachers(self, fold: int, seed: int, rule: str) -> tuple[Path, tuple[str, ...]]:
        """The teachers' folder and job ids of ``rule`` for the cell, adding the jobs not yet listed
        (in the cell of ``teacher_seed`` when one is set)."""
        tseed = seed if self.teacher_seed is None else self.teacher_seed
        tdir = teachers_dir(self.out, fold, tseed, rule)
        tbase = (f"data.fold={fold}", f"run.seed={tseed}")
        rel = TEACHER_CONFIG[rule]
        if (fold, rule) not in self.k_cache:
            cfg = self.load(rel, tbase)
            counts, names = self.fold_data(cfg)
            self.k_cache[(fold, rule)] = count_subsets(cfg, counts, names)
        ids = []
        for j in range(self.k_cache[(fold, rule)]):
            d = tdir / f"subset{j}"
            jid = _rel_id(self.out, d)
            ids.append(jid)
            if jid not in self.listed:
                extra = (*tbase, f"method.subset={j}")
                self.load(rel, extra)
                self.add(Job(jid, rel, self.profile, str(d), (*self.sets, *extra), (), "teacher", None, fold,
                             tseed))
        return tdir, tuple(ids)

    def add_row(self, fold: int, seed: int, row: str) -> None:
        """Add the row's job for the cell, after its dependencies (OLTR stage 1, a rule's teachers)."""
        spec = ROWS[row]
        deps: list[str] = []
        extra = [f"data.fold={fold}", f"run.seed={seed}"]
        if spec.oltr_init:
            oltr1 = self.need_oltr1(fold, seed)
            deps.append(oltr1)
            extra.append(f"method.init_from={_lit(str(Path(self.out) / oltr1))}")
        if spec.rule is not None:
            rule = self.ours_rule if spec.rule == OURS else spec.rule
            tdir, tids = self.need_teachers(fold, seed, rule)
            deps.extend(tids)
            extra += [f"method.partition.rule={_lit(rule)}", f"method.teachers_dir={_lit(str(tdir))}"]
        d = _cell(self.out, fold, seed) / run_dir_name(row, self.ours_rule)
        jid = _rel_id(self.out, d)
        if jid in self.listed:
            return  # a row listed twice (e.g. erm in Table 3 and Table 4)
        cfg = self.load(spec.config, extra)
        if cfg["method"]["name"] != row:
            raise ConfigError(f"{spec.config}: method.name must be the row name {row!r}, got "
                              f"{cfg['method']['name']!r}")
        self.add(Job(jid, spec.config, self.profile, str(d), (*self.sets, *extra), tuple(deps),
                     cfg["method"]["stage"], row, fold, seed))


def build_jobs(
    rows: Sequence[str],
    folds: Sequence[int],
    seeds: Sequence[int],
    out: str | os.PathLike[str],
    profile: str | None,
    *,
    ours_rule: str = "shot",
    sets: Sequence[str] = (),
    fold_data: FoldData | None = None,
    teacher_seed: int | None = None,
) -> list[Job]:
    """Expand rows x folds x seeds into jobs, each after the jobs it depends on.

    Order: fold, then seed, then the rows in the given order, each preceded by the dependencies not
    yet listed (OLTR stage 1, a rule's teachers). Every config is loaded (and so validated) here, so
    a bad ``--set`` or profile stops the sweep before any training.

    Args:
        fold_data: ``cfg -> (train class counts, class names)`` of the fold in ``cfg``; default
            :func:`fold_class_data` (reads / generates the data set). Tests pass a fixed vector.
        teacher_seed: ``None``: every (fold, seed) cell trains its own teachers. An int: the teachers
            of a fold are trained once, with this seed (in the cell ``fold<k>/seed<teacher_seed>``),
            and the students of every seed distil them, so the seeds vary the students only.
    """
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"unknown row(s) {unknown}; valid rows: {', '.join(ROWS)}")
    if ours_rule not in RULES:
        raise ValueError(f"ours_rule must be one of {RULES}, got {ours_rule!r}")
    plan = _JobPlan(out, profile, tuple(sets), ours_rule, fold_class_data if fold_data is None else fold_data,
                    teacher_seed)
    for fold in folds:
        for seed in seeds:
            for row in rows:
                plan.add_row(fold, seed, row)
    return plan.jobs


def topological_order(jobs: Sequence[Job]) -> list[Job]:
    """The jobs with every job after its dependencies, otherwise in the given order (Kahn, stable).

    Raises ``ValueError`` for a dependency that is not among the jobs, a duplicate id or a cycle.
    """
    by_id: dict[str, Job] = {}
    for j in jobs:
        if j.id in by_id:
            raise ValueError(f"duplicate job id {j.id!r}")
        by_id[j.id] = j
    for j in jobs:
        missing = [d for d in j.deps if d not in by_id]
        if missing:
            raise ValueError(f"job {j.id!r} depends on {missing}, which are not in the job list")
    done: set[str] = set()
    order: list[Job] = []
    pending = list(jobs)
    while pending:
        ready = next((j for j in pending if all(d in done for d in j.deps)), None)
        if ready is None:
            raise ValueError(f"dependency cycle among {[j.id for j in pending][:10]}")
        pending.remove(ready)
        done.add(ready.id)
        order.append(ready)
    return order


def is_finished(job: Job) -> bool:
    """A run is finished when its ``result.json`` exists (``train.py`` writes it last, atomically)."""
    return (Path(job.out_dir) / "result.json").is_file()


# ------------------------------------------------------------------------------------ commands

def _shown(path: Path | str) -> str:
    """A path relative to the working directory when it lies below it, else absolute."""
    p = Path(path).resolve()
    try:
        return p.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(p)


def job_argv(job: Job) -> list[str]:
    """The arguments of ``recipes/train.py`` (``main(argv)``) for this job.

    ``--resume`` is added only when the run folder holds a ``last.pt`` (an interrupted run): without
    one, ``train.py --resume`` would also skip ``method.init_from`` (OLTR stage 2).
    """
    argv = ["--config", _shown(_config_path(job.config))]
    if job.profile is not None:
        argv += ["--profile", job.profile]
    argv += ["--out-dir", job.out_dir]
    if (Path(job.out_dir) / "last.pt").is_file():
        argv.append("--resume")
    if job.sets:
        argv += ["--set", *job.sets]
    return argv


def job_command(job: Job, *, launcher: str = "python", nproc_per_node: int = 1,
                launcher_args: Sequence[str] = ("--standalone",)) -> list[str]:
    """The command line of a job: ``python -m recipes.train ...`` or ``torchrun ... -m recipes.train ...``.

    Run from the checkout's root (the sweep starts its children there).
    """
    if launcher == "python":
        head = [sys.executable, "-m", TRAIN_MODULE]
    elif launcher == "torchrun":
        head = ["torchrun", *launcher_args, f"--nproc_per_node={nproc_per_node}", "-m", TRAIN_MODULE]
    else:
        raise ValueError(f"launcher must be 'python' or 'torchrun', got {launcher!r}")
    return [*head, *job_argv(job)]


def quote_arg(arg: str) -> str:
    """Shell-quote one argument, preferring double quotes around a ``--set`` value holding a quoted string."""
    q = shlex.quote(arg)
    if q != arg and not any(c in arg for c in '"$`\\!\n'):
        return f'"{arg}"'
    return q


def print_commands(jobs: Sequence[Job], *, nproc_per_node: int = 1, launcher_args: Sequence[str] = ("--standalone",),
                   file: Any = None) -> int:
    """Print the torchrun command of every unfinished job, in dependency order; returns how many."""
    file = sys.stdout if file is None else file
    order = topological_order(jobs)
    todo = [j for j in order if not is_finished(j)]
    print(f"# {len(todo)} job(s) in dependency order ({len(order) - len(todo)} finished run(s) left out); "
          f"run each after the jobs named in its 'after:' line", file=file)
    finished = {j.id for j in order if is_finished(j)}
    for j in todo:
        after = [d for d in j.deps if d not in finished]
        print(f"# job {j.id}" + (f"  after: {' '.join(after)}" if after else ""), file=file)
        cmd = job_command(j, launcher="torchrun", nproc_per_node=nproc_per_node, launcher_args=launcher_args)
        print(" ".join(quote_arg(c) for c in cmd), file=file)
    return len(todo)


# ------------------------------------------------------------------------------------ running

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


def unfinished_jobs(jobs: Sequence[Job]) -> tuple[list[Job], RunReport, dict[str, str], list[Job]]:
    """(jobs in dependency order, a report listing the finished ones as skipped, their status, the rest)."""
    order = topological_order(jobs)
    report = RunReport()
    status = {j.id: "done" for j in order if is_finished(j)}
    report.skipped.extend(status)
    return order, report, status, [j for j in order if j.id not in status]


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


# ------------------------------------------------------------------------------------ collecting

def _read_result(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise SweepError(f"{path}: expected a JSON result, got invalid JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    for key in ("name", "test", "train_class_counts"):
        if key not in doc:
            raise SweepError(f"{path}: expected a key {key!r} (train.py's result.json), got keys {sorted(doc)}")
    return doc


def _ap(values: Iterable[float | None]) -> np.ndarray:
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def run_group_map(result: Mapping[str, Any], thresholds: Sequence[float], split: str = "test") -> dict[str, float]:
    """Head / medium / tail / total mAP (fractions) of one result, via :func:`rskd_loss.metrics.group_map`."""
    from rskd_loss.metrics import group_map

    th = result.get("thresholds") or thresholds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without a test positive: left out, by design
        return group_map(_ap(result[split]["ap"]), result["train_class_counts"], tuple(th))


def _mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else float("nan")), int(v.size)


@dataclass
class TableRow:
    """One collected row: mean and std (in %) per group over ``runs`` results."""

    row: str
    label: str
    runs: int
    mean: dict[str, float]
    std: dict[str, float]
    seconds: float
    results: list[dict[str, Any]]


def collect_table(
    table: int,
    rows: Sequence[str],
    out: str | os.PathLike[str],
    folds: Sequence[int],
    seeds: Sequence[int],
    *,
    ours_rule: str = "shot",
    thresholds: Sequence[float] = (100, 20),
) -> list[TableRow]:
    """Read the rows' ``result.json`` files (missing ones are left out) and average them."""
    labels = {r: ROWS[r].label for r in rows} | TABLE_LABELS.get(table, {})
    out_rows: list[TableRow] = []
    for row in rows:
        results = []
        for fold in folds:
            for seed in seeds:
                path = _cell(out, fold, seed) / run_dir_name(row, ours_rule) / "result.json"
                if not path.is_file():
                    continue
                res = _read_result(path)
                if res["name"] != row or res.get("fold", fold) != fold or res.get("seed", seed) != seed:
                    raise SweepError(f"{path}: expected the result of row {row!r}, fold {fold}, seed {seed}; got "
                                     f"name {res['name']!r}, fold {res.get('fold')}, seed {res.get('seed')}")
                results.append(res)
        maps = [run_group_map(r, thresholds) for r in results]
        mean, std = {}, {}
        for g in GROUPS:
            m, s, _ = _mean_std([100.0 * mp[g] for mp in maps])
            mean[g], std[g] = m, s
        secs = [float(r["seconds"]) for r in results if isinstance(r.get("seconds"), (int, float))]
        out_rows.append(TableRow(row, labels.get(row, row), len(results), mean, std,
                                 float(np.mean(secs)) if secs else float("nan"), results))
    return out_rows


def _fmt(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.2f}" if not math.isfinite(std) else f"{mean:.2f} ± {std:.2f}"


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else f"{x:.4f}"


def write_table(table: int, rows: Sequence[TableRow], out: str | os.PathLike[str], *, title: str = "") -> str:
    """Write ``table<N>.md`` and ``table<N>.csv`` into ``out`` (atomically); returns the markdown."""
    out = Path(out)
    md = [f"### Table {table}" + (f": {title}" if title else ""), "",
          "| Method | head | medium | tail | total | runs |", "|---|---|---|---|---|---|"]
    for r in rows:
        cells = [_fmt(r.mean[g], r.std[g]) for g in GROUPS]
        md.append(f"| {r.label} | " + " | ".join(cells) + f" | {r.runs} |")
    text = "\n".join(md) + "\n"
    stats = [f"{g}_{s}" for g in GROUPS for s in ("mean", "std")]
    header = ["table", "row", "label", "runs", *stats, "seconds_mean"]
    buf = io.StringIO(newline="")
    import csv

    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([table, r.row, r.label, r.runs] + [_num(v) for g in GROUPS for v in (r.mean[g], r.std[g])]
                   + [_num(r.seconds)])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"table{table}.md", text)
    atomic_write_text(out / f"table{table}.csv", buf.getvalue())
    return text


def _save_png(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def figure_ap_change(rows: Sequence[TableRow], out: str | os.PathLike[str],
                     thresholds: Sequence[float] = (100, 20)) -> Path | None:
    """Fig. 5: per-class test AP of the best "Ours" row minus ERM's, classes sorted by training count.

    Per class: the mean AP over the row's runs (NaN-aware), minus the same for ERM; the training
    count is the mean over ERM's runs. Writes ``fig5_ap_change.png`` and ``.csv``; ``None`` when ERM
    or every "Ours" row has no result.
    """
    by = {r.row: r for r in rows}
    erm = by.get("erm")
    ours = [r for r in rows if ROWS[r.row].rule is not None and r.row.startswith("ours") and r.runs]
    ours = [r for r in ours if math.isfinite(r.mean["total"])]
    if erm is None or not erm.runs or not ours:
        return None
    best = max(ours, key=lambda r: r.mean["total"])
    names = erm.results[0]["class_names"]
    for r in (*erm.results, *best.results):
        if r["class_names"] != names:
            raise SweepError(f"runs of {best.row!r} and 'erm' disagree on the classes: {r['class_names']} vs {names}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        ap_erm = np.nanmean(np.stack([_ap(r["test"]["ap"]) for r in erm.results]), axis=0)
        ap_best = np.nanmean(np.stack([_ap(r["test"]["ap"]) for r in best.results]), axis=0)
    counts = np.mean(np.stack([np.asarray(r["train_class_counts"], dtype=np.float64) for r in erm.results]), axis=0)
    from rskd_loss.metrics import shot_group_of

    group_of = shot_group_of(counts, tuple(thresholds))  # mean counts over folds, as recipes/table3/evidence.py
    order = np.argsort(-counts, kind="stable")
    delta = 100.0 * (ap_best - ap_erm)

    import csv

    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "train_count", "group", "ap_erm", f"ap_{best.row}", "delta_points"])
    for i in order:
        w.writerow([names[i], f"{counts[i]:g}", group_of[int(i)], _num(ap_erm[i]), _num(ap_best[i]), _num(delta[i])])
    figures = Path(out) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    atomic_write_text(figures / "fig5_ap_change.csv", buf.getvalue())

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    colours = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(names)), 4))
    ax.bar(range(len(order)), np.nan_to_num(delta[order]), color=[colours[group_of[int(i)]] for i in order])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(order)), [f"{names[i]} ({counts[i]:.0f})" for i in order], rotation=90, fontsize=7)
    ax.set_ylabel("test AP change (points)")
    ax.set_title(f"{best.label} minus ERM, classes by training count")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=g) for g, c in colours.items()])
    path = figures / "fig5_ap_change.png"
    _save_png(fig, path)
    plt.close(fig)
    return path


def figure_data(cfg: Mapping[str, Any], out: str | os.PathLike[str], rules: Sequence[str], fold: int, seed: int,
                thresholds: Sequence[float]) -> list[Path]:
    """Fig. 1 (class distribution) and Fig. 4 (each rule's subsets), drawn by ``recipes.data.describe``.

    Only when the data set's CSV exists (never generates data). The partition of a rule is the one
    its teachers wrote (``teachers_<rule>/partition.json`` of ``fold``/``seed``), else it is computed
    with ``recipes.engine.teacher_sources.make_partition`` and written under ``figures/``.
    """
    from recipes.data.describe import describe

    d = cfg["data"]
    csv = Path(d["root"]) / d["csv"]
    if not csv.is_file():
        print(f"[sweep] figures 1 and 4 left out: {csv} not found", flush=True)
        return []
    figures = Path(out) / "figures"
    th = tuple(int(t) for t in thresholds)
    describe(csv, figures, thresholds=th, verbose=False)
    written = [figures / "class_counts.png"]
    for rule in rules:
        pfile = teachers_dir(out, fold, seed, rule) / "partition.json"
        if not pfile.is_file():
            from recipes.engine.teacher_sources import make_partition

            part = {**cfg["method"]["partition"], "rule": rule}
            rcfg = {**cfg, "data": {**cfg["data"], "fold": fold}, "method": {**cfg["method"], "partition": part}}
            counts, names = fold_class_data(rcfg)
            pfile = figures / f"partition_{rule}.json"
            make_partition(rcfg, counts, names).to_json(pfile)
        describe(csv, figures / f"subsets_{rule}", partition=pfile, thresholds=th, verbose=False)
        written.append(figures / f"subsets_{rule}" / "subsets.png")
    return written


def stage_times(out: str | os.PathLike[str], folds: Sequence[int], seeds: Sequence[int]) -> dict[str, float]:
    """Seconds spent per stage (baseline / teacher / student) over every finished run under ``out``."""
    total: dict[str, float] = {}
    for fold in folds:
        for seed in seeds:
            for path in sorted(_cell(out, fold, seed).glob("**/result.json")):
                res = _read_result(path)
                stage = str(res.get("stage", "?"))
                total[stage] = total.get(stage, 0.0) + float(res.get("seconds") or 0.0)
    return total


def collect(
    out: str | os.PathLike[str],
    tables: Sequence[int],
    rows: Sequence[str],
    folds: Sequence[int],
    seeds: Sequence[int],
    *,
    ours_rule: str = "shot",
    thresholds: Sequence[float] = (100, 20),
    cfg: Mapping[str, Any] | None = None,
    title: str = "",
    figures: bool = True,
) -> str:
    """Write every selected table and the figures; returns the markdown of the tables."""
    texts = []
    table3_rows: list[TableRow] | None = None
    for t in tables:
        sel = [r for r in TABLES[t] if r in rows]
        if not sel:
            continue
        got = collect_table(t, sel, out, folds, seeds, ours_rule=ours_rule, thresholds=thresholds)
        texts.append(write_table(t, got, out, title=title))
        if t == 3:
            table3_rows = got
    if figures and table3_rows is not None:
        figure_ap_change(table3_rows, out, thresholds)
    if figures and cfg is not None:
        rules = sorted({(ours_rule if ROWS[r].rule == OURS else ROWS[r].rule) for r in rows if ROWS[r].rule},
                       key=RULES.index)
        figure_data(cfg, out, rules, folds[0], seeds[0], thresholds)
    return "\n".join(texts)


# ------------------------------------------------------------------------------------ CLI

def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.table3",
                                description="Run and collect the paper's Table 3 and Table 4 (see the module doc).")
    p.add_argument("--profile", default="demo", help="demo | cpu_long | paper | rfmid, or a profile .py file")
    p.add_argument("--folds", type=int, nargs="+", default=None,
                   help="default: every fold of the profile's split scheme (hold-out: 0)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--tables", type=int, nargs="+", choices=sorted(TABLES), default=[3, 4])
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=None,
                   help="default: every row of the selected tables")
    p.add_argument("--out", default=None, help="sweep folder (default runs/table3/<profile>)")
    p.add_argument("--ours-rule", choices=RULES, default="shot",
                   help="the teachers of the 'Ours + X' rows (default shot)")
    p.add_argument("--teacher-seed", type=int, default=None,
                   help="train each fold's teachers once, with this seed, for the students of every seed "
                        "(default: teachers per fold and seed)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every job, e.g. schedule.epochs=2")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--gpus", nargs="+", default=[], help="run one job per GPU at once (CUDA_VISIBLE_DEVICES)")
    mode.add_argument("--jobs", type=int, default=1, help="child processes at once (default 1)")
    p.add_argument("--subprocess", action="store_true",
                   help="with --jobs 1: run each job in a child process instead of this one")
    p.add_argument("--print-commands", action="store_true", help="print the torchrun commands, run nothing")
    p.add_argument("--nproc-per-node", type=int, default=1, help="torchrun --nproc_per_node of printed commands")
    p.add_argument("--launcher-args", default="--standalone",
                   help="torchrun arguments of printed commands (default --standalone; multi-node: "
                        "'--nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:29400 --rdzv-id=rskd')")
    from recipes.table3 import slurm  # --launcher slurm | local and the --slurm-* options (submitit)

    slurm.add_arguments(p)
    p.add_argument("--collect-only", action="store_true", help="only collect the tables and figures")
    p.add_argument("--no-figures", action="store_true", help="collect the tables only")
    p.add_argument("--evidence", action="store_true", help="also write evidence/ (recipes/table3/evidence.py)")
    p.add_argument("--pair", action="append", default=[], metavar="ROW:REF",
                   help="--evidence: compare ROW with REF too")
    return p


def _profile_name(profile: str) -> str:
    return Path(profile).stem if profile.endswith(".py") else profile


def _check_manifest(out: Path, profile: str, sets: Sequence[str], teacher_seed: int | None = None) -> None:
    """Refuse to run into a folder made with another profile, overrides or teacher seed; else record them."""
    path = out / "sweep.json"
    want = {"profile": profile, "set": list(sets), "teacher_seed": teacher_seed}
    if path.is_file():
        try:
            have = json.loads(path.read_text("utf-8"))
        except ValueError as exc:
            raise SweepError(f"{path}: expected JSON, got invalid JSON ({exc})") from exc
        if {k: have.get(k) for k in want} != want:
            raise SweepError(f"{out} holds a sweep made with profile {have.get('profile')!r}, --set "
                             f"{have.get('set')} and --teacher-seed {have.get('teacher_seed')}, expected profile "
                             f"{profile!r}, --set {list(sets)} and --teacher-seed {teacher_seed}; "
                             f"its finished runs would be reused: choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(want, indent=1) + "\n")


def _launch(jobs: list[Job], out: Path, a: argparse.Namespace) -> RunReport | None:
    """Run the unfinished jobs here (in dependency order) or through submitit (``--launcher``)."""
    t0 = time.time()
    if a.launcher is not None:  # recipes/table3/slurm.py; None after a SLURM submission
        from recipes.table3 import slurm

        report = slurm.launch(jobs, out, a)
        if report is None:
            return None
    else:
        report = run_jobs(jobs, out, gpus=a.gpus, jobs_at_once=a.jobs, in_process=not a.subprocess)
    print(f"[sweep] {len(report.done)} run(s) done, {len(report.skipped)} already finished, "
          f"{len(report.failed)} failed, {len(report.blocked)} not started; {time.time() - t0:.0f}s", flush=True)
    for jid in report.failed:
        print(f"[sweep] FAILED: {jid}", file=sys.stderr)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    if a.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {a.jobs}")
    if a.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {a.nproc_per_node}")
    pairs = [tuple(p.split(":")) for p in a.pair]  # --evidence comparisons
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ConfigError(f"--pair must be ROW:REF (e.g. ours_focal:focal), got {a.pair}")
    resolve_profile(a.profile)  # an unknown profile: ConfigError listing the valid ones
    out = Path(a.out) if a.out else Path("runs") / "table3" / _profile_name(a.profile)
    rows = list(dict.fromkeys(a.rows if a.rows else [r for t in a.tables for r in TABLES[t]]))
    base_cfg = load_config(_config_path(ROWS["erm"].config), a.profile, a.set)
    d = base_cfg["data"]
    folds = a.folds if a.folds is not None else list(range(d["n_folds"] if d["scheme"] == "kfold" else 1))
    for k in folds:  # a fold out of range: the config's own message
        load_config(_config_path(ROWS["erm"].config), a.profile, [*a.set, f"data.fold={k}"])
    thresholds = tuple(base_cfg["method"]["partition"]["thresholds"])
    title = (f"profile {_profile_name(a.profile)}; test mAP in %, mean ± std over folds {folds} x seeds {a.seeds}; "
             f"head >= {thresholds[0]:g}, tail < {thresholds[1]:g} training positives; Ours + X: {a.ours_rule} rule")

    report = None
    if not a.collect_only:
        jobs = build_jobs(rows, folds, a.seeds, out, a.profile, ours_rule=a.ours_rule, sets=a.set,
                          teacher_seed=a.teacher_seed)
        if a.print_commands:
            print_commands(jobs, nproc_per_node=a.nproc_per_node, launcher_args=shlex.split(a.launcher_args))
            return 0
        with RunLock(out):  # one live sweep per sweep folder (each run also locks its own folder)
            _check_manifest(out, a.profile, a.set, a.teacher_seed)
            report = _launch(jobs, out, a)
        if report is None:  # submitted to SLURM: collect later with --collect-only
            return 0
    text = collect(out, a.tables, rows, folds, a.seeds, ours_rule=a.ours_rule, thresholds=thresholds,
                   cfg=base_cfg, title=title, figures=not a.no_figures)
    print(text)
    if a.evidence:
        from recipes.table3.evidence import write_evidence
        print(write_evidence(out, folds, a.seeds, rows, ours_rule=a.ours_rule, thresholds=thresholds,
                             pairs=pairs, figures=not a.no_figures))
    times = stage_times(out, folds, a.seeds)
    if times:
        print("time per stage (sum over finished runs): "
              + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(times.items())))
    print(f"written: {out}/table*.md, table*.csv" + ("" if a.no_figures else f", {out}/figures/"))
    return 0 if report is None or report.ok else 1


