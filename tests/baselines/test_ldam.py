"""Multi-label LDAM loss, DRW and the cosine head: baselines/ldam.py."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import random_batch, value_and_grad

from rskd_loss.baselines.bce import bce_loss
from rskd_loss.baselines.ldam import LDAMLoss, NormedLinear, ldam_loss, ldam_margins
from rskd_loss.baselines.reweight import class_weights

REDUCTIONS = ("mean", "sum", "none")


_data = functools.partial(random_batch, c=5, scale=1.0)
_value_and_grad = value_and_grad


# ---------------------------------------------------------------- margins by hand


def test_margins_hand_values() -> None:
    # n^(-1/4): 16 -> 1/2, 1 -> 1, 81 -> 1/3, 256 -> 1/4; the largest (n = 1) gets max_m = 0.5
    m = ldam_margins([16, 1, 81, 256], max_m=0.5)
    torch.testing.assert_close(m, torch.tensor([0.25, 0.5, 0.5 / 3, 0.125], dtype=torch.float64))
    # default max_m = 0.5 and rarest class gets it even when it is not the last one
    m2 = ldam_margins([10, 1000, 3])
    assert m2.argmax().item() == 2 and m2.max().item() == pytest.approx(0.5, rel=1e-15)
    assert m2[0].item() == pytest.approx(0.5 * (3 / 10) ** 0.25, rel=1e-12)
    assert torch.equal(ldam_margins([5, 7], max_m=0.0), torch.zeros(2, dtype=torch.float64))


def test_module_margins_buffer() -> None:
    crit = LDAMLoss([16, 1, 81, 256])
    assert "margins" in dict(crit.named_buffers())
    torch.testing.assert_close(crit.margins, torch.tensor([0.25, 0.5, 0.5 / 3, 0.125]))


# ---------------------------------------------------------------- equivalences


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_margin_unit_scale_equals_bce(reduction: str) -> None:
    logits, targets = _data(seed=1, scale=3.0)
    crit = LDAMLoss([50, 20, 9, 4, 1], max_m=0.0, s=1.0, reduction=reduction).double()
    v1, g1 = _value_and_grad(crit, logits, targets)
    v2, g2 = _value_and_grad(bce_loss, logits, targets, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_function(reduction: str) -> None:
    logits, targets = _data(seed=2)
    counts = [50, 20, 9, 4, 1]
    crit = LDAMLoss(counts, reduction=reduction).double()
    v1, g1 = _value_and_grad(crit, logits, targets)
    v2, g2 = _value_and_grad(ldam_loss, logits, targets, crit.margins, 30.0, None, reduction)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


# ---------------------------------------------------------------- margins: which entries, which columns


def _margin_moves_every_column(loss_fn, margins: torch.Tensor, s: float) -> bool:
    """A logit equal to its class margin sits on the decision boundary: s*(z - m) = 0 -> BCE = ln 2.

    True iff every column k of an all-positive batch with z_ik = m_k gives exactly ln 2.
    """
    c = margins.numel()
    logits = margins.to(torch.float64).expand(3, c).clone()
    targets = torch.ones(3, c, dtype=torch.float64)
    per_entry = loss_fn(logits, targets)
    return torch.allclose(per_entry, torch.full_like(per_entry, math.log(2.0)), rtol=1e-12, atol=1e-12)


def _buggy_port(margins: torch.Tensor, s: float):
    """The single-label indexing reused with multi-hot targets: scatter at column index = target VALUE,
    so only columns 0 and 1 ever receive a margin (and the wrong one). Used to prove the test can fail."""

    def fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        index = torch.zeros_like(logits, dtype=torch.bool)
        index.scatter_(1, targets.long(), True)  # multi-hot values 0/1 used as column indices
        shifted = torch.where(index, logits - margins, logits)
        return F.binary_cross_entropy_with_logits(s * shifted, targets, reduction="none")

    return fn


def test_every_column_gets_its_own_margin() -> None:
    counts = [400, 90, 30, 7, 2, 1]  # six distinct margins; columns >= 2 included
    s = 30.0
    crit = LDAMLoss(counts, s=s, reduction="none").double()
    assert len(set(crit.margins.tolist())) == 6
    assert _margin_moves_every_column(crit, crit.margins, s)
    assert not _margin_moves_every_column(_buggy_port(crit.margins.double(), s), crit.margins, s)


def test_only_positive_entries_move() -> None:
    counts = [400, 90, 30, 7, 2]
    logits, _ = _data(n=4, c=5, seed=3)
    targets = torch.tensor(
        [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0], [1, 1, 0, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.float64
    )
    s = 4.0
    with_m = LDAMLoss(counts, s=s, reduction="none").double()(logits, targets).detach()
    without_m = LDAMLoss(counts, max_m=0.0, s=s, reduction="none").double()(logits, targets).detach()
    neg = targets == 0
    assert torch.equal(with_m[neg], without_m[neg])  # negatives: exactly BCE(s z, 0)
    assert bool((with_m[~neg] > without_m[~neg]).all())  # positives: the margin makes them harder
    # and by exactly the margin of their column: l = BCE(s (z - m_k), 1)
    m = ldam_margins(counts)
    want = F.binary_cross_entropy_with_logits(s * (logits.detach() - m), torch.ones_like(targets), reduction="none")
    torch.testing.assert_close(with_m[~neg], want[~neg], rtol=1e-6, atol=1e-9)


def test_hand_value_2x3() -> None:
    # counts [1, 16, 81] -> n^(-1/4) = 1, 1/2, 1/3 -> margins (max_m 0.5): 0.5, 0.25, 1/6; s = 2
    # positive: BCE(s (z - m), 1) = log(1 + exp(-s (z - m))); negative: BCE(s z, 0) = log(1 + exp(s z))
    z = [[0.5, -1.0, 0.2], [-0.3, 0.8, -0.6]]
    y = [[1, 0, 1], [0, 1, 0]]
    m = [0.5, 0.25, 1.0 / 6.0]
    s = 2.0
    want = [[0.0] * 3 for _ in range(2)]
    for i in range(2):
        for k in range(3):
            if y[i][k]:
                want[i][k] = math.log1p(math.exp(-s * (z[i][k] - m[k])))
            else:
                want[i][k] = math.log1p(math.exp(s * z[i][k]))
    assert want[0][0] == pytest.approx(math.log(2.0), rel=1e-15)  # z = m -> on the boundary
    crit = LDAMLoss([1, 16, 81], max_m=0.5, s=s, reduction="none").double()
    got = crit(torch.tensor(z, dtype=torch.float64), torch.tensor(y))
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-9)
    mean = LDAMLoss([1, 16, 81], max_m=0.5, s=s).double()(torch.tensor(z, dtype=torch.float64), torch.tensor(y))
    assert mean.item() == pytest.approx(sum(map(sum, want)) / 6, rel=1e-6)


# ---------------------------------------------------------------- DRW


def test_drw_weights() -> None:
    counts = [300, 40, 3]
    logits, targets = _data(n=5, c=3, seed=4)
    crit = LDAMLoss(counts, drw_epoch=2, reduction="none").double()
    plain = LDAMLoss(counts, reduction="none").double()  # drw_epoch=None: never re-weighted
    for epoch in (0, 1):
        crit.set_epoch(epoch)
        torch.testing.assert_close(crit(logits, targets), plain(logits, targets), rtol=0, atol=0)
    crit.set_epoch(2)
    w = class_weights(counts, "effective_number", 0.9999)  # the official DRW weights
    torch.testing.assert_close(crit.weight, w, rtol=1e-6, atol=0)
    torch.testing.assert_close(crit(logits, targets), plain(logits, targets) * crit.weight)
    plain.set_epoch(1000)
    torch.testing.assert_close(plain.weight, torch.ones(3, dtype=torch.float64))
    other = LDAMLoss(counts, drw_epoch=0, reweight_mode="inverse").double()
    torch.testing.assert_close(other.weight, class_weights(counts, "inverse"), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- gradcheck, extremes, bf16


@pytest.mark.parametrize("s,drw", [(30.0, None), (5.0, 0), (1.0, None)])
def test_gradcheck(s: float, drw: int | None) -> None:
    logits, targets = _data(n=3, c=4, seed=5, scale=0.5)
    crit = LDAMLoss([9, 3, 40, 1], s=s, drw_epoch=drw, reduction="sum").double()
    assert torch.autograd.gradcheck(lambda x: crit(x, targets), (logits,))


def test_extreme_logits_finite() -> None:
    logits = torch.tensor([[100.0, -100.0, 100.0], [-100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1, 1, 0], [0, 0, 1]])
    crit = LDAMLoss([10, 100, 1], drw_epoch=0, reduction="none")  # s = 30 -> |s z| = 3000
    loss = crit(logits, targets)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # positive at -100: w_1 * s * (100 + m_1)
    want = crit.weight[1].item() * 30.0 * (100.0 + crit.margins[1].item())
    assert loss[0, 1].item() == pytest.approx(want, rel=1e-5)


def test_bf16_autocast_cpu_close_to_fp32() -> None:
    torch.manual_seed(6)
    head = NormedLinear(16, 4)
    x = torch.randn(32, 16)
    targets = torch.randint(0, 2, (32, 4))
    crit = LDAMLoss([500, 60, 7, 2], drw_epoch=0)
    ref = crit(head(x), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        assert logits.dtype == torch.bfloat16
        out = crit(logits, targets)
    assert torch.isfinite(out) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=1e-2)


# ---------------------------------------------------------------- NormedLinear


def test_normed_linear_is_cosine() -> None:
    torch.manual_seed(7)
    head = NormedLinear(8, 3)
    assert tuple(head.weight.shape) == (8, 3)  # official layout: (in_features, out_features)
    torch.testing.assert_close(head.weight.norm(dim=0), torch.ones(3))  # unit columns after init
    x = torch.randn(5, 8)
    out = head(x)
    want = F.cosine_similarity(x.unsqueeze(2), head.weight.detach().unsqueeze(0), dim=1)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)
    assert bool((out.abs() <= 1.0 + 1e-6).all())
    # scale-invariant in x and in each weight column
    torch.testing.assert_close(head(7.0 * x), out, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    zero = head(torch.zeros(2, 8))
    assert torch.equal(zero, torch.zeros(2, 3))


def test_normed_linear_bad_input() -> None:
    with pytest.raises(ValueError, match="in_features must be >= 1, got 0"):
        NormedLinear(0, 3)
    with pytest.raises(TypeError, match="out_features must be an int, got float 2.5"):
        NormedLinear(4, 2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input must have shape \(N, 4\), got \(2, 5\)"):
        NormedLinear(4, 2)(torch.randn(2, 5))


# ---------------------------------------------------------------- contract and bad input


def test_inputs_not_modified() -> None:
    logits, targets = _data(seed=8)
    counts = torch.tensor([4.0, 8.0, 2.0, 1.0, 9.0])
    l0, t0, c0 = logits.detach().clone(), targets.clone(), counts.clone()
    LDAMLoss(counts, drw_epoch=0).double()(logits, targets).backward()
    assert torch.equal(logits.detach(), l0) and torch.equal(targets, t0) and torch.equal(counts, c0)


def test_bad_inputs_raise() -> None:
    logits, targets = _data(seed=9)
    with pytest.raises(ValueError, match="got 0 for class 3"):
        LDAMLoss([3, 1, 2, 0, 5])
    with pytest.raises(ValueError, match="got 0 for class 0"):
        ldam_margins([0, 1])
    with pytest.raises(ValueError, match=r"class_counts must be >= 0, got -1 for class 1"):
        LDAMLoss([3, -1, 2, 4, 5])
    with pytest.raises(ValueError, match=r"logits must have 3 columns \(class_counts has 3 entries\), got shape \(6, 5\)"):
        LDAMLoss([3, 1, 2])(logits, targets)
    with pytest.raises(ValueError, match="max_m must be >= 0"):
        LDAMLoss([3, 1], max_m=-0.1)
    with pytest.raises(ValueError, match="s must be > 0"):
        LDAMLoss([3, 1], s=0.0)
    with pytest.raises(ValueError, match=r"reweight_mode must be one of \('inverse', 'sqrt_inverse', 'effective_number'\)"):
        LDAMLoss([3, 1], reweight_mode="CB")
    with pytest.raises(ValueError, match="drw_epoch must be >= 0"):
        LDAMLoss([3, 1], drw_epoch=-5)
    with pytest.raises(ValueError, match="reduction must be one of"):
        LDAMLoss([3, 1], reduction="avg")
    with pytest.raises(ValueError, match=r"margins must have shape \(5,\)"):
        ldam_loss(logits, targets, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="multi-hot"):
        LDAMLoss([1, 2, 3, 4, 5]).double()(logits, targets + 1)
