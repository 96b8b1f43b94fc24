"""Every registry baseline X wrapped as "RSKD + X": with all KD weights 0 the wrapper equals X.

``WeightedSubsetKDLoss(X, num_classes=C)`` (rskd_loss/kd.py) with ``set_weights(zeros)`` must give X's
value and X's gradient, for every X of :func:`rskd_loss.baselines.registry.available_criteria` and for every
reduction; ``oltr`` also needs its ``features=`` passed through the wrapper.
"""
from __future__ import annotations

import pytest
import torch
from loss_helpers import value_and_grad

from rskd_loss.baselines.registry import available_criteria, build_criterion
from rskd_loss.kd import WeightedSubsetKDLoss

C = 5
COUNTS = [60, 25, 9, 3, 1]
N_IMG = 100
NAMES = [n for n in available_criteria() if n != "oltr"]


def _batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(8, C, generator=g, dtype=torch.float64) * 2
    targets = torch.randint(0, 2, (8, C), generator=g).to(torch.float64)
    targets[0] = 0  # an image without positives
    teacher = torch.randn(8, C, generator=g, dtype=torch.float64) * 3
    return logits, targets, teacher


def test_registry_names_covered() -> None:
    assert set(NAMES) == {"bce", "erm", "rw", "focal", "ldam", "db", "asl"}


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", NAMES)
def test_zero_kd_weights_equal_base(name: str, reduction: str) -> None:
    logits, targets, teacher = _batch(seed=NAMES.index(name))
    extra = {"drw_epoch": 0} if name in ("rw", "ldam") else {}
    base = build_criterion(name, class_counts=COUNTS, num_images=N_IMG, reduction=reduction, **extra).double()
    crit = WeightedSubsetKDLoss(base, num_classes=C)
    crit.set_weights(torch.zeros(C))
    v_wrap, g_wrap = value_and_grad(crit, logits, targets, teacher)
    v_base, g_base = value_and_grad(base, logits, targets)
    assert v_wrap.shape == v_base.shape
    torch.testing.assert_close(v_wrap, v_base, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_wrap, g_base, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_nonzero_kd_weights_change_the_loss(name: str) -> None:
    # the check above could pass trivially if the wrapper ignored its KD term; with weights 1 it must differ
    logits, targets, teacher = _batch(seed=10)
    base = build_criterion(name, class_counts=COUNTS, num_images=N_IMG).double()
    crit = WeightedSubsetKDLoss(base, num_classes=C)
    crit.set_weights(torch.ones(C))
    assert crit(logits, targets, teacher).item() > base(logits, targets).item()


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("stage", [1, 2])
def test_zero_kd_weights_equal_oltr_with_features_passed_through(stage: int, reduction: str) -> None:
    logits, targets, teacher = _batch(seed=20 + stage)
    features = torch.randn(8, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    base = build_criterion("oltr", class_counts=COUNTS, feat_dim=6, stage=stage, reduction=reduction).double()
    if stage == 2:
        base.set_centroids(torch.randn(C, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    crit = WeightedSubsetKDLoss(base, num_classes=C)
    crit.set_weights(torch.zeros(C))
    v_wrap, g_wrap = value_and_grad(crit, logits, targets, teacher, features=features)
    v_base, g_base = value_and_grad(base, logits, targets, features=features)
    torch.testing.assert_close(v_wrap, v_base, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_wrap, g_base, rtol=1e-12, atol=1e-12)
    crit.set_weights(torch.ones(C))
    assert not torch.allclose(crit(logits, targets, teacher, features=features), base(logits, targets, features=features))
