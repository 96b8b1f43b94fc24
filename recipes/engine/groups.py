"""The head / medium / tail groups a run reports, by ``method.partition.mode``.

``fixed`` (default): the cuts are ``method.partition.thresholds`` (training positives, (100, 20)), the same
for every data set; on a large one (the synthetic set at 12,000 images) no class falls below 20 and the
tail is empty. ``quantile``: the cuts are the 2/3 and 1/3 quantiles of the fold's training counts over
ALL its classes (:func:`rskd_loss.metrics.shot_cuts`), so that each group holds about a third of the
classes whatever the data's size. A run of a subset of the classes (a teacher) keeps the data set's cuts:
a class is in the same group in every run of the fold.

The rule and its cuts go into ``result.json`` (``groups``: ``{"mode", "cuts"}``); the sweep's collection
(:func:`recipes.table3.collect.run_group_map`) applies the recorded cuts to the recorded counts, so that a
table recomputed from the runs' records has the groups the runs reported.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rskd_loss.metrics import mean_average_precision, shot_cuts

__all__ = ["group_rule", "cut_groups", "group_scores"]


def group_rule(partition: Mapping[str, Any], train_counts: Sequence[float]) -> dict[str, Any]:
    """``{"mode", "cuts": [t_head, t_tail]}`` of ``method.partition`` on the fold's training counts (all
    classes); the cuts are plain floats (exact in JSON)."""
    hi, lo = shot_cuts(np.asarray(train_counts), tuple(partition["thresholds"]), mode=partition["mode"])
    return {"mode": partition["mode"], "cuts": [float(hi), float(lo)]}


def cut_groups(counts: Sequence[float], cuts: Sequence[float]) -> dict[str, np.ndarray]:
    """Class indices per group at ``cuts = (t_head, t_tail)``: head ``n >= t_head``, medium ``t_tail <= n <
    t_head``, tail ``n < t_tail`` (:func:`rskd_loss.metrics.shot_groups`' rule; the cuts may be equal or 0,
    as tertiles can be)."""
    n = np.asarray(counts, dtype=np.float64)
    hi, lo = float(cuts[0]), float(cuts[1])
    return {"head": np.flatnonzero(n >= hi), "medium": np.flatnonzero((n >= lo) & (n < hi)),
            "tail": np.flatnonzero(n < lo)}


def group_scores(ap: Sequence[float], counts: Sequence[float], cuts: Sequence[float]) -> dict[str, float]:
    """Head / medium / tail / total mAP as :func:`rskd_loss.metrics.group_map` (NaN classes left out, an
    empty group NaN, total over every defined class), at ``cuts``, without its warning."""
    a = np.asarray(ap, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {g: mean_average_precision(a[idx]) if idx.size else float("nan")
               for g, idx in cut_groups(counts, cuts).items()}
        out["total"] = mean_average_precision(a)
    return out
