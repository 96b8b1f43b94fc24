"""``python -m recipes.table3``: the command line of the Table 3 / Table 4 sweep (its parser and ``main``).

    python -m recipes.table3 --profile demo                      # the CPU demo (all 14 rows, one split)
    python -m recipes.table3 --profile cpu_long --seeds 0 1 2    # the longer CPU setting, 3 seeds
    python -m recipes.table3 --profile paper --gpus 0 1 2 3      # 4-fold CV, one GPU per job
    python -m recipes.table3 --profile rfmid --print-commands    # torchrun commands for a cluster
    python -m recipes.table3 --profile paper --launcher slurm --slurm-partition gpu   # SLURM (slurm.py)
    python -m recipes.table3 --profile demo --collect-only       # tables + figures from finished runs
    python -m recipes.table3 --profile demo --collect-only --from-records   # ... from <out>/records alone

Each selected row (Table 3: ERM, RS, RW, Focal, OLTR, LDAM, DB, Ours shot / region / feature, Ours +
DB / OLTR / LDAM / Focal; Table 4: ERM, KD T = 3 / 10 / 20 without the dynamic weights, "Weighted" =
Ours feature-based) becomes one run of ``recipes/train.py`` per fold and seed, plus the runs it needs
first (:mod:`recipes.table3.jobs`); the unfinished ones run here (:mod:`recipes.table3.local`) or
through submitit (:mod:`recipes.table3.slurm`); then the tables (:mod:`recipes.table3.collect`), the
figures (:mod:`recipes.table3.figures`) and, with ``--evidence``, ``evidence/``
(:mod:`recipes.table3.evidence`) are written. The exit status is 1 when a job failed.
Every finished run's record (:mod:`recipes.engine.run_record`) is gathered into ``<out>/records/``
(:func:`recipes.table3.store.gather_records`), the committable result; ``--from-records [DIR]``
recomputes the tables, the figures that need no data set and the evidence from such a folder alone.
``provenance.json`` next to the tables names the code commits, machines and commands of the runs used.
``sweep.json`` records the profile, ``--set`` overrides and ``--teacher-seed`` of the folder; a later
sweep into the same folder with others is refused (its finished runs would be silently reused).
This module is the top of the package: it imports the others, none imports it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recipes.config import RULES, ConfigError, load_config, profile_help, resolve_profile
from recipes.engine.run_lock import RunLock
from recipes.engine.run_record import RECORD_JSON
from recipes.table3 import slurm
from recipes.table3.collect import collect_tables, stage_times
from recipes.table3.figures import write_figures
from recipes.table3.jobs import Job, build_jobs, is_finished, print_commands
from recipes.table3.local import RunReport, run_jobs
from recipes.table3.rows import ROWS, TABLES, SweepError, config_path, run_dir_name, teacher_rule
from recipes.table3.store import RECORDS, RunStore, gather_records, provenance
from rskd_loss.fileio import atomic_write_text

__all__ = ["get_args_parser", "check_manifest", "collect", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.table3",
                                description="Run and collect the paper's Table 3 and Table 4 (see the module doc).")
    p.add_argument("--profile", default="demo", help=profile_help())
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
    slurm.add_arguments(p)  # --launcher slurm | local and the --slurm-* options (submitit)
    p.add_argument("--collect-only", action="store_true", help="only collect the tables and figures")
    p.add_argument("--from-records", nargs="?", const="", default=None, metavar="DIR",
                   help="collect from the runs' records alone (default DIR: <out>/records), not the run folders")
    p.add_argument("--no-figures", action="store_true", help="collect the tables only")
    p.add_argument("--evidence", action="store_true", help="also write evidence/ (recipes/table3/evidence.py)")
    p.add_argument("--pair", action="append", default=[], metavar="ROW:REF",
                   help="--evidence: compare ROW with REF too")
    p.add_argument("--primary", action="append", default=None, metavar="ROW:REF",
                   help="--evidence: a pre-registered primary comparison (repeat; Bonferroni over them; default: "
                        "ours_shot, ours_region and ours_feature against erm)")
    return p


def _profile_name(profile: str) -> str:
    return Path(profile).stem if profile.endswith(".py") else profile


def check_manifest(out: Path, profile: str, sets: Sequence[str], teacher_seed: int | None = None) -> None:
    """Refuse to run into a folder made with another profile, overrides or teacher seed; else record them."""
    path = out / "sweep.json"
    want = {"profile": profile, "set": list(sets), "teacher_seed": teacher_seed}
    if path.is_file():
        try:
            have = json.loads(path.read_text("utf-8"))
        except ValueError as exc:
            raise SweepError(f"{path}: expected JSON, got invalid JSON ({exc}); restore it or choose another --out"
                             ) from exc
        if not isinstance(have, dict):
            raise SweepError(f"{path}: expected a JSON object (profile, set, teacher_seed), got "
                             f"{type(have).__name__}; restore it or choose another --out")
        if {k: have.get(k) for k in want} != want:
            raise SweepError(f"{out} holds a sweep made with profile {have.get('profile')!r}, --set "
                             f"{have.get('set')} and --teacher-seed {have.get('teacher_seed')}, expected profile "
                             f"{profile!r}, --set {list(sets)} and --teacher-seed {teacher_seed}; "
                             f"its finished runs would be reused: choose another --out")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(want, indent=1) + "\n")


def skip_recorded(jobs: Sequence[Job], out: Path) -> list[Job]:
    """The jobs to launch, less those finished elsewhere: a run with its record in ``<out>/records/<id>/``
    (e.g. committed by the machine that ran it) and no ``result.json`` here is not run again, unless a
    job that runs needs its checkpoint (a teacher's or OLTR stage 1's ``best.pt``, which records do not
    hold): then it runs again, and its new record replaces the old one when gathered."""
    by_id = {j.id: j for j in jobs}
    recorded = {j.id for j in jobs if not is_finished(j) and (out / RECORDS / j.id / RECORD_JSON).is_file()}
    to_run = {j.id for j in jobs if not is_finished(j)} - recorded
    need = {d for jid in to_run for d in by_id[jid].deps if d in recorded}
    while need:  # what runs needs its dependencies' checkpoints, and they their own
        to_run |= need
        need = {d for jid in need for d in by_id[jid].deps if d in recorded} - to_run
    skip = recorded - to_run
    if recorded:
        print(f"[records] {len(recorded)} run(s) finished elsewhere (in {out / RECORDS}): {len(skip)} not run again, "
              f"{len(recorded) - len(skip)} run again (a run here needs their checkpoints)", flush=True)
    return [dataclasses.replace(j, deps=tuple(d for d in j.deps if d not in skip)) for j in jobs if j.id not in skip]


def _launch(jobs: list[Job], out: Path, a: argparse.Namespace) -> RunReport | None:
    """Run the unfinished jobs here (in dependency order) or through submitit (``--launcher``)."""
    t0 = time.time()
    if a.launcher is not None:  # recipes/table3/slurm.py; None after a SLURM submission
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
    store: RunStore | None = None,
) -> str:
    """Write every selected table and (``figures``) the figures, reading the results from ``store``
    (default: the run folders under ``out``); returns the markdown of the tables."""
    text, collected = collect_tables(out, tables, rows, folds, seeds, ours_rule=ours_rule, thresholds=thresholds,
                                     title=title, store=store)
    if figures:
        write_figures(collected.get(3), out, rows, folds, seeds, ours_rule=ours_rule, thresholds=thresholds, cfg=cfg)
    return text


def _row_pairs(values: Sequence[str], option: str) -> list[tuple[str, ...]]:
    pairs = [tuple(p.split(":")) for p in values]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ConfigError(f"{option} must be ROW:REF (e.g. ours_focal:focal), got {list(values)}")
    return pairs


def _check_args(a: argparse.Namespace) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]] | None]:
    """Refuse option values no parser type catches; returns the ``--pair`` and ``--primary`` comparisons."""
    if a.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {a.jobs}")
    if a.nproc_per_node < 1:
        raise ConfigError(f"--nproc-per-node must be >= 1, got {a.nproc_per_node}")
    pairs = _row_pairs(a.pair, "--pair")  # --evidence comparisons
    primary = _row_pairs(a.primary, "--primary") if a.primary is not None else None
    resolve_profile(a.profile)  # an unknown profile: ConfigError listing the valid ones
    return pairs, primary


def _folds(a: argparse.Namespace, base_cfg: Mapping[str, Any]) -> list[int]:
    """``--folds``, default every fold of the profile's split scheme; each checked by the config."""
    d = base_cfg["data"]
    folds = a.folds if a.folds is not None else list(range(d["n_folds"] if d["scheme"] == "kfold" else 1))
    for k in folds:  # a fold out of range: the config's own message
        load_config(config_path(ROWS["erm"].config), a.profile, [*a.set, f"data.fold={k}"])
    return folds


