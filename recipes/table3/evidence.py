"""Evidence behind the Table 3 sweep: paired differences, pooled-over-folds mAP with bootstrap intervals,
and four diagnostics of the method (teachers vs ERM, KD weights, KD gradients, per-class AP change).

    python -m recipes.table3 --profile paper --collect-only --evidence --pair ours_focal:focal
    python -m recipes.table3 --profile paper --collect-only --from-records --evidence   # from records/ alone

:func:`write_evidence` reads the finished runs of a sweep folder (layout: :mod:`recipes.table3.rows`), from
their run folders or their records (:class:`recipes.table3.store.RunStore`: the diagnostics need only the
per-class AP, the predictions and the per-epoch metrics lines, all in a record), and writes under
``<out>/evidence/`` (atomically): ``evidence.md`` (the report it returns), ``paired.md/.csv``,
``paired_cells.md/.csv``, ``pooled.md/.csv``, ``pooled_counts.csv``, ``teachers.md/.csv``, ``kd_weights.csv``,
``grad_ratio.md/.csv``, ``ap_change.csv`` and ``fig_*.png``. A missing file is left out with a line in the
report, never an error.

Paired tests (section 1): the fold is the unit. The seeds of a fold share its test images and its teachers,
so the (fold, seed) cells are not independent: each fold's differences are averaged over its seeds first,
then a paired t-interval over the fold means with df = folds - 1 (:func:`paired_interval`). With a single
fold (hold-out profiles) the cells are the unit, with a note. The primary comparisons (pre-registered;
default each rule's "Ours" against ERM, :data:`PRIMARY_ROWS`) also get Bonferroni intervals at level
1 - 0.05 / k over the k of them, and a verdict. The per-cell view (df = cells - 1) is kept as a labelled
secondary table (``paired_cells``). Every number in the report is the computed one.

Groups: :func:`rskd_loss.metrics.shot_groups` / :func:`~rskd_loss.metrics.group_map`; per run by its own
``train_class_counts`` (sections 1, 4, 5; section 1 also by the run's recorded thresholds, as Table 3), for
pooled / averaged numbers by the per-class training count averaged over every ERM run found (sections 2, 3,
6) and ``thresholds``. mAP and AP are in % points. Bootstrap: 16 classes x 4000 images x 2000 draws takes
about 1.8 s per (row, seed) on one CPU core.
"""
from __future__ import annotations

import csv
import io
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from recipes.table3.collect import run_group_map
from recipes.table3.rows import ROWS, run_dir_name
from recipes.table3.store import RunStore
from rskd_loss.fileio import atomic_write_bytes, atomic_write_text
from rskd_loss.metrics import average_precision_per_class, group_map, shot_cuts, shot_group_of, shot_groups
from rskd_loss.partition import RULES

__all__ = ["write_evidence", "t_interval", "paired_interval", "paired_tests", "verdict", "PRIMARY_ROWS",
           "weighted_ap", "bootstrap_group_maps", "GROUPS"]

GROUPS = ("head", "medium", "tail", "total")
COLOURS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}


# ------------------------------------------------------------------------------------ reading

class _Sweep:
    """The runs of one sweep by (row, fold, seed), read through ``store`` (run folders or records); every
    missing file is recorded in ``store.missing``."""

    def __init__(self, store: RunStore, ours_rule: str) -> None:
        self.store, self.ours_rule = store, ours_rule
        self.result, self.preds, self.metrics = store.result, store.preds, store.metrics

    @property
    def missing(self) -> list[str]:
        return self.store.missing

    def run(self, row: str, fold: int, seed: int) -> str:
        """The run id (folder relative to the sweep) of a table row or a folder name."""
        name = run_dir_name(row, self.ours_rule) if row in ROWS else row
        return f"fold{fold}/seed{seed}/{name}"


def _gvec(ap: np.ndarray, counts: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """(4,) head / medium / tail / total mAP of per-class ``ap`` (C,) by :func:`group_map` (NaN classes left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = group_map(ap, counts, tuple(thresholds))
    return np.array([m[g] for g in GROUPS])


def _nanmean(x: Any, axis: int | None = None) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, dtype=np.float64), axis=axis)


# ------------------------------------------------------------------------------------ statistics

def t_interval(x: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean, sample sd (ddof=1) and t-interval mean +- t_{(1+level)/2, n-1} sd / sqrt(n) of the finite ``x``.

    ``n`` < 2: sd and the interval are NaN. Returns {n, mean, sd, lo, hi}.
    """
    v = np.asarray([a for a in x if a is not None and math.isfinite(a)], dtype=np.float64)
    n = int(v.size)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return {"n": n, "mean": mean, "sd": math.nan, "lo": math.nan, "hi": math.nan}
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "lo": mean - half, "hi": mean + half}


