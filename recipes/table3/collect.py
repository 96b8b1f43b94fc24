"""The tables from the sweep's results (each run's ``result.json``, or its record's copy of it).

For each selected table: test mAP (head / medium / tail / total, in %) as mean +- sample standard
deviation (``ddof=1``; blank with a single run) over the runs of the row (folds x seeds). Per run, the
groups are recomputed from the run's per-class test AP and its ``train_class_counts``: with the cuts its
``groups`` records when the run had ``method.partition.mode='quantile'`` (the training counts' tertiles,
:mod:`recipes.engine.groups`), else with :func:`rskd_loss.metrics.group_map` at its ``thresholds`` (the
profile's ``method.partition.thresholds`` for a result without them). Written atomically: ``table<N>.md``
and ``table<N>.csv``. The results are read through a :class:`recipes.table3.store.RunStore`: from the run
folders, or (``records``) from the runs' records alone, with the same bytes written either way.
Imports :mod:`recipes.table3.rows` and :mod:`recipes.table3.store`, of this package, and
:mod:`recipes.engine.groups`.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recipes.engine.groups import group_scores
from recipes.table3.rows import (
    GROUPS,
    ROWS,
    TABLE_LABELS,
    TABLES,
    TEACHER_VARIANT_ROWS,
    SweepError,
    run_dir_name,
)
from recipes.table3.store import RunStore
from rskd_loss.fileio import atomic_write_text
from rskd_loss.metrics import group_map

__all__ = ["TableRow", "read_result", "check_result", "ap_vector", "fmt_number", "run_group_map", "collect_table",
           "write_table", "collect_tables", "stage_times"]


def read_result(path: Path) -> dict[str, Any]:
    """A run's ``result.json``, checked for the keys the tables read (``SweepError`` naming the file if not)."""
    try:
        doc = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise SweepError(f"{path}: expected a JSON result, got invalid JSON ({exc})") from exc
    return check_result(doc, path)


def check_result(doc: Any, path: Path | str) -> dict[str, Any]:
    """``doc`` if it is a result with the keys the tables read, else ``SweepError`` naming ``path``."""
    if not isinstance(doc, dict):
        raise SweepError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    for key in ("name", "test", "train_class_counts"):
        if key not in doc:
            raise SweepError(f"{path}: expected a key {key!r} (train.py's result.json), got keys {sorted(doc)}")
    return doc


def ap_vector(values: Iterable[float | None]) -> np.ndarray:
    """Per-class AP of a result as floats, ``None`` (no positive) as NaN."""
    return np.asarray([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def run_group_map(result: Mapping[str, Any], thresholds: Sequence[float], split: str = "test") -> dict[str, float]:
    """Head / medium / tail / total mAP (fractions) of one result: at the recorded quantile cuts (the groups
    the run reported), else via :func:`rskd_loss.metrics.group_map` at its (or the given) thresholds."""
    rule = result.get("groups")
    if isinstance(rule, Mapping) and rule.get("mode") == "quantile":
        return group_scores(ap_vector(result[split]["ap"]), result["train_class_counts"], rule["cuts"])
    th = result.get("thresholds") or thresholds
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without a test positive: left out, by design
        return group_map(ap_vector(result[split]["ap"]), result["train_class_counts"], tuple(th))


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
    store: RunStore | None = None,
) -> list[TableRow]:
    """Read the rows' results (missing ones are left out) from ``store`` (default: the run folders under
    ``out``) and average them."""
    store = store if store is not None else RunStore(out)
    labels = {r: ROWS[r].label for r in rows} | TABLE_LABELS.get(table, {})
    out_rows: list[TableRow] = []
    for row in rows:
        results = []
        for fold in folds:
            for seed in seeds:
                rid = f"fold{fold}/seed{seed}/{run_dir_name(row, ours_rule)}"
                doc = store.result(rid)
                if doc is None:
                    continue
                path = store.where(rid)
                res = check_result(doc, path)
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


def fmt_number(x: float) -> str:
    """A CSV cell: 4 decimals, blank for NaN."""
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
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([table, r.row, r.label, r.runs] + [fmt_number(v) for g in GROUPS for v in (r.mean[g], r.std[g])]
                   + [fmt_number(r.seconds)])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"table{table}.md", text)
    atomic_write_text(out / f"table{table}.csv", buf.getvalue())
    return text


def collect_tables(
    out: str | os.PathLike[str],
    tables: Sequence[int],
    rows: Sequence[str],
    folds: Sequence[int],
    seeds: Sequence[int],
    *,
    ours_rule: str = "shot",
    thresholds: Sequence[float] = (100, 20),
    title: str = "",
    store: RunStore | None = None,
) -> tuple[str, dict[int, list[TableRow]]]:
    """Write every selected table (its rows among ``rows``; Table 3 also the selected teacher-variant rows,
    after its own) into ``out``, reading the results from ``store`` (default: the run folders under
    ``out``); returns their markdown and their rows by table."""
    store = store if store is not None else RunStore(out)
    texts, collected = [], {}
    for t in tables:
        sel = [r for r in TABLES[t] if r in rows] + [r for r in TEACHER_VARIANT_ROWS if t == 3 and r in rows]
        if not sel:
            continue
        collected[t] = collect_table(t, sel, out, folds, seeds, ours_rule=ours_rule, thresholds=thresholds,
                                     store=store)
        texts.append(write_table(t, collected[t], out, title=title))
    return "\n".join(texts), collected


def stage_times(out: str | os.PathLike[str], folds: Sequence[int], seeds: Sequence[int],
                store: RunStore | None = None) -> dict[str, float]:
    """Seconds spent per stage (baseline / teacher / student) over every finished run of ``store``
    (default: the run folders under ``out``)."""
    store = store if store is not None else RunStore(out)
    total: dict[str, float] = {}
    for fold in folds:
        for seed in seeds:
            for rid in store.finished(f"fold{fold}/seed{seed}"):
                res = check_result(store.result(rid), store.where(rid))
                stage = str(res.get("stage", "?"))
                total[stage] = total.get(stage, 0.0) + float(res.get("seconds") or 0.0)
    return total