def run_ids(rows: Sequence[str], folds: Sequence[int], seeds: Sequence[int], ours_rule: str,
            store: RunStore) -> list[str]:
    """Ids of the runs the tables and evidence rest on: each row's, OLTR stage 1 when a row starts from it,
    and the teachers of the rows' rules found in ``store``."""
    ids = []
    for f in folds:
        for s in seeds:
            ids += [f"fold{f}/seed{s}/{run_dir_name(r, ours_rule)}" for r in rows]
            ids += [f"fold{f}/seed{s}/oltr_stage1"] if any(ROWS[r].oltr_init for r in rows) else []
            rules = dict.fromkeys(x for r in rows if (x := teacher_rule(r, ours_rule)) is not None)
            ids += [t for rule in rules for t in store.finished(f"fold{f}/seed{s}/teachers_{rule}")]
    return ids


def write_provenance(out: Path, prov: Mapping[str, Any]) -> None:
    """``<out>/provenance.json``, and its warnings (mixed commits, dirty trees, runs without a record) on stderr."""
    atomic_write_text(out / "provenance.json", json.dumps(prov, indent=1) + "\n")
    for w in prov["warnings"]:
        print(f"[provenance] WARNING: {w}", file=sys.stderr)


def _store(a: argparse.Namespace, out: Path) -> RunStore:
    """The runs to collect: the records (``--from-records``) or the run folders, whose records are first
    gathered into ``<out>/records``."""
    if a.from_records is not None:
        records = Path(a.from_records) if a.from_records else out / RECORDS
        if not records.is_dir():
            raise SweepError(f"--from-records: expected a folder of run records, got {records} (not a folder)")
        return RunStore(out, records)
    if out.is_dir():
        changed = gather_records(out)
        if changed:
            print(f"[records] {changed} file(s) gathered into {out / RECORDS}", flush=True)
    return RunStore(out)


