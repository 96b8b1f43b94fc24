"""Per-class average precision and head / medium / tail mAP (the paper's Table 3 columns).

:func:`shot_groups` is the one definition of head / medium / tail in this project: the metrics
(:func:`group_map`), the shot partition (:class:`rskd_loss.partition.SubsetPartitioner` with
``rule="shot"``) and the recipes' tables and figures all call it.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch

from .validation import as_class_counts, check_thresholds

__all__ = [
    "average_precision_per_class",
    "mean_average_precision",
    "shot_cuts",
    "shot_groups",
    "shot_group_of",
    "group_map",
    "GROUPS",
    "SHOT_MODES",
]

GROUPS = ("head", "medium", "tail")
SHOT_MODES = ("fixed", "quantile")


def _as_2d_float(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    elif not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {x.shape}")
    return x


def average_precision_per_class(scores: object, targets: object) -> np.ndarray:
    r"""Average precision of every class, equal to scikit-learn's ``average_precision_score``.

    For one class, with the samples sorted by decreasing score and :math:`P_k`, :math:`R_k` the
    precision and recall at the k-th distinct score threshold (tied scores form one threshold),

    .. math:: \mathrm{AP} = \sum_k (R_k - R_{k-1})\, P_k, \qquad R_0 = 0,

    the step-wise (non-interpolated) definition that scikit-learn uses. A class with no positive
    sample has no defined AP and gets NaN (scikit-learn would warn and return 0 or -0).

    Args:
        scores: (N, C) scores (logits or probabilities: AP depends only on their order), finite.
        targets: (N, C) multi-hot {0, 1}.

    Returns:
        (C,) float64 numpy array, NaN where a class has no positive.

    Example:
        >>> average_precision_per_class(np.array([[0.9], [0.8], [0.1]]), np.array([[1], [0], [1]]))
        array([0.83333333])
    """
    s = _as_2d_float(scores, "scores")
    y = _as_2d_float(targets, "targets")
    if s.shape != y.shape:
        raise ValueError(f"targets must have the same shape as scores, expected {s.shape}, got {y.shape}")
    if not np.isfinite(s).all():
        r, c = np.argwhere(~np.isfinite(s))[0]
        raise ValueError(f"scores must be finite, got {s[r, c]} at index ({r}, {c})")
    if not np.isin(y, (0.0, 1.0)).all():
        r, c = np.argwhere(~np.isin(y, (0.0, 1.0)))[0]
        raise ValueError(f"targets must be multi-hot with values in {{0, 1}}, got {y[r, c]} at index ({r}, {c})")
    n, num_classes = s.shape
    ap = np.full(num_classes, np.nan)
    for c in range(num_classes):
        order = np.argsort(-s[:, c], kind="mergesort")
        s_c, y_c = s[order, c], y[order, c]
        positives = y_c.sum()
        if positives == 0:
            continue
        last_of_tie = np.r_[np.flatnonzero(np.diff(s_c)), n - 1]  # end of each distinct threshold
        tp = np.cumsum(y_c)[last_of_tie]
        precision = tp / (last_of_tie + 1)
        recall_step = np.diff(np.r_[0.0, tp]) / positives
        ap[c] = float(np.sum(recall_step * precision))
    return ap


def mean_average_precision(ap: object) -> float:
    """Mean of the defined (non-NaN) per-class APs; NaN if none is defined."""
    a = np.asarray(ap, dtype=np.float64)
    return float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")


def _exact_quantile(sorted_values: list[Fraction], num: int, den: int) -> Fraction:
    """numpy's default ('linear') quantile at p = num/den, computed exactly with rationals."""
    n = len(sorted_values)
    pos = Fraction(num * (n - 1), den)
    lo = math.floor(pos)
    frac = pos - lo
    if frac == 0:
        return sorted_values[lo]
    return sorted_values[lo] + frac * (sorted_values[lo + 1] - sorted_values[lo])


def _float_at_or_above(q: Fraction) -> float:
    """The smallest float >= ``q``: for every float count c, ``c >= q`` exactly iff ``c >=`` this float."""
    f = float(q)  # correctly rounded
    return math.nextafter(f, math.inf) if Fraction(f) < q else f


