"""Every criterion compiles to one graph, alone and inside WeightedSubsetKDLoss; eager checks still fire.

The value checks of rskd_loss/validation.py read tensor values (``.item()``, ``bool(tensor)``); under
``torch.compile`` each was a graph break. They are skipped while dynamo traces and run in eager mode.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

from rskd_loss.baselines.oltr import OLTRLoss
from rskd_loss.baselines.registry import available_criteria, build_criterion
from rskd_loss.kd import WeightedSubsetKDLoss
from rskd_loss.validation import value_checks_enabled

C, N, D = 4, 6, 8
COUNTS = [30, 10, 4, 1]
N_IMG = 40
NAMES = available_criteria()


def _criterion(name: str):
    """The criterion and the extra keyword arguments its forward needs (OLTR: initialised centroids and
    the direct features)."""
    if name == "oltr":
        crit = build_criterion("oltr", COUNTS, N_IMG, feat_dim=D)
        crit.set_centroids(torch.randn(C, D, generator=torch.Generator().manual_seed(1)))
        return crit, {"features": torch.randn(N, D, generator=torch.Generator().manual_seed(2))}
    extra = {"drw_epoch": 0} if name in ("rw", "ldam") else {}
    return build_criterion(name, COUNTS, N_IMG, **extra), {}


def _batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(N, C, generator=g, requires_grad=True)
    targets = torch.randint(0, 2, (N, C), generator=g).float()
    teacher = torch.randn(N, C, generator=g)
    return logits, targets, teacher


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _explain(fn, *args):
    out = torch._dynamo.explain(fn)(*args)
    reasons = [r.reason.splitlines()[0] for r in out.break_reasons]
    return out.graph_count, out.graph_break_count, reasons


def test_every_registered_criterion_is_covered() -> None:
    assert set(NAMES) == {"bce", "erm", "rw", "focal", "ldam", "db", "oltr", "asl"}


@pytest.mark.parametrize("wrapped", [False, True], ids=["alone", "wrapped"])
@pytest.mark.parametrize("name", NAMES)
def test_one_graph(name: str, wrapped: bool) -> None:
    assert value_checks_enabled()  # the default: checks on in eager mode
    crit, extra = _criterion(name)
    logits, targets, teacher = _batch()
    if wrapped:
        kd = WeightedSubsetKDLoss(crit, num_classes=C)
        graphs, breaks, reasons = _explain(lambda z, y, t: kd(z, y, t, **extra), logits, targets, teacher)
    else:
        graphs, breaks, reasons = _explain(lambda z, y: crit(z, y, **extra), logits, targets)
    assert (graphs, breaks) == (1, 0), reasons


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64])
def test_one_graph_with_teacher_mask(mask_dtype: torch.dtype) -> None:
    # an integer mask is value-checked for 0/1 in eager mode
    kd = WeightedSubsetKDLoss(build_criterion("asl"), num_classes=C)
    logits, targets, teacher = _batch()
    mask = torch.tensor([1, 0, 1, 1], dtype=mask_dtype)
    graphs, breaks, reasons = _explain(lambda z, y, t: kd(z, y, t, teacher_mask=mask), logits, targets, teacher)
    assert (graphs, breaks) == (1, 0), reasons


def test_compiled_equals_eager() -> None:
    kd = WeightedSubsetKDLoss(build_criterion("asl", gamma_pos=0.0), num_classes=C)
    logits, targets, teacher = _batch()
    compiled = torch.compile(kd, backend="eager", fullgraph=True)
    z1, z2 = logits.detach().clone().requires_grad_(), logits.detach().clone().requires_grad_()
    v1, v2 = kd(z1, targets, teacher), compiled(z2, targets, teacher)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(v2, v1, rtol=0, atol=0)
    torch.testing.assert_close(z2.grad, z1.grad, rtol=0, atol=0)


@pytest.mark.parametrize("wrapped", [False, True], ids=["alone", "wrapped"])
@pytest.mark.parametrize("name", NAMES)
def test_eager_value_checks_still_fire(name: str, wrapped: bool) -> None:
    crit, extra = _criterion(name)
    fn = WeightedSubsetKDLoss(crit, num_classes=C) if wrapped else crit
    logits, targets, teacher = _batch()
    args = (teacher,) if wrapped else ()
    bad = logits.detach().clone()
    bad[2, 1] = float("nan")
    with pytest.raises(ValueError, match=r"logits must be finite, got nan at index \(2, 1\)"):
        fn(bad, targets, *args, **extra)
    two = targets.clone()
    two[0, 3] = 2.0
    with pytest.raises(ValueError, match=r"targets must be multi-hot with values in \{0, 1\}, got 2.0"):
        fn(logits, two, *args, **extra)


def test_checks_back_on_after_compiling() -> None:
    kd = WeightedSubsetKDLoss(build_criterion("asl"), num_classes=C)
    logits, targets, teacher = _batch()
    torch.compile(kd, backend="eager", fullgraph=True)(logits, targets, teacher)
    assert value_checks_enabled()
    with pytest.raises(ValueError, match=r"logits must be finite, got inf at index \(0, 0\)"):
        kd(torch.full((N, C), float("inf")), targets, teacher)


def test_oltr_uninitialised_centroids_refused_when_compiled() -> None:
    crit = OLTRLoss(C, D)
    compiled = torch.compile(crit, backend="eager")
    logits, targets, _ = _batch()
    features = torch.randn(N, D)
    with pytest.raises(RuntimeError, match="OLTRLoss stage 2 needs initialised centroids"):
        compiled(logits, targets, features=features)
    crit.set_centroids(torch.zeros(C, D))  # the Python copy of the flag changes: dynamo recompiles
    torch.testing.assert_close(compiled(logits, targets, features=features), crit(logits, targets, features=features))
    fresh = OLTRLoss(C, D)
    fresh.load_state_dict(crit.state_dict())  # the flag travels with the state dict
    torch.testing.assert_close(
        torch.compile(fresh, backend="eager")(logits, targets, features=features),
        crit(logits, targets, features=features),
    )