def weighted_ap(scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    r"""Per-class AP of resamples given as image multiplicities: ``weights[b, n]`` copies of image n in draw b.

    Equal to ``average_precision_per_class(scores[idx], targets[idx])`` for any ``idx`` with those
    counts. Images sorted by decreasing score, tie groups k ending at position e_k,
    :math:`TP_k = \sum_{n \le e_k} w_n y_n`, :math:`N_k = \sum_{n \le e_k} w_n`,
    :math:`AP = \sum_k (TP_k - TP_{k-1}) TP_k / (N_k \, TP_K)` (only groups holding a positive add).

    Args: scores, targets (N, C); weights (B, N) non-negative integers. Returns (B, C); NaN where a
    draw holds no positive of the class.
    """
    s, y, w = np.asarray(scores, np.float64), np.asarray(targets, np.float64), np.asarray(weights)
    if s.ndim != 2 or s.shape != y.shape or w.ndim != 2 or w.shape[1] != s.shape[0]:
        raise ValueError(f"expected scores and targets (N, C) and weights (B, N), got {s.shape}, {y.shape}, {w.shape}")
    w = w.astype(np.int32, copy=False)
    out = np.full((w.shape[0], s.shape[1]), np.nan)
    for c in range(s.shape[1]):
        order = np.argsort(-s[:, c], kind="mergesort")
        sc, pos = s[order, c], y[order, c] > 0
        if not pos.any():
            continue
        ends = np.r_[np.flatnonzero(np.diff(sc)), len(sc) - 1]
        npos = np.cumsum(pos)[ends]                           # positives up to each tie group's end
        keep = np.diff(np.r_[0, npos]) > 0                    # the groups holding a positive
        ws = w[:, order]
        n_k = np.cumsum(ws, axis=1)[:, ends[keep]]            # (B, G')
        tp_k = np.cumsum(ws[:, pos], axis=1)[:, npos[keep] - 1]
        dtp = np.diff(tp_k, axis=1, prepend=0)
        total = tp_k[:, -1].astype(np.float64)
        terms = np.divide(dtp * tp_k, n_k, out=np.zeros(n_k.shape), where=n_k > 0)
        out[:, c] = np.divide(terms.sum(1), total, out=np.full(total.shape, np.nan), where=total > 0)
    return out


def bootstrap_group_maps(preds: Mapping[Any, tuple[np.ndarray, np.ndarray]], counts: np.ndarray,
                         thresholds: Sequence[float], n_boot: int, seed: int = 0) -> dict[Any, np.ndarray]:
    """(n_boot, 4) group mAPs of every entry of ``preds`` (key -> (scores, targets), all (N, C) on the same
    N images in the same order) on the SAME image resamples: ``numpy.random.default_rng(seed)`` draws N
    indices with replacement per draw, shared by every key (paired bootstrap)."""
    n = {v[0].shape[0] for v in preds.values()}
    if len(n) != 1:
        raise ValueError(f"expected every entry on the same images, got image counts {sorted(n)}")
    n_img, rng = n.pop(), np.random.default_rng(seed)
    out = {k: np.full((n_boot, len(GROUPS)), np.nan) for k in preds}
    chunk = max(1, 2_000_000 // n_img)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        idx = rng.integers(0, n_img, (b, n_img)) + n_img * np.arange(b)[:, None]
        w = np.bincount(idx.ravel(), minlength=b * n_img).reshape(b, n_img)
        for k, (s, y) in preds.items():
            out[k][start:start + b] = [_gvec(a, counts, thresholds) for a in weighted_ap(s, y, w)]
    return out


# ------------------------------------------------------------------------------------ 1. paired

def paired_interval(diffs: Mapping[int, Sequence[float]], level: float = 0.95) -> dict[str, Any]:
    """Paired t-interval of differences given per fold (fold -> its cells' differences, one per seed).

    The fold is the unit: the seeds of a fold share its test images and its teachers, so they are not
    independent; each fold's finite differences are averaged first, then :func:`t_interval` over the F
    fold means (df = F - 1). With a single fold (a hold-out split) there is nothing to average over: the
    cells are the unit (df = cells - 1), ``unit`` says "cell". Returns t_interval's keys and unit, df,
    level, above (units whose difference is > 0).
    """
    finite = {f: [x for x in v if x is not None and math.isfinite(x)] for f, v in diffs.items()}
    finite = {f: v for f, v in finite.items() if v}
    if len(finite) >= 2:
        unit, values = "fold", [float(np.mean(v)) for v in finite.values()]
    else:
        unit, values = "cell", [x for v in finite.values() for x in v]
    t = t_interval(values, level)
    return {**t, "unit": unit, "df": t["n"] - 1 if t["n"] > 1 else math.nan, "level": level,
            "above": sum(x > 0 for x in values)}


def _cell_diffs(sw: _Sweep, r: str, ref: str, folds: Sequence[int], seeds: Sequence[int],
                thresholds: Sequence[float]) -> dict[int, list[dict[str, float]]]:
    """Per fold: R - ref group mAP differences (points) of each seed where both runs finished."""
    out: dict[int, list[dict[str, float]]] = defaultdict(list)
    for f, s in product(folds, seeds):
        a, b = sw.result(sw.run(r, f, s)), sw.result(sw.run(ref, f, s))
        if a is not None and b is not None:
            ga, gb = (run_group_map(x, thresholds) for x in (a, b))
            out[f].append({g: 100 * (ga[g] - gb[g]) for g in GROUPS})
    return out


def paired_tests(sw: _Sweep, pairs: Sequence[tuple[str, str]], folds: Sequence[int], seeds: Sequence[int],
                 thresholds: Sequence[float], primary: Sequence[tuple[str, str]],
                 level: float = 0.95) -> tuple[list[dict], list[dict]]:
    """Per pair and group: the paired test of R - ref test mAP with the fold as unit (:func:`paired_interval`),
    and for the ``primary`` pairs also its Bonferroni interval at level 1 - (1 - level) / len(primary); then,
    secondary, the same over the (fold, seed) cells as if they were independent (df = cells - 1, too
    narrow when the seeds of a fold are correlated). Returns (primary-unit records, per-cell records)."""
    k = len(primary)
    bonf = 1 - (1 - level) / k if k else math.nan
    recs, cells = [], []
    for r, ref in pairs:
        by_fold = _cell_diffs(sw, r, ref, folds, seeds, thresholds)
        for g in GROUPS:
            d = {f: [x[g] for x in v] for f, v in by_fold.items()}
            rec = {"row": r, "reference": ref, "group": g, **paired_interval(d, level),
                   "primary": (r, ref) in primary, "bonferroni_level": math.nan, "bonferroni_lo": math.nan,
                   "bonferroni_hi": math.nan}
            if rec["primary"]:
                b = paired_interval(d, bonf)
                rec.update(bonferroni_level=bonf, bonferroni_lo=b["lo"], bonferroni_hi=b["hi"])
            recs.append(rec)
            flat = [x for v in d.values() for x in v if math.isfinite(x)]
            cells.append({"row": r, "reference": ref, "group": g, **t_interval(flat, level),
                          "df": len(flat) - 1 if len(flat) > 1 else math.nan, "above": sum(x > 0 for x in flat)})
    return recs, cells


def verdict(rec: Mapping[str, Any], lo: str = "lo", hi: str = "hi") -> str:
    """"above 0" / "below 0" when the interval excludes 0, else "no difference resolved (half-width h)"."""
    if not (math.isfinite(rec[lo]) and math.isfinite(rec[hi])):
        return "not testable (fewer than 2 units)"
    if rec[lo] > 0:
        return "above 0"
    if rec[hi] < 0:
        return "below 0"
    return f"no difference resolved (half-width {_f((rec[hi] - rec[lo]) / 2)})"


# ------------------------------------------------------------------------------------ 2. pooled

def pooled_test(sw: _Sweep, row: str, folds: Sequence[int], seed: int) -> tuple[np.ndarray, ...] | None:
    """(rows (N,), logits (N, C), targets (N, C)) of ``row``'s test predictions over ``folds``, sorted by
    CSV row; None (noted) when a fold is missing. ValueError when an image appears in two folds."""
    parts = [sw.preds(sw.run(row, f, seed)) for f in folds]
    if any(p is None for p in parts):
        return None
    cls = [list(p["classes"]) for p in parts]
    if any(c != cls[0] for c in cls):
        raise ValueError(f"{row} seed {seed}: expected the same classes in every fold, got {cls}")
    rows = np.concatenate([p["test_rows"] for p in parts])
    uniq, cnt = np.unique(rows, return_counts=True)
    if (cnt > 1).any():
        raise ValueError(f"{row} seed {seed}: expected every test image in at most one fold, got CSV row "
                         f"{int(uniq[cnt > 1][0])} {int(cnt.max())} times")
    order = np.argsort(rows, kind="stable")
    return (rows[order], *(np.concatenate([p[f"test_{k}"] for p in parts])[order] for k in ("logits", "targets")))


def pooled_section(sw: _Sweep, rows: Sequence[str], pairs: Sequence[tuple[str, str]], folds: Sequence[int],
                   seeds: Sequence[int], counts: np.ndarray, thresholds: Sequence[float], n_boot: int,
                   notes: list[str]) -> tuple[list[dict], dict, float]:
    """Pooled group mAP per row (mean +- sd over seeds) and per pair the pooled difference with 95% paired
    bootstrap percentile intervals, per seed and for the seed average. Returns (records, per-class AP
    {(row, seed): (C,)}, bootstrap seconds)."""
    data: dict[tuple[str, int], tuple] = {}
    names = list(dict.fromkeys([*rows, *(x for p in pairs for x in p)]))
    for r in names:
        for s in seeds:
            p = pooled_test(sw, r, folds, s)
            if p is None:
                notes.append(f"pooled: {r} seed {s} skipped (not every fold has predictions.npz)")
            else:
                data[(r, s)] = p
    first = next(iter(data), None)  # every entry must hold the same images with the same targets
    for k in [k for k, v in data.items() if not np.array_equal(v[0], data[first][0])]:
        notes.append(f"pooled: {k[0]} seed {k[1]} left out (its test images differ from those of {first})")
        del data[k]
    if any(not np.array_equal(v[2], data[first][2]) for v in data.values()):
        raise ValueError(f"pooled: expected the same test targets per image in every run, got others than {first}'s")
    ap = {k: average_precision_per_class(v[1], v[2]) for k, v in data.items()}
    recs = []
    for r in names:
        g = np.array([_gvec(ap[(r, s)], counts, thresholds) for s in seeds if (r, s) in ap]).reshape(-1, 4)
        for i, gr in enumerate(GROUPS):
            recs.append({"kind": "row", "row": r, "reference": "", "seed": "mean", "group": gr, "n": len(g),
                         "value": 100 * np.mean(g[:, i]) if len(g) else math.nan,
                         "sd": 100 * np.std(g[:, i], ddof=1) if len(g) > 1 else math.nan,
                         "lo": math.nan, "hi": math.nan})
    t0 = time.perf_counter()
    boot = bootstrap_group_maps({k: v[1:] for k, v in data.items()}, counts, thresholds, n_boot) if data else {}
    seconds = time.perf_counter() - t0
    for r, ref in pairs:
        ss = [s for s in seeds if (r, s) in data and (ref, s) in data]
        point = {s: 100 * (_gvec(ap[(r, s)], counts, thresholds) - _gvec(ap[(ref, s)], counts, thresholds)) for s in ss}
        draws = {s: 100 * (boot[(r, s)] - boot[(ref, s)]) for s in ss}
        if ss:
            point["mean"], draws["mean"] = np.mean([point[s] for s in ss], 0), np.mean([draws[s] for s in ss], 0)
        for s in point:
            lo, hi = np.nanpercentile(draws[s], [2.5, 97.5], axis=0)
            for i, gr in enumerate(GROUPS):
                recs.append({"kind": "pair", "row": r, "reference": ref, "seed": s, "group": gr, "n": len(ss),
                             "value": point[s][i], "sd": math.nan, "lo": lo[i], "hi": hi[i]})
    return recs, {k: (v, data[k][2].sum(0)) for k, v in ap.items()}, seconds


# ------------------------------------------------------------------------------------ 3. teachers vs ERM

def teacher_section(sw: _Sweep, folds: Sequence[int], seeds: Sequence[int], baseline: str,
                    group_of: list[str]) -> list[dict]:
    """Per (rule, class): val AP (points) of the subset teacher and of ERM on the same classes, on all val
    images and on the teacher's positive view (images with a positive among the subset's classes), mean over cells."""
    acc: dict[tuple[str, int], dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for rule, f, s in product(RULES, folds, seeds):
        tdir = f"fold{f}/seed{s}/teachers_{rule}"
        if not sw.store.has_dir(tdir):
            continue
        erm = sw.preds(sw.run(baseline, f, s))
        part = sw.store.partition(tdir)
        if erm is None or part is None:
            continue
        col = {int(c): i for i, c in enumerate(erm["classes"])}
        for j, subset in enumerate(part.subsets):
            t = sw.preds(f"{tdir}/subset{j}")
            if t is None:
                continue
            if [int(c) for c in t["classes"]] != list(subset):
                raise ValueError(f"{tdir}/subset{j}: expected classes {list(subset)}, got {t['classes'].tolist()}")
            cols = [col[c] for c in subset]
            y, e = erm["val_targets"][:, cols], erm["val_logits"][:, cols]
            if not (np.array_equal(t["val_rows"], erm["val_rows"]) and np.array_equal(t["val_targets"], y)):
                raise ValueError(f"{tdir}/subset{j}: expected the val rows and targets of {baseline} (same order), "
                                 f"got {len(t['val_rows'])} rows that differ")
            view = y.any(1)
            aps = {"teacher_all": average_precision_per_class(t["val_logits"], y),
                   "erm_all": average_precision_per_class(e, y),
                   "teacher_view": average_precision_per_class(t["val_logits"][view], y[view]),
                   "erm_view": average_precision_per_class(e[view], y[view])}
            for i, c in enumerate(subset):
                for k, v in aps.items():
                    acc[(rule, c)][k].append(100 * v[i])
    recs = []
    for (rule, c), v in sorted(acc.items(), key=lambda kv: (RULES.index(kv[0][0]), kv[0][1])):
        m = {k: float(_nanmean(x)) for k, x in v.items()}
        recs.append({"rule": rule, "class": c, "group": group_of[c], "cells": len(v["erm_all"]), **m,
                     "diff_all": m["teacher_all"] - m["erm_all"], "diff_view": m["teacher_view"] - m["erm_view"]})
    return recs


def _teacher_groups(recs: list[dict]) -> list[dict]:
    """Per rule and group (and all classes): the mean over classes of the per-class teacher / ERM val AP."""
    keys = ("teacher_all", "erm_all", "diff_all", "teacher_view", "erm_view", "diff_view")
    out = []
    for rule in dict.fromkeys(r["rule"] for r in recs):
        for g in GROUPS:
            sel = [r for r in recs if r["rule"] == rule and g in (r["group"], "total")]
            if sel:
                out.append({"rule": rule, "group": g, "classes": len(sel),
                            **{k: float(_nanmean([r[k] for r in sel])) for k in keys}})
    return out


# ------------------------------------------------------------------------------------ 4, 5. KD weights, gradients

def student_runs(sw: _Sweep, rows: Sequence[str], folds: Sequence[int], seeds: Sequence[int], key: str):
    """Yield (row, train_class_counts (C,), metrics lines) of every finished run whose metrics carry ``key``."""
    for r, f, s in product(rows, folds, seeds):
        res = sw.result(sw.run(r, f, s))
        lines = sw.metrics(sw.run(r, f, s)) if res is not None and res.get("stage") == "student" else None
        lines = [x for x in lines or () if x.get(key) is not None]
        if lines:
            yield r, np.asarray(res["train_class_counts"], np.float64), lines


def kd_weight_section(sw, rows, folds, seeds, thresholds) -> list[dict]:
    """Per student row, epoch and group: mean over the group's classes of the Eq. 3 weights, mean over cells."""
    acc: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r, counts, lines in student_runs(sw, rows, folds, seeds, "kd_weights"):
        groups = shot_groups(counts, tuple(thresholds))
        for x in lines:
            w = np.asarray(x["kd_weights"], np.float64)
            for g, idx in groups.items():
                if idx.size:
                    acc[(r, int(x["epoch"]), g)].append(float(w[idx].mean()))
    return [{"row": r, "epoch": e, "group": g, "weight": float(np.mean(v)), "cells": len(v)}
            for (r, e, g), v in sorted(acc.items(), key=lambda kv: (list(rows).index(kv[0][0]), kv[0][1]))]


def grad_ratio_section(sw, rows, folds, seeds, thresholds) -> list[dict]:
    """Per student row and group: mean(grad_kd[group]) / mean(grad_base[group]) at the first and last
    epoch, mean over cells."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r, counts, lines in student_runs(sw, rows, folds, seeds, "grad_kd"):
        groups = {**shot_groups(counts, tuple(thresholds)), "total": np.arange(counts.size)}
        for when, x in (("first", lines[0]), ("last", lines[-1])):
            kd, base = np.asarray(x["grad_kd"], np.float64), np.asarray(x["grad_base"], np.float64)
            for g, idx in groups.items():
                if idx.size and base[idx].mean() > 0:
                    acc[(r, g, when)].append(float(kd[idx].mean() / base[idx].mean()))
    out = []
    for r in dict.fromkeys(k[0] for k in acc):
        for g in GROUPS:
            first, last = acc.get((r, g, "first"), []), acc.get((r, g, "last"), [])
            out.append({"row": r, "group": g, "first": _nanmean(first) if first else math.nan,
                        "last": _nanmean(last) if last else math.nan, "cells": len(last)})
    return out


# ------------------------------------------------------------------------------------ output

def _csv(recs: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO(newline="")
    if recs:
        w = csv.DictWriter(buf, fieldnames=list(recs[0]), lineterminator="\n")
        w.writeheader()
        w.writerows([{k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in r.items()} for r in recs])
    return buf.getvalue()


def _f(x: float, nd: int = 2) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{nd}f}"


def _md(caption: str, header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = [caption, "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, b)) + " |" for b in body]) + "\n"


def _png(path: Path, fig: Any) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _figures(ev: Path, teach: list[dict], kdw: list[dict], grad: list[dict], change: list[dict]) -> None:
    """fig_teacher_vs_erm, fig_kd_weights, fig_grad_ratio, fig_ap_change (each only when it has data)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    if teach:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
        marks = dict(zip(RULES, "osD"))
        for ax, part in zip(axes, ("all", "view")):
            for r in teach:
                ax.scatter(r[f"erm_{part}"], r[f"teacher_{part}"], c=COLOURS[r["group"]], marker=marks[r["rule"]], s=28)
            ax.plot([0, 100], [0, 100], "k--", lw=0.8)
            ax.set(xlabel="ERM val AP (%)", ylabel="teacher val AP (%)", title=f"{part} val images")
        rules = dict.fromkeys(r["rule"] for r in teach)
        axes[0].legend(handles=[plt.Line2D([], [], ls="", marker=marks[k], c="grey", label=k) for k in rules]
                       + [plt.Line2D([], [], ls="", marker="o", c=c, label=g) for g, c in COLOURS.items()], fontsize=7)
        _png(ev / "fig_teacher_vs_erm.png", fig)
    for name, recs, draw in (("kd_weights", kdw, _draw_kd), ("ap_change", change, _draw_change)):
        panels = list(dict.fromkeys(r["row"] for r in recs))
        if panels:
            fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.8), squeeze=False)
            for ax, row in zip(axes[0], panels):
                draw(ax, [r for r in recs if r["row"] == row])
                ax.set_title(row)
            _png(ev / f"fig_{name}.png", fig)
    if grad:
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(grad) / 4), 3.8))
        for i, r in enumerate(grad):
            colour = COLOURS.get(r["group"], "grey")
            ax.bar(i - 0.2, r["first"], 0.4, color=colour, edgecolor="k")
            ax.bar(i + 0.2, r["last"], 0.4, color=colour, edgecolor="k", hatch="//")
        ax.set_xticks(range(len(grad)), [f"{r['row']}\n{r['group']}" for r in grad], rotation=90, fontsize=7)
        ax.set(ylabel="mean |dKD/dz| / mean |dbase/dz|", title="KD vs base gradient: first epoch, last (hatched)")
        _png(ev / "fig_grad_ratio.png", fig)


