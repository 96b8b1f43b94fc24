"""The sweep's figures, under ``<out>/figures/``: the per-class AP change of the best "Ours" row (by
mean total mAP) against ERM, classes sorted by training count (``fig5_ap_change.png`` + ``.csv``, the
paper's Fig. 5), and, when the data set's CSV is present, the class distribution (``class_counts.png``,
Fig. 1) and each rule's subset distributions (``subsets_<rule>/subsets.png``, Fig. 4), both drawn by
:func:`recipes.data.describe.describe`. Written atomically. Reads the collected rows of
:mod:`recipes.table3.collect`.
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from recipes.config import RULES
from recipes.table3.collect import TableRow, ap_vector, fmt_number
from recipes.table3.jobs import fold_class_data
from recipes.table3.rows import ROWS, SweepError, teacher_rule, teachers_dir
from rskd_loss.fileio import atomic_write_bytes, atomic_write_text
from rskd_loss.metrics import shot_group_of

__all__ = ["figure_ap_change", "figure_data", "write_figures"]


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
        ap_erm = np.nanmean(np.stack([ap_vector(r["test"]["ap"]) for r in erm.results]), axis=0)
        ap_best = np.nanmean(np.stack([ap_vector(r["test"]["ap"]) for r in best.results]), axis=0)
    counts = np.mean(np.stack([np.asarray(r["train_class_counts"], dtype=np.float64) for r in erm.results]), axis=0)
    group_of = shot_group_of(counts, tuple(thresholds))  # mean counts over folds, as recipes/table3/evidence.py
    order = np.argsort(-counts, kind="stable")
    delta = 100.0 * (ap_best - ap_erm)

    figures = Path(out) / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "train_count", "group", "ap_erm", f"ap_{best.row}", "delta_points"])
    for i in order:
        w.writerow([names[i], f"{counts[i]:g}", group_of[int(i)], fmt_number(ap_erm[i]), fmt_number(ap_best[i]),
                    fmt_number(delta[i])])
    atomic_write_text(figures / "fig5_ap_change.csv", buf.getvalue())
    labels = [f"{names[i]} ({counts[i]:.0f})" for i in order]
    path = figures / "fig5_ap_change.png"
    _plot_ap_change(path, delta[order], [group_of[int(i)] for i in order], labels,
                    f"{best.label} minus ERM, classes by training count")
    return path


def _plot_ap_change(path: Path, delta: np.ndarray, groups: Sequence[str], labels: Sequence[str], title: str) -> None:
    """Fig. 5's bars: one per class (in the given order), coloured by its group."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colours = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}
    fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(labels)), 4))
    ax.bar(range(len(labels)), np.nan_to_num(delta), color=[colours[g] for g in groups])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_ylabel("test AP change (points)")
    ax.set_title(title)
    ax.legend(handles=[Patch(color=c, label=g) for g, c in colours.items()])
    _save_png(fig, path)
    plt.close(fig)


def figure_data(cfg: Mapping[str, Any], out: str | os.PathLike[str], rules: Sequence[str], fold: int, seed: int,
                thresholds: Sequence[float]) -> list[Path]:
    """Fig. 1 (class distribution) and Fig. 4 (each rule's subsets), drawn by ``recipes.data.describe``.

    Only when the data set's CSV exists (never generates data). The partition of a rule is the one
    its teachers wrote (``teachers_<rule>/partition.json`` of ``fold``/``seed``), else it is computed
    with ``recipes.engine.teacher_sources.make_partition`` and written under ``figures/``.
    """
    from recipes.data.describe import describe

    d = cfg["data"]
    csv_path = Path(d["root"]) / d["csv"]
    if not csv_path.is_file():
        print(f"[sweep] figures 1 and 4 left out: {csv_path} not found", flush=True)
        return []
    figures = Path(out) / "figures"
    th = tuple(int(t) for t in thresholds)
    describe(csv_path, figures, thresholds=th, verbose=False)
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
        describe(csv_path, figures / f"subsets_{rule}", partition=pfile, thresholds=th, verbose=False)
        written.append(figures / f"subsets_{rule}" / "subsets.png")
    return written


def write_figures(table3_rows: Sequence[TableRow] | None, out: str | os.PathLike[str], rows: Sequence[str],
                  folds: Sequence[int], seeds: Sequence[int], *, ours_rule: str = "shot",
                  thresholds: Sequence[float] = (100, 20), cfg: Mapping[str, Any] | None = None) -> None:
    """Fig. 5 from the collected Table 3 rows (when Table 3 was collected), and Figs. 1 and 4 from the
    data set of ``cfg`` (when given) for the rules of ``rows``' teachers, on the first fold and seed."""
    if table3_rows is not None:
        figure_ap_change(table3_rows, out, thresholds)
    if cfg is not None:
        rules = sorted({r for r in (teacher_rule(row, ours_rule) for row in rows) if r}, key=RULES.index)
        figure_data(cfg, out, rules, folds[0], seeds[0], thresholds)
