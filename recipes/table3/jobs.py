"""The sweep's job graph: every selected row x fold x seed as a run of ``recipes/train.py``, with the
runs it needs first, and the command line of each.

* a student ("Ours ...", "KD ...") needs the k teachers of its rule, one run per subset
  (``method.subset=j``, out dir ``teachers_<rule>/subset<j>``). k is known only once the partition
  is computed, so the sweep computes it the way ``train.py`` does: ``recipes.data.folds.prepare_data``
  for the fold's training class counts (generating the synthetic data set first when it is
  missing), then ``recipes.engine.teacher_sources.make_partition``. The "Ours + X" rows use the teachers of ONE rule,
  ``--ours-rule`` (default ``shot``: the paper finds it best on the data set with the longer tail,
  Disease-48, Sec. 3.3); Table 4's rows use the feature rule (the paper's Table 4 is on it);
* OLTR (and "Ours + OLTR") need OLTR stage 1, whose ``best.pt`` initialises them;
* teacher variants, read from the student row's config: ``method.crossfit_k`` = K >= 2 trains K
  teacher sets (``teachers_<rule>_xf<K>/part<k>/subset<j>``, ``method.crossfit_part=k``: K x k jobs, the
  student after all of them); ``method.teacher_init='erm'`` starts every teacher
  (``teachers_<rule>_erminit/subset<j>``) from the ERM run of the fold and teacher seed, a job before them.

A run whose ``result.json`` exists is finished (:func:`is_finished`); a run that was interrupted (its
``last.pt`` exists, its ``result.json`` does not) is started with ``--resume`` (:func:`job_argv`).
Imports :mod:`recipes.table3.rows` only, of this package.
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recipes.config import RULES, ConfigError, load_config
from recipes.table3.rows import (
    OLTR_STAGE1_CONFIG,
    ROWS,
    TEACHER_CONFIG,
    cell_dir,
    config_path,
    run_dir_name,
    teacher_rule,
    teachers_dir,
)

__all__ = ["Job", "REPO_ROOT", "TRAIN_MODULE", "FoldData", "fold_class_data", "count_subsets", "build_jobs",
           "topological_order", "is_finished", "job_kind", "job_argv", "job_command", "quote_arg", "print_commands"]

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAIN_MODULE = "recipes.train"  # run as a module from REPO_ROOT (the checkout), like every recipe


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



def job_kind(job: Job) -> str:
    """What a job is, for the time estimate of the ones left: its table row, else its stage
    (``teacher``; ``baseline`` for OLTR stage 1)."""
    return job.row or job.stage


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
        return load_config(config_path(rel), self.profile, [*self.sets, *extra])

    def add(self, job: Job) -> None:
        self.listed.add(job.id)
        self.jobs.append(job)

    def need_oltr1(self, fold: int, seed: int) -> str:
        """The id of the cell's OLTR stage-1 job, adding the job when not yet listed."""
        d = cell_dir(self.out, fold, seed) / "oltr_stage1"
        jid = _rel_id(self.out, d)
        if jid not in self.listed:
            base = (f"data.fold={fold}", f"run.seed={seed}")
            cfg = self.load(OLTR_STAGE1_CONFIG, base)
            self.add(Job(jid, OLTR_STAGE1_CONFIG, self.profile, str(d), (*self.sets, *base), (),
                         cfg["method"]["stage"], None, fold, seed))
        return jid

    def need_erm(self, fold: int, seed: int) -> str:
        """The id of the cell's ERM run (the erm row), adding the job when not yet listed."""
        jid = _rel_id(self.out, cell_dir(self.out, fold, seed) / run_dir_name("erm"))
        if jid not in self.listed:
            self.add_row(fold, seed, "erm")
        return jid

    def need_teachers(self, fold: int, seed: int, rule: str, crossfit_k: int = 0,
                      teacher_init: str | None = None) -> tuple[Path, tuple[str, ...]]:
        """The teachers' folder and job ids of ``rule`` (and variant) for the cell, adding the jobs not yet
        listed (in the cell of ``teacher_seed`` when one is set): one per subset, or per part and subset."""
        tseed = seed if self.teacher_seed is None else self.teacher_seed
        tdir = teachers_dir(self.out, fold, tseed, rule, crossfit_k=crossfit_k, teacher_init=teacher_init)
        tbase = (f"data.fold={fold}", f"run.seed={tseed}")
        rel = TEACHER_CONFIG[rule]
        if (fold, rule) not in self.k_cache:  # the partition of the fold's whole training set, for every variant
            cfg = self.load(rel, (*tbase, "method.crossfit_k=0", "method.teacher_init=None"))
            counts, names = self.fold_data(cfg)
            self.k_cache[(fold, rule)] = count_subsets(cfg, counts, names)
        sets_of_teachers = [(tdir, ())] if not crossfit_k else [
            (tdir / f"part{k}", (f"method.crossfit_k={crossfit_k}", f"method.crossfit_part={k}"))
            for k in range(crossfit_k)]
        init: tuple[str, ...] = ()
        deps: tuple[str, ...] = ()
        if teacher_init == "erm":
            erm = self.need_erm(fold, tseed)
            init, deps = ("method.teacher_init='erm'", f"method.init_from={_lit(str(Path(self.out) / erm))}"), (erm,)
        ids = []
        for folder, variant in sets_of_teachers:
            for j in range(self.k_cache[(fold, rule)]):
                d = folder / f"subset{j}"
                jid = _rel_id(self.out, d)
                ids.append(jid)
                if jid not in self.listed:
                    extra = (*tbase, *variant, *init, f"method.subset={j}")
                    self.load(rel, extra)
                    self.add(Job(jid, rel, self.profile, str(d), (*self.sets, *extra), deps, "teacher", None,
                                 fold, tseed))
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
        rule = teacher_rule(row, self.ours_rule)
        if rule is not None:
            meth = self.load(spec.config, extra)["method"]  # the teacher variant the row (or --set) asks for
            tdir, tids = self.need_teachers(fold, seed, rule, meth["crossfit_k"], meth["teacher_init"])
            deps.extend(tids)
            extra += [f"method.partition.rule={_lit(rule)}", f"method.teachers_dir={_lit(str(tdir))}"]
        d = cell_dir(self.out, fold, seed) / run_dir_name(row, self.ours_rule)
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
    argv = ["--config", _shown(config_path(job.config))]
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