def _draw_kd(ax: Any, recs: list[dict]) -> None:
    for g, c in COLOURS.items():
        pts = [(r["epoch"], r["weight"]) for r in recs if r["group"] == g]
        if pts:
            ax.plot(*zip(*pts), color=c, marker=".", label=g)
    ax.set(xlabel="epoch", ylabel="Eq. 3 KD weight (group mean)")
    ax.legend(fontsize=7)


def _draw_change(ax: Any, recs: list[dict]) -> None:
    ax.bar(range(len(recs)), [r["change"] for r in recs], color=[COLOURS[r["group"]] for r in recs])
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(recs)), [f"{r['name']} ({r['train_count']:.0f})" for r in recs], rotation=90, fontsize=6)
    ax.set_ylabel("pooled test AP change vs ERM (points)")


# ------------------------------------------------------------------------------------ entry point

def _pivot(recs: Sequence[Mapping[str, Any]], keys: Sequence[str], cell: Any) -> list[list[str]]:
    """Markdown body: one line per distinct ``keys`` of ``recs``, then ``cell(rec)`` for each of GROUPS."""
    by: dict[tuple, dict[str, str]] = defaultdict(dict)
    for r in recs:
        by[tuple(r[k] for k in keys)][r["group"]] = cell(r)
    return [[*map(str, k), *(v.get(g, "") for g in GROUPS)] for k, v in by.items()]


