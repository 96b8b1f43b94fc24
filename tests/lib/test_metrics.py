"""Per-class AP against scikit-learn, and head / medium / tail mAP on hand-made cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from rskd_loss.metrics import average_precision_per_class, group_map, mean_average_precision, shot_groups


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_ap_equals_sklearn(seed: int, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    n, c = 200, 12
    scores = rng.normal(size=(n, c))
    if ties:  # heavy ties: scores rounded to 1 decimal, as from a quantised or saturated model
        scores = np.round(scores, 1)
    targets = (rng.random((n, c)) < np.linspace(0.02, 0.6, c)).astype(np.int64)
    targets[:, 0] = 0  # a class with no positive
    got = average_precision_per_class(torch.from_numpy(scores), torch.from_numpy(targets))
    assert math.isnan(got[0])
    for j in range(1, c):
        assert got[j] == pytest.approx(average_precision_score(targets[:, j], scores[:, j]), abs=1e-12)


def test_ap_hand_case() -> None:
    # Sorted by score: y = 1, 0, 1.  Thresholds: after 1st: P = 1/1, R = 1/2; after 3rd: P = 2/3, R = 1.
    # AP = (1/2 - 0) * 1 + (1 - 1/2) * 2/3 = 1/2 + 1/3 = 5/6.
    # Column 2 ties the top two scores (0.5, 0.5) with y = 0, 1: one threshold with P = 1/2, R = 1/2;
    # then y = 1 at 0.1: P = 2/3, R = 1.  AP = 1/2 * 1/2 + 1/2 * 2/3 = 1/4 + 1/3 = 7/12.
    scores = np.array([[0.9, 0.5], [0.8, 0.5], [0.1, 0.1]])
    targets = np.array([[1, 0], [0, 1], [1, 1]])
    np.testing.assert_allclose(average_precision_per_class(scores, targets), [5 / 6, 7 / 12], rtol=1e-12)


def test_ap_errors() -> None:
    with pytest.raises(ValueError, match=r"targets must have the same shape as scores, expected \(3, 2\), got \(3, 1\)"):
        average_precision_per_class(np.zeros((3, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match=r"values in \{0, 1\}, got 2.0 at index \(1, 0\)"):
        average_precision_per_class(np.zeros((3, 1)), np.array([[0], [2], [1]]))
    with pytest.raises(ValueError, match=r"scores must be finite, got nan"):
        average_precision_per_class(np.array([[np.nan], [0.0]]), np.array([[0], [1]]))
    with pytest.raises(TypeError, match=r"scores must be a torch.Tensor or numpy.ndarray, got list"):
        average_precision_per_class([[0.1]], np.array([[1]]))
    with pytest.raises(ValueError, match=r"must be 2-D \(N, C\), got shape \(3,\)"):
        average_precision_per_class(np.zeros(3), np.zeros(3))


def test_shot_groups_boundaries() -> None:
    # head >= 100, medium [20, 100), tail < 20
    groups = shot_groups([100, 99, 20, 19, 0, 500])
    assert groups["head"].tolist() == [0, 5]
    assert groups["medium"].tolist() == [1, 2]
    assert groups["tail"].tolist() == [3, 4]
    with pytest.raises(ValueError, match=r"strictly decreasing .*got thresholds\[0\]=20 and thresholds\[1\]=100"):
        shot_groups([1, 2], thresholds=(20, 100))


def test_group_map_hand_case() -> None:
    # counts: head = {0, 1}, medium = {2, 3}, tail = {4, 5}; class 5 has NaN AP (no test positive).
    ap = [0.9, 0.7, 0.6, 0.2, 0.3, float("nan")]
    counts = [1000, 150, 60, 20, 5, 1]
    with pytest.warns(UserWarning, match=r"1 class\(es\) have no defined AP .*\[5\]"):
        got = group_map(ap, counts)
    # head = (0.9 + 0.7) / 2 = 0.8; medium = (0.6 + 0.2) / 2 = 0.4; tail = 0.3 (class 5 left out);
    # total = (0.9 + 0.7 + 0.6 + 0.2 + 0.3) / 5 = 2.7 / 5 = 0.54 (a mean over classes, not over groups)
    assert got == pytest.approx({"head": 0.8, "medium": 0.4, "tail": 0.3, "total": 0.54})


def test_group_map_empty_group_and_errors() -> None:
    got = group_map([0.5, 0.25], [500, 300])
    assert got["head"] == pytest.approx(0.375) and math.isnan(got["tail"]) and math.isnan(got["medium"])
    with pytest.raises(ValueError, match=r"class_counts must have 2 entries \(one per class\), got 3"):
        group_map([0.5, 0.25], [1, 2, 3])
    assert math.isnan(mean_average_precision([float("nan")]))
