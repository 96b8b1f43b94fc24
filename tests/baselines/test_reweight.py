"""Class re-weighting (RW) and deferred re-weighting (DRW): baselines/reweight.py."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import random_batch, value_and_grad

from rskd_loss.baselines.bce import bce_loss
from rskd_loss.baselines.reweight import REWEIGHT_MODES, ReweightedBCE, class_weights, reweighted_bce_loss

REDUCTIONS = ("mean", "sum", "none")


_data = functools.partial(random_batch, c=4, scale=3.0)
_value_and_grad = value_and_grad


# ---------------------------------------------------------------- class_weights by hand


def test_class_weights_hand_values() -> None:
    counts = [1, 4, 16]
    # inverse: 1/n = 1, 1/4, 1/16; sum = 21/16; scaled to sum 3: w = 3 * (1/n) / (21/16)
    inv = [1.0, 0.25, 1.0 / 16.0]
    want_inv = [3.0 * v / sum(inv) for v in inv]
    assert want_inv == pytest.approx([48 / 21, 12 / 21, 3 / 21], rel=1e-15)
    # sqrt_inverse: 1/sqrt(n) = 1, 1/2, 1/4; sum = 7/4; w = 3 * v / (7/4) = 12/7, 6/7, 3/7
    want_sqrt = [12 / 7, 6 / 7, 3 / 7]
    # effective number, beta = 0.5: (1 - b) / (1 - b^n): n=1 -> 0.5/0.5 = 1; n=4 -> 0.5/(1 - 1/16) = 8/15;
    # n=16 -> 0.5/(1 - 2^-16); then scaled to sum 3.
    eff = [1.0, 0.5 / (1.0 - 0.5**4), 0.5 / (1.0 - 0.5**16)]
    assert eff[1] == pytest.approx(8 / 15, rel=1e-15)
    want_eff = [3.0 * v / sum(eff) for v in eff]
    torch.testing.assert_close(class_weights(counts, "inverse"), torch.tensor(want_inv, dtype=torch.float64))
    torch.testing.assert_close(class_weights(counts, "sqrt_inverse"), torch.tensor(want_sqrt, dtype=torch.float64))
    torch.testing.assert_close(
        class_weights(counts, "effective_number", beta=0.5), torch.tensor(want_eff, dtype=torch.float64)
    )


def test_class_weights_default_beta_and_properties() -> None:
    counts = torch.tensor([5000, 800, 120, 30, 3])
    # effective number with the official beta = 0.9999: (1 - b) / (1 - b^n) by hand for the rarest
    b = 0.9999
    raw = [(1 - b) / (1 - b**n) for n in counts.tolist()]
    want = [5 * v / sum(raw) for v in raw]
    torch.testing.assert_close(class_weights(counts, "effective_number"), torch.tensor(want, dtype=torch.float64))
    for mode in REWEIGHT_MODES:
        w = class_weights(counts, mode)
        assert w.dtype == torch.float64
        assert w.sum().item() == pytest.approx(5.0, rel=1e-12)
        assert bool((w[1:] > w[:-1]).all()), f"{mode}: rarer classes must weigh more"
    # beta = 0 gives uniform weights (DRW's first stage in kaidic/LDAM-DRW)
    torch.testing.assert_close(class_weights(counts, "effective_number", beta=0.0), torch.ones(5, dtype=torch.float64))
    # the input is not modified and may be a tensor
    assert counts.tolist() == [5000, 800, 120, 30, 3]


# ---------------------------------------------------------------- equivalences


@pytest.mark.parametrize("mode", REWEIGHT_MODES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_uniform_counts_equal_bce(mode: str, reduction: str) -> None:
    logits, targets = _data(seed=2)
    crit = ReweightedBCE([37, 37, 37, 37], mode=mode, reduction=reduction).double()
    torch.testing.assert_close(crit.weight, torch.ones(4, dtype=torch.float64))
    v1, g1 = _value_and_grad(crit, logits, targets)
    v2, g2 = _value_and_grad(bce_loss, logits, targets, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_weight_multiplies_positive_and_negative_entries() -> None:
    # Multi-label decision (DB repository, ResampleLoss 'inv'/'sqrt_inv'/'CB' by_class): l_ik = w_k * BCE_ik
    # for positive AND negative entries. Targets with both kinds in every column.
    logits, _ = _data(n=4, c=3, seed=3)
    targets = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64)
    counts = [100, 10, 1]
    crit = ReweightedBCE(counts, mode="sqrt_inverse", reduction="none").double()
    ratio = crit(logits, targets) / F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # 1/sqrt(n) = 0.1, 1/sqrt(10), 1 ; scaled to sum 3
    raw = [0.1, 1 / math.sqrt(10.0), 1.0]
    want = torch.tensor([3 * v / sum(raw) for v in raw], dtype=torch.float64).expand(4, 3)
    # the weight buffer is stored in the default dtype (float32): 1e-6 relative, not 1e-12
    torch.testing.assert_close(ratio.detach(), want, rtol=1e-6, atol=0)


def test_reweighted_hand_value_2x3() -> None:
    # counts [1, 3, 6], inverse: 1, 1/3, 1/6 -> sum 3/2 -> w = 2, 2/3, 1/3 (sum 3)
    # logits z, targets y; BCE(z, 1) = log(1 + e^-z), BCE(z, 0) = log(1 + e^z)
    z = [[0.5, -1.0, 2.0], [-0.3, 0.8, -1.5]]
    y = [[1, 0, 1], [0, 1, 0]]
    w = [2.0, 2.0 / 3.0, 1.0 / 3.0]
    total = 0.0
    for i in range(2):
        for k in range(3):
            bce = math.log1p(math.exp(-z[i][k])) if y[i][k] else math.log1p(math.exp(z[i][k]))
            total += w[k] * bce
    logits = torch.tensor(z, dtype=torch.float64)
    targets = torch.tensor(y)
    crit = ReweightedBCE([1, 3, 6], reduction="sum").double()  # float32 buffers: 1e-6 relative
    assert crit(logits, targets).item() == pytest.approx(total, rel=1e-6)
    crit_mean = ReweightedBCE([1, 3, 6]).double()
    assert crit_mean(logits, targets).item() == pytest.approx(total / 6, rel=1e-6)
    fn = reweighted_bce_loss(logits, targets, torch.tensor(w, dtype=torch.float64), reduction="mean")
    assert fn.item() == pytest.approx(total / 6, rel=1e-12)


# ---------------------------------------------------------------- DRW


def test_drw_uniform_then_reweighted() -> None:
    logits, targets = _data(n=5, c=3, seed=4)
    counts = [200, 20, 2]
    crit = ReweightedBCE(counts, mode="effective_number", drw_epoch=3, reduction="none").double()
    assert "weight" in dict(crit.named_buffers()) and "weight" in crit.state_dict()
    plain = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    for epoch in (0, 1, 2):
        crit.set_epoch(epoch)
        torch.testing.assert_close(crit.weight, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(crit(logits, targets), plain)
    want = class_weights(counts, "effective_number", 0.9999)
    for epoch in (3, 7):
        crit.set_epoch(epoch)
        torch.testing.assert_close(crit.weight, want, rtol=1e-6, atol=0)
        torch.testing.assert_close(crit(logits, targets), plain * crit.weight)
    crit.set_epoch(1)  # going back (e.g. a restart) gives uniform weights again
    torch.testing.assert_close(crit.weight, torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("drw_epoch", [None, 0, 2])
def test_drw_epoch_means_the_same_in_rw_and_ldam(drw_epoch: int | None) -> None:
    # None: never re-weighted; e: uniform before epoch e, class weights from e on (0: from the start)
    from rskd_loss.baselines.ldam import LDAMLoss

    counts = [200, 20, 2]
    rw = ReweightedBCE(counts, mode="effective_number", drw_epoch=drw_epoch)
    ldam = LDAMLoss(counts, drw_epoch=drw_epoch, reweight_mode="effective_number")
    want = class_weights(counts, "effective_number").float()
    for epoch in range(5):
        rw.set_epoch(epoch)
        ldam.set_epoch(epoch)
        active = drw_epoch is not None and epoch >= drw_epoch
        torch.testing.assert_close(rw.weight, want if active else torch.ones(3))
        torch.testing.assert_close(ldam.weight, want if active else torch.ones(3))


def test_no_drw_reweights_from_start() -> None:
    crit = ReweightedBCE([50, 5], mode="inverse")
    torch.testing.assert_close(crit.weight, torch.tensor([2 / 11, 20 / 11]))  # 1/50 : 1/5 = 1 : 10, sum 2
    crit.set_epoch(100)
    torch.testing.assert_close(crit.weight, torch.tensor([2 / 11, 20 / 11]))


# ---------------------------------------------------------------- gradcheck, extremes, bf16


@pytest.mark.parametrize("mode", REWEIGHT_MODES)
def test_gradcheck(mode: str) -> None:
    logits, targets = _data(n=3, c=4, seed=5, scale=2.0)
    crit = ReweightedBCE([9, 3, 40, 1], mode=mode, reduction="sum").double()
    assert torch.autograd.gradcheck(lambda x: crit(x, targets), (logits,))


def test_extreme_logits_finite() -> None:
    logits = torch.tensor([[100.0, -100.0, 100.0], [-100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1, 1, 0], [0, 0, 1]])
    crit = ReweightedBCE([10, 100, 1], reduction="none")
    loss = crit(logits, targets)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # wrong and confident: w_k * 100
    assert loss[0, 1].item() == pytest.approx(crit.weight[1].item() * 100.0, rel=1e-6)


def test_bf16_autocast_cpu_close_to_fp32() -> None:
    torch.manual_seed(6)
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(32, 16)
    targets = torch.randint(0, 2, (32, 4))
    crit = ReweightedBCE([500, 60, 7, 2], mode="sqrt_inverse")
    ref = crit(lin(x), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        assert logits.dtype == torch.bfloat16
        out = crit(logits, targets)
    assert torch.isfinite(out) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=1e-3)


# ---------------------------------------------------------------- contract and bad input


def test_inputs_not_modified() -> None:
    logits, targets = _data(seed=7)
    counts = torch.tensor([4.0, 8.0, 2.0, 1.0])
    l0, t0, c0 = logits.detach().clone(), targets.clone(), counts.clone()
    ReweightedBCE(counts).double()(logits, targets).backward()
    assert torch.equal(logits.detach(), l0) and torch.equal(targets, t0) and torch.equal(counts, c0)


def test_bad_inputs_raise() -> None:
    logits, targets = _data(seed=8)
    with pytest.raises(ValueError, match="got 0 for class 2"):
        ReweightedBCE([3, 1, 0, 5])
    with pytest.raises(ValueError, match="got 0 for class 1"):
        class_weights([3, 0], mode="effective_number")
    with pytest.raises(ValueError, match=r"class_counts must be >= 0, got -2 for class 1"):
        ReweightedBCE([3, -2, 4, 5])
    with pytest.raises(ValueError, match=r"mode must be one of \('inverse', 'sqrt_inverse', 'effective_number'\)"):
        ReweightedBCE([3, 2, 4, 5], mode="inv")
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\)"):
        ReweightedBCE([3, 2, 4, 5], mode="effective_number", beta=1.0)
    with pytest.raises(ValueError, match="drw_epoch must be >= 0"):
        ReweightedBCE([3, 2, 4, 5], drw_epoch=-1)
    with pytest.raises(TypeError, match="drw_epoch must be an int"):
        ReweightedBCE([3, 2, 4, 5], drw_epoch=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        ReweightedBCE([3, 2, 4, 5]).set_epoch(-1)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ReweightedBCE([3, 2, 4, 5], reduction="avg")
    # class counts of the wrong length for the logits
    with pytest.raises(ValueError, match=r"logits must have 3 columns \(class_counts has 3 entries\), got shape \(6, 4\)"):
        ReweightedBCE([3, 2, 4])(logits, targets)
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        reweighted_bce_loss(logits, targets, torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must be finite and >= 0, got -1.0 for class 0"):
        reweighted_bce_loss(logits, targets, torch.tensor([-1.0, 1, 1, 1], dtype=torch.float64))
    with pytest.raises(ValueError, match="must be 1-D"):
        ReweightedBCE([[3, 2], [4, 5]])
    with pytest.raises(TypeError, match="class_counts must be a sequence of numbers"):
        ReweightedBCE("3245")