def _interval(x: Mapping[str, Any], key: str = "mean") -> str:
    return f"{_f(x[key])} [{_f(x['lo'])}, {_f(x['hi'])}]"


def pooled_cuts(erm: list[dict], counts: np.ndarray, thresholds: Sequence[float]) -> tuple[float, float]:
    """The (head, tail) cuts of the pooled sections: the runs' own rule (``result.json`` ``groups.mode``, fixed
    when a run predates it) on the folds' mean training ``counts``, so that the pooled groups follow the rule
    of the paired tests (the tertiles under ``method.partition.mode='quantile'``)."""
    mode = (erm[0].get("groups") or {}).get("mode", "fixed")
    hi, lo = shot_cuts(counts, tuple(thresholds), mode=mode)
    return float(hi), float(lo)


def _pooled_files(sw: _Sweep, rows: Sequence[str], comps: list, folds: Sequence[int], seeds: Sequence[int],
                  erm: list[dict], baseline: str, thresholds: Sequence[float], n_boot: int,
                  notes: list[str]) -> tuple[dict[str, str], list[dict], list[dict]]:
    """Sections 2, 3, 6 (the ones grouped by the mean ERM training count): (files, teacher recs, AP-change recs)."""
    counts = np.mean([np.asarray(r["train_class_counts"], np.float64) for r in erm], axis=0)
    thresholds = pooled_cuts(erm, counts, thresholds)
    group_of, names = shot_group_of(counts, thresholds), list(erm[0]["class_names"])
    pooled, ap, secs = pooled_section(sw, rows, comps, folds, seeds, counts, thresholds, n_boot, notes)
    seeds_ok = [s for s in seeds if (baseline, s) in ap]
    files = {"pooled.csv": _csv(pooled), "pooled_counts.csv": _csv([
        {"class": c, "name": names[c], "train_count": counts[c], "group": group_of[c],
         **{f"test_positives_seed{s}": int(ap[(baseline, s)][1][c]) for s in seeds_ok}} for c in range(counts.size)])}
    files["pooled.md"] = (
        _md("**2. Pooled over folds.** Test mAP (points) on each seed's predictions concatenated over all folds "
            "(every image once), mean ± sd over seeds; groups by the mean ERM training count.",
            ["row", "seeds", *GROUPS],
            _pivot([x for x in pooled if x["kind"] == "row"], ("row", "n"),
                   lambda x: f"{_f(x['value'])} ± {_f(x['sd'])}"))
        + "\n" + _md(f"Pooled difference row minus reference (points), mean over seeds [95% paired bootstrap interval, "
                     f"{n_boot} image resamples shared by rows and seeds, {secs:.1f} s]; per-seed intervals in "
                     "pooled.csv, test positives per class in pooled_counts.csv.",
                     ["row", "reference", "seeds", *GROUPS],
                     _pivot([x for x in pooled if x["kind"] == "pair" and x["seed"] == "mean"],
                            ("row", "reference", "n"), lambda x: _interval(x, "value"))))
    teach = teacher_section(sw, folds, seeds, baseline, group_of)
    tg = _teacher_groups(teach)
    files["teachers.csv"] = _csv(teach + [{"rule": r["rule"], "class": "", "group": r["group"], "cells": "",
                                           **{k: v for k, v in r.items() if k not in ("rule", "group", "classes")}}
                                          for r in tg])
    files["teachers.md"] = _md(
        "**3. Are subset teachers better than ERM on their own classes?** Val AP (points), mean over the group's "
        "classes (per class: mean over cells); 'all': every val image, 'view': the val images with a positive "
        "among the teacher's classes.", ["rule", "group", "classes", "teacher all", "ERM all", "diff all",
                                         "teacher view", "ERM view", "diff view"],
        [[r["rule"], r["group"], r["classes"], *(_f(r[k]) for k in list(r)[3:])] for r in tg])
    change = []
    for r in [r for r in rows if r != baseline and r.startswith("ours")]:
        ss = [s for s in seeds if (r, s) in ap and (baseline, s) in ap]
        if ss:
            d, e = (100 * _nanmean([ap[(x, s)][0] for s in ss], 0) for x in (r, baseline))
            change += [{"row": r, "class": int(c), "name": names[c], "train_count": counts[c], "group": group_of[c],
                        "ap_row": d[c], "ap_erm": e[c], "change": d[c] - e[c], "seeds": len(ss)}
                       for c in np.argsort(-counts, kind="stable")]
    files["ap_change.csv"] = _csv(change)
    return files, teach, change


