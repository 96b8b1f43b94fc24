"""The shared input checks: messages name expected and given values; value checks can be switched off."""
from __future__ import annotations

import pytest
import torch

from rskd_loss.validation import as_class_counts, as_class_names, check_logits_targets, value_checks, value_checks_enabled


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