def _print_summary(out: Path, folds: Sequence[int], seeds: Sequence[int], figures: bool, store: RunStore) -> None:
    times = stage_times(out, folds, seeds, store)
    if times:
        print("time per stage (sum over finished runs): "
              + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(times.items())))
    print(f"written: {out}/table*.md, table*.csv, provenance.json" + (f", {out}/figures/" if figures else ""))


def main(argv: Sequence[str] | None = None) -> int:
    a = get_args_parser().parse_args(argv)
    pairs, primary = _check_args(a)
    out = Path(a.out) if a.out else Path("runs") / "table3" / _profile_name(a.profile)
    rows = list(dict.fromkeys(a.rows if a.rows else [r for t in a.tables for r in TABLES[t]]))
    base_cfg = load_config(config_path(ROWS["erm"].config), a.profile, a.set)
    folds = _folds(a, base_cfg)
    thresholds = tuple(base_cfg["method"]["partition"]["thresholds"])
    groups = (f"head >= {thresholds[0]:g}, tail < {thresholds[1]:g} training positives"
              if base_cfg["method"]["partition"]["mode"] == "fixed" else "groups at the training counts' tertiles")
    title = (f"profile {_profile_name(a.profile)}; test mAP in %, mean ± std over folds {folds} x seeds {a.seeds}; "
             f"{groups}; Ours + X: {a.ours_rule} rule")

    report = None
    if a.from_records is not None and not a.collect_only:
        raise ConfigError("--from-records collects only: add --collect-only (runs need their run folders)")
    if not a.collect_only:
        jobs = build_jobs(rows, folds, a.seeds, out, a.profile, ours_rule=a.ours_rule, sets=a.set,
                          teacher_seed=a.teacher_seed)
        if a.print_commands:
            print_commands(jobs, nproc_per_node=a.nproc_per_node, launcher_args=shlex.split(a.launcher_args))
            return 0
        with RunLock(out):  # one live sweep per sweep folder (each run also locks its own folder)
            check_manifest(out, a.profile, a.set, a.teacher_seed)
            report = _launch(skip_recorded(jobs, out), out, a)
        if report is None:  # submitted to SLURM: collect later with --collect-only
            return 0
    store = _store(a, out)
    print(collect(out, a.tables, rows, folds, a.seeds, ours_rule=a.ours_rule, thresholds=thresholds,
                  cfg=base_cfg, title=title, figures=not a.no_figures, store=store))
    prov = provenance(store, run_ids(rows, folds, a.seeds, a.ours_rule, store))
    write_provenance(out, prov)
    if a.evidence:
        from recipes.table3.evidence import write_evidence  # scipy: imported only when asked for

        print(write_evidence(out, folds, a.seeds, rows, ours_rule=a.ours_rule, thresholds=thresholds,
                             pairs=pairs, primary=primary, figures=not a.no_figures, store=store,
                             provenance=prov))
    _print_summary(out, folds, a.seeds, not a.no_figures, store)
    return 0 if report is None or report.ok else 1