#: the pre-registered primary comparisons (docs/experiments/2026-12-02-cpu-pretrained-sweep.md): each rule's
#: "Ours" against the baseline, total test mAP; Bonferroni over those of them the sweep holds
PRIMARY_ROWS = ("ours_shot", "ours_region", "ours_feature")


def _paired_files(paired: list[dict], cells: list[dict], primary: Sequence[tuple[str, str]],
                  level: float) -> dict[str, str]:
    """paired.csv / .md (fold as unit, primary tests with Bonferroni) and paired_cells.csv / .md (secondary)."""
    unit = paired[0]["unit"] if paired else "fold"
    pct = f"{100 * level:g} %"
    how = ("the seeds of each fold averaged first (they share the fold's test images and teachers), then a paired "
           "t-interval over the fold means, df = folds - 1" if unit == "fold" else
           "ONE fold only (a hold-out split): the (fold, seed) cells are the unit, df = cells - 1; they share the "
           "test images and teachers, so the interval covers seed-to-seed variation only, not the data")
    prim = [r for r in paired if r["primary"] and r["group"] == "total"]
    body = [[r["row"], r["reference"], r["n"], _f(r["df"], 0), _interval(r),
             f"{_f(r['bonferroni_level'] * 100, 2)} %: [{_f(r['bonferroni_lo'])}, {_f(r['bonferroni_hi'])}]",
             verdict(r), verdict(r, "bonferroni_lo", "bonferroni_hi")] for r in prim]
    md = ""
    if prim:
        md = _md(f"**1a. Primary tests** ({len(primary)} pre-registered comparisons, total test mAP, points): mean "
                 f"[{pct} t-interval] and the Bonferroni interval over the {len(primary)} comparisons; {how}.",
                 ["row", "reference", f"{unit}s", "df", f"mean [{pct}]", "Bonferroni", f"verdict {pct}",
                  "verdict Bonferroni"], body) + "\n"
    md += _md(f"**1. Paired, {unit} as unit.** Test mAP of row minus reference (points): mean [{pct} t-interval] "
              f"({unit}s where row is above / {unit}s); {how}. Bonferroni intervals of the primary comparisons in "
              "paired.csv.", ["row", "reference", *GROUPS],
              _pivot(paired, ("row", "reference"), lambda x: f"{_interval(x)} ({x['above']}/{x['n']})"))
    cells_md = _md(f"**1c. Secondary: per (fold, seed) cell.** The same differences with every cell taken as "
                   f"independent ({pct} t-interval, df = cells - 1): narrower than it should be, because the seeds "
                   "of a fold share its test images and teachers; for reference only.", ["row", "reference", *GROUPS],
                   _pivot(cells, ("row", "reference"), lambda x: f"{_interval(x)} ({x['above']}/{x['n']})"))
    files = {"paired.csv": _csv(paired), "paired.md": md, "paired_cells.csv": _csv(cells)}
    if unit == "fold":  # with one fold, section 1 is already per cell
        files["paired_cells.md"] = cells_md
    return files


