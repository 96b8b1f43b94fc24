"""The shared input checks: messages name expected and given values; value checks can be switched off."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rskd_loss.validation import (
    as_class_counts,
    as_class_metric,
    as_class_names,
    check_int,
    check_logits_targets,
    compute_dtype,
    value_checks,
    value_checks_enabled,
)


def test_value_checks_switch_restores_state() -> None:
    logits, targets = torch.zeros(2, 2), torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    with pytest.raises(ValueError, match=r"got 2.0 at index \(0, 1\)"):
        check_logits_targets(logits, targets)
    assert value_checks_enabled()
    with value_checks(False):
        assert not value_checks_enabled()
        check_logits_targets(logits, targets)  # shape checks only: passes
        with pytest.raises(ValueError, match=r"same shape"):
            check_logits_targets(logits, targets[:1])  # shape checks stay on
    assert value_checks_enabled()


def test_logits_targets_errors() -> None:
    with pytest.raises(TypeError, match=r"logits must be a torch.Tensor, got list"):
        check_logits_targets([[0.0]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match=r"logits must be 2-D \(N, C\), got 1-D with shape \(3,\)"):
        check_logits_targets(torch.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor, got torch.int64"):
        check_logits_targets(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"logits must be finite, got inf at index \(1, 0\)"):
        check_logits_targets(torch.tensor([[0.0], [float("inf")]]), torch.zeros(2, 1))
    z, y = check_logits_targets(torch.zeros(2, 2, dtype=torch.float64), torch.ones(2, 2, dtype=torch.uint8))
    assert y.dtype == torch.float64


def test_class_counts_and_names_errors() -> None:
    torch.testing.assert_close(as_class_counts([3, 1]), torch.tensor([3.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"class_counts must have 3 entries \(one per class\), got 2"):
        as_class_counts([3, 1], 3)
    with pytest.raises(ValueError, match=r"class_counts must be >= 0, got -1 for class 1"):
        as_class_counts([3, -1])
    with pytest.raises(ValueError, match=r"must be > 0 for every class .*got 0 for class 2 \(and 1 more: \[3\]\)"):
        as_class_counts([3, 1, 0, 0], allow_zero=False)
    with pytest.raises(TypeError, match=r"class_counts must be a sequence of numbers or a tensor, got str"):
        as_class_counts("many")
    with pytest.raises(ValueError, match=r"class_names must be unique, got 'DR' at positions 0 and 2"):
        as_class_names(["DR", "MH", "DR"])


def test_check_int() -> None:
    assert check_int(3, "k") == 3
    for v in (np.int64(4), torch.tensor(4)):  # numpy integers and 0-d integer tensors are ints too
        out = check_int(v, "k", minimum=4)
        assert out == 4 and type(out) is int
    assert check_int(-7, "seed") == -7  # no minimum: any int
    with pytest.raises(TypeError, match=r"k must be an int, got bool True"):
        check_int(True, "k")
    with pytest.raises(TypeError, match=r"k must be an int, got float 2.0"):
        check_int(2.0, "k")
    with pytest.raises(TypeError, match=r"k must be an int, got str '2'"):
        check_int("2", "k")
    with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
        check_int(0, "num_classes", minimum=1)
    with pytest.raises(ValueError, match=r"epoch must be >= 0, got -1"):
        check_int(-1, "epoch", minimum=0)


def test_as_class_metric_and_compute_dtype() -> None:
    t = as_class_metric([0.5, float("nan"), 0.0], "ap")
    assert t.dtype == torch.float64 and torch.isnan(t[1]) and t[0] == 0.5
    with pytest.raises(ValueError, match=r"ap must be finite or NaN \(undefined\), got inf for class 1"):
        as_class_metric([0.5, float("inf")], "ap")
    with pytest.raises(ValueError, match=r"ap must be >= 0 .*got -0.5 for class 0"):
        as_class_metric([-0.5], "ap")
    assert compute_dtype(torch.float16) == torch.float32 and compute_dtype(torch.bfloat16) == torch.float32
    assert compute_dtype(torch.float64) == torch.float64 and compute_dtype(torch.float32) == torch.float32