def shot_cuts(
    class_counts: object, thresholds: Sequence[float] = (100, 20), *, mode: str = "fixed"
) -> tuple[float, float]:
    """The cuts ``(t_head, t_tail)`` that :func:`shot_groups` applies.

    ``mode="fixed"``: ``thresholds`` (checked: positive, finite, ``t_head > t_tail``).
    ``mode="quantile"``: the 2/3 and 1/3 quantiles of the counts (numpy's default linear
    interpolation, computed exactly with rationals and returned as the smallest float at or above
    the exact value, so that comparing a count with the returned cut gives the exact answer: tied
    counts always fall into one group and a count equal to a cut goes to the upper group);
    ``thresholds`` is then unused. The quantile cuts may be equal (no medium class).
    """
    if mode not in SHOT_MODES:
        raise ValueError(f"mode must be one of {SHOT_MODES}, got {mode!r}")
    hi, lo = check_thresholds(thresholds)
    if mode == "fixed":
        return hi, lo
    ordered = sorted(Fraction(c) for c in as_class_counts(class_counts).tolist())
    return (
        _float_at_or_above(_exact_quantile(ordered, 2, 3)),
        _float_at_or_above(_exact_quantile(ordered, 1, 3)),
    )


def shot_groups(
    class_counts: object, thresholds: Sequence[float] = (100, 20), *, mode: str = "fixed"
) -> dict[str, np.ndarray]:
    r"""Class indices of the head, medium and tail groups by TRAINING positives :math:`n_i`.

    .. math::

        \text{head} = \{i : n_i \ge t_h\},\quad
        \text{medium} = \{i : t_t \le n_i < t_h\},\quad
        \text{tail} = \{i : n_i < t_t\}

    with ``(t_h, t_t) = thresholds`` (default ``(100, 20)``): a class with exactly 100 positives is
    head, one with exactly 20 is medium. These are the many / medium / few-shot numbers of OLTR (Liu
    et al., CVPR 2019) and the head / middle / tail split of the Distribution-Balanced loss (Wu et
    al., ECCV 2020), whose ``create_longtail_dataset.py`` uses these same boundaries (see
    :class:`rskd_loss.partition.SubsetPartitioner` for the other repositories' ``<=`` / ``>``
    variants). ``mode="quantile"`` applies the same rule at the count tertiles (:func:`shot_cuts`).

    A group may be empty; every class is in exactly one group. Each value is a sorted int64 array.

    Example:
        >>> {g: idx.tolist() for g, idx in shot_groups([100, 99, 20, 19]).items()}
        {'head': [0], 'medium': [1, 2], 'tail': [3]}
    """
    counts = as_class_counts(class_counts).numpy()
    hi, lo = shot_cuts(counts, thresholds, mode=mode)
    return {
        "head": np.flatnonzero(counts >= hi),
        "medium": np.flatnonzero((counts >= lo) & (counts < hi)),
        "tail": np.flatnonzero(counts < lo),
    }


def shot_group_of(
    class_counts: object, thresholds: Sequence[float] = (100, 20), *, mode: str = "fixed"
) -> list[str]:
    """The group name of every class, by :func:`shot_groups` (the same arguments).

    Example:
        >>> shot_group_of([100, 99, 20, 19])
        ['head', 'medium', 'medium', 'tail']
    """
    names = [""] * as_class_counts(class_counts).numel()
    for g, idx in shot_groups(class_counts, thresholds, mode=mode).items():
        for i in idx.tolist():
            names[i] = g
    return names


def group_map(
    ap: object, class_counts: object, thresholds: Sequence[float] = (100, 20)
) -> dict[str, float]:
    """Head / medium / tail / total mAP from per-class AP and the TRAINING class counts.

    Classes with NaN AP (no positive in the evaluated split) are left out of every mean, with a
    ``UserWarning`` that names them. A group with no class left is NaN. ``total`` is the mean over all
    classes with a defined AP (not the mean of the three group means).

    Example:
        >>> group_map([0.9, 0.5, 0.1, float("nan")], [500, 50, 5, 2])
        {'head': 0.9, 'medium': 0.5, 'tail': 0.1, 'total': 0.5}
    """
    a = np.asarray(ap.detach().cpu() if isinstance(ap, torch.Tensor) else ap, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"ap must be 1-D (C,), got shape {a.shape}")
    groups = shot_groups(as_class_counts(class_counts, a.size), thresholds)
    undefined = np.flatnonzero(np.isnan(a))
    if undefined.size:
        warnings.warn(
            f"group_map: {undefined.size} class(es) have no defined AP (no positive in the evaluated "
            f"split) and are left out of the means: {undefined.tolist()[:20]}",
            UserWarning,
            stacklevel=2,
        )
    out = {g: mean_average_precision(a[idx]) if idx.size else float("nan") for g, idx in groups.items()}
    out["total"] = mean_average_precision(a)
    return out