def _provenance_md(prov: Mapping[str, Any] | None) -> list[str]:
    """The report's provenance lines: code commits of the runs, their machines and span, this collection."""
    if prov is None:
        return []
    commits = ", ".join(f"`{c['commit'] or 'none'}`{' (dirty)' if c['dirty'] else ''} ({c['runs']} runs)"
                        for c in prov["commits"]) or "none recorded"
    machines = "; ".join(f"{m.get('platform')}, {m.get('cpu_count')} CPUs, torch {m.get('torch')}, {m.get('device')}"
                         f"{', ' + m['gpu'] if m.get('gpu') else ''} ({m['runs']} runs)" for m in prov["machines"])
    col = prov["collected"]
    lines = [f"- provenance: {prov['runs']} runs ({prov['with_record']} with a record); code: {commits}",
             f"- runs made {prov['first_start']} to {prov['last_end']} on: {machines or 'not recorded'}",
             f"- collected {col['time']} by `{' '.join(col['command'])}` at code `{col['code']['commit']}`"]
    return lines + [f"- **WARNING**: {w}" for w in prov["warnings"]]


def write_evidence(out: str | Path, folds: Sequence[int], seeds: Sequence[int], rows: Sequence[str], *,
                   ours_rule: str = "shot", thresholds: Sequence[float] = (100, 20), baseline: str = "erm",
                   pairs: Sequence[tuple[str, str]] | None = None, n_boot: int = 2000, figures: bool = True,
                   primary: Sequence[tuple[str, str]] | None = None, level: float = 0.95,
                   store: RunStore | None = None, provenance: Mapping[str, Any] | None = None) -> str:
    """Write every evidence table and figure under ``<out>/evidence/``; returns the markdown report.

    Comparisons: every row R != ``baseline`` against it, then ``pairs`` ((row, reference), e.g.
    ("ours_focal", "focal")). ``primary``: the pre-registered comparisons, Bonferroni-corrected among
    themselves (default: each of :data:`PRIMARY_ROWS` in ``rows`` against ``baseline``). Row names are table
    rows (folder via ``run_dir_name``) or folder names. ``store``: where the runs are read (default: the
    run folders under ``out``); ``provenance``: :func:`recipes.table3.store.provenance`, listed in the report.
    """
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    sw, notes, teach, change = _Sweep(store if store is not None else RunStore(out), ours_rule), [], [], []
    comps = list(dict.fromkeys([(r, baseline) for r in rows if r != baseline] + [tuple(p) for p in pairs or ()]))
    primary = [tuple(p) for p in primary] if primary is not None else [(r, baseline) for r in PRIMARY_ROWS
                                                                      if r in rows and r != baseline]
    comps += [p for p in primary if p not in comps]
    paired, cells = paired_tests(sw, comps, folds, seeds, thresholds, primary, level)
    if paired and paired[0]["unit"] == "cell":
        notes.append("one fold only: the paired tests use the (fold, seed) cells as unit (see section 1)")
    files = _paired_files(paired, cells, primary, level)
    erm = [x for f, s in product(folds, seeds) if (x := sw.result(sw.run(baseline, f, s))) is not None]
    if erm:
        more, teach, change = _pooled_files(sw, rows, comps, folds, seeds, erm, baseline, thresholds, n_boot, notes)
        files.update(more)
    else:
        notes.append(f"no finished {baseline} run: pooled results, teachers and AP change skipped (no class counts)")
    kdw = kd_weight_section(sw, rows, folds, seeds, thresholds)
    grad = grad_ratio_section(sw, rows, folds, seeds, thresholds)
    files.update({"kd_weights.csv": _csv(kdw), "grad_ratio.csv": _csv(grad), "grad_ratio.md": _md(
        "**5. KD gradient relative to the base loss.** Mean over the group's classes of |dKD/dz_c| divided by the "
        "same of the base loss, first epoch → last epoch, mean over cells.", ["row", *GROUPS],
        _pivot(grad, ("row",), lambda x: f"{_f(x['first'])} → {_f(x['last'])}"))})
    if sw.missing:
        notes.append(f"{len(sw.missing)} missing file(s) left out: " + ", ".join(sw.missing[:40])
                     + (f", ... ({len(sw.missing) - 40} more)" if len(sw.missing) > 40 else ""))
    md = [f"# Evidence: folds {list(folds)} x seeds {list(seeds)}, baseline {baseline}, Ours + X rule {ours_rule}",
          "", *_provenance_md(provenance), *(f"- {n}" for n in notes), "",
          *(files[k] for k in ("paired.md", "paired_cells.md", "pooled.md", "teachers.md", "grad_ratio.md")
            if k in files),
          "KD weights per epoch (4): kd_weights.csv, fig_kd_weights.png; per-class pooled AP change (6): "
          "ap_change.csv, fig_ap_change.png; teachers per class: teachers.csv, fig_teacher_vs_erm.png.\n"]
    files["evidence.md"] = "\n".join(md)
    ev = Path(out) / "evidence"
    ev.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        atomic_write_text(ev / name, text)
    if figures:
        _figures(ev, teach, kdw, grad, change)
    return files["evidence.md"]
