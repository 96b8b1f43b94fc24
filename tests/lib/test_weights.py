"""Eq. 3: the dynamic per-class KD weights."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rskd_loss import KDWeightSchedule, kd_weights

NAN = float("nan")

# (delta, teacher metric A_T, student metric A_S, expected weight, why)
# Values chosen exactly representable in binary so the boundaries are exact.
CASES = [
    (0.5, 0.5, 0.25, 1.0, "delta*A_T == A_S: first branch (>=) gives 1"),
    (0.75, 1.0, 0.75, 1.0, "delta*A_T == A_S at another delta"),
    (0.6, 0.9, 0.1, 1.0, "student far below the teacher"),
    (0.5, 1.0, 0.75, 0.5, "(1 - 0.75) / (1 * 0.5) = 0.5"),
    (0.6, 0.8, 0.68, 0.375, "(0.8 - 0.68) / (0.8 * 0.4) = 0.12 / 0.32 = 0.375"),
    (0.5, 0.5, 0.5, 0.0, "A_S == A_T: (A_T - A_S) = 0"),
    (0.6, 0.5, 0.75, 0.0, "A_S > A_T: Eq. 3 gives -0.5 / 0.2 = -2.5, clamped to 0"),
    (0.6, 0.9, NAN, 1.0, "student metric undefined (no validation positives): keep 1"),
    (0.6, NAN, 0.3, 1.0, "teacher metric undefined: keep 1"),
    (0.6, 0.0, 0.0, 1.0, "both 0: delta*0 >= 0, first branch"),
    (0.6, 0.0, 0.25, 0.0, "teacher 0, student above: student beats teacher, 0 (no division by zero)"),
    (0.5, 50.0, 37.5, 0.5, "percent scale: Eq. 3 is scale free, (50 - 37.5) / (50 * 0.5) = 0.5"),
]


@pytest.mark.parametrize("delta, teacher, student, expected, why", CASES, ids=[c[4] for c in CASES])
def test_eq3_table(delta: float, teacher: float, student: float, expected: float, why: str) -> None:
    w = kd_weights([student], [teacher], delta=delta)
    assert w.dtype == torch.float32 and w.shape == (1,)
    assert w.item() == pytest.approx(expected, abs=1e-7), why


def test_eq3_vectorised_and_schedule() -> None:
    # evaluate all cases that share delta = 0.6 in one call, as update_weights does
    rows = [c for c in CASES if c[0] == 0.6]
    schedule = KDWeightSchedule(delta=0.6)
    got = schedule(student_metric=torch.tensor([r[2] for r in rows]), teacher_metric=[r[1] for r in rows])
    torch.testing.assert_close(got, torch.tensor([r[3] for r in rows]))


@settings(max_examples=200, deadline=None)
@given(
    delta=st.floats(0.05, 0.95),
    teacher=st.floats(0.01, 1.0),
    s1=st.floats(0.0, 1.0),
    s2=st.floats(0.0, 1.0),
)
def test_eq3_bounded_monotone_continuous(delta: float, teacher: float, s1: float, s2: float) -> None:
    lo, hi = sorted((s1, s2))
    w = kd_weights([lo, hi, delta * teacher], [teacher, teacher, teacher], delta=delta).double()
    assert 0.0 <= w[0] <= 1.0 and 0.0 <= w[1] <= 1.0
    assert w[0] >= w[1] - 1e-6  # a better student never gets more distillation
    # at the switch point both branches agree (continuity): (A_T - d*A_T) / (A_T (1 - d)) = 1
    assert w[2].item() == pytest.approx(1.0, abs=1e-6)


def test_eq3_errors() -> None:
    for bad in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=rf"delta must be in \(0, 1\), got {bad}"):
            KDWeightSchedule(delta=bad)
    with pytest.raises(ValueError, match=r"one value per class each, got 2 and 3"):
        kd_weights([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match=r"student_metric must be >= 0 .*got -0.5 for class 1"):
        kd_weights([0.1, -0.5], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"teacher_metric must be finite or NaN .*got inf for class 0"):
        kd_weights([0.1], [math.inf])
    with pytest.raises(ValueError, match=r"must be 1-D \(C,\).*got shape \(2, 1\)"):
        kd_weights([[0.1], [0.2]], [0.1, 0.2])
    with pytest.raises(TypeError, match=r"student_metric must be a sequence of numbers or a tensor"):
        kd_weights("high", [0.1])
