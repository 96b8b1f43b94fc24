"""Sigmoid focal loss and the ERM BCE baseline (baselines/focal.py, baselines/bce.py)."""
from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import random_batch, value_and_grad
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from rskd_loss.baselines.bce import MultiLabelBCELoss, bce_loss
from rskd_loss.baselines.focal import FocalLoss, sigmoid_focal_loss

REDUCTIONS = ("mean", "sum", "none")


_data = functools.partial(random_batch, c=5, scale=3.0)
_value_and_grad = value_and_grad


# ---------------------------------------------------------------- equivalences (value AND gradient)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_loss_equals_torch_bce_with_logits(reduction: str) -> None:
    logits, targets = _data(seed=1)
    v1, g1 = _value_and_grad(bce_loss, logits, targets, reduction=reduction)
    v2, g2 = _value_and_grad(F.binary_cross_entropy_with_logits, logits, targets, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_gamma0_alpha_none_equals_bce(reduction: str) -> None:
    logits, targets = _data(seed=2)
    v1, g1 = _value_and_grad(sigmoid_focal_loss, logits, targets, alpha=None, gamma=0.0, reduction=reduction)
    v2, g2 = _value_and_grad(bce_loss, logits, targets, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.9, None])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.5])
def test_focal_equals_torchvision(reduction: str, alpha: float | None, gamma: float) -> None:
    logits, targets = _data(n=8, c=7, seed=3)
    v1, g1 = _value_and_grad(sigmoid_focal_loss, logits, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    tv_alpha = -1.0 if alpha is None else alpha  # torchvision: alpha < 0 disables the alpha term
    v2, g2 = _value_and_grad(
        tv_sigmoid_focal_loss, logits, targets, alpha=tv_alpha, gamma=gamma, reduction=reduction
    )
    torch.testing.assert_close(v1, v2, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal_module_equals_function(reduction: str) -> None:
    logits, targets = _data(seed=4)
    crit = FocalLoss(alpha=0.3, gamma=1.5, reduction=reduction)
    v1, g1 = _value_and_grad(crit, logits, targets)
    v2, g2 = _value_and_grad(sigmoid_focal_loss, logits, targets, alpha=0.3, gamma=1.5, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    v3, g3 = _value_and_grad(MultiLabelBCELoss(reduction), logits, targets)
    v4, g4 = _value_and_grad(bce_loss, logits, targets, reduction=reduction)
    torch.testing.assert_close(v3, v4, rtol=0, atol=0)
    torch.testing.assert_close(g3, g4, rtol=0, atol=0)


# ---------------------------------------------------------------- values by hand (float64, math)


def test_focal_and_bce_hand_values() -> None:
    # 2 images x 3 classes.
    z = [[0.0, 1.5, -2.0], [3.0, -0.5, 0.25]]
    y = [[1, 0, 1], [0, 1, 0]]
    alpha, gamma = 0.25, 2.0
    # For each entry: p = 1 / (1 + exp(-z)); p_t = p if y = 1 else 1 - p;
    # BCE = -log(p_t); focal = alpha_t * (1 - p_t)^gamma * BCE, alpha_t = alpha if y = 1 else 1 - alpha.
    # e.g. (0, 0): z = 0, y = 1: p = 1/2, p_t = 1/2, BCE = ln 2, focal = 0.25 * 0.25 * ln 2.
    #      (0, 1): z = 1.5, y = 0: p_t = 1 - sigma(1.5) = sigma(-1.5), focal = 0.75 * sigma(1.5)^2 * -ln sigma(-1.5).
    bce_want = [[0.0] * 3 for _ in range(2)]
    focal_want = [[0.0] * 3 for _ in range(2)]
    for i in range(2):
        for k in range(3):
            p = 1.0 / (1.0 + math.exp(-z[i][k]))
            p_t = p if y[i][k] == 1 else 1.0 - p
            bce = -math.log(p_t)
            alpha_t = alpha if y[i][k] == 1 else 1.0 - alpha
            bce_want[i][k] = bce
            focal_want[i][k] = alpha_t * (1.0 - p_t) ** gamma * bce
    assert focal_want[0][0] == pytest.approx(0.25 * 0.25 * math.log(2.0), rel=1e-15)
    logits = torch.tensor(z, dtype=torch.float64)
    targets = torch.tensor(y)
    got_f = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    got_b = bce_loss(logits, targets, reduction="none")
    torch.testing.assert_close(got_f, torch.tensor(focal_want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got_b, torch.tensor(bce_want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    total = sum(sum(r) for r in focal_want)
    assert sigmoid_focal_loss(logits, targets, reduction="sum").item() == pytest.approx(total, rel=1e-12)
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(total / 6, rel=1e-12)
    assert FocalLoss()(logits, targets).item() == pytest.approx(total / 6, rel=1e-12)  # defaults 0.25, 2


def test_focal_down_weights_easy_examples() -> None:
    # the modulating factor (1 - p_t)^gamma is smaller for an easy (confident, correct) example:
    # ratio focal/BCE = alpha_t (1 - p_t)^gamma -> for z = 4, y = 1: 0.25 * sigma(-4)^2
    logits = torch.tensor([[4.0, -0.1]], dtype=torch.float64)
    targets = torch.tensor([[1, 1]])
    ratio = sigmoid_focal_loss(logits, targets, reduction="none") / bce_loss(logits, targets, reduction="none")
    s4 = 1.0 / (1.0 + math.exp(4.0))
    s01 = 1.0 / (1.0 + math.exp(-0.1))
    assert ratio[0, 0].item() == pytest.approx(0.25 * s4**2, rel=1e-12)
    assert ratio[0, 1].item() == pytest.approx(0.25 * s01**2, rel=1e-12)
    assert ratio[0, 0] < ratio[0, 1]


# ---------------------------------------------------------------- gradcheck, extremes, bf16


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (None, 0.5), (0.6, 0.0), (0.1, 3.0)])
def test_focal_gradcheck(alpha: float | None, gamma: float) -> None:
    logits, targets = _data(n=3, c=4, seed=5, scale=2.0)
    assert torch.autograd.gradcheck(
        lambda x: sigmoid_focal_loss(x, targets, alpha=alpha, gamma=gamma, reduction="sum"), (logits,)
    )
    assert torch.autograd.gradcheck(lambda x: bce_loss(x, targets, reduction="none"), (logits,))


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_extreme_logits_finite(gamma: float) -> None:
    # +-100 in float32: sigmoid rounds to exactly 0 or 1; value and gradient must stay finite.
    logits = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1, 0, 0, 1]])
    loss = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=gamma, reduction="none")
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # correct and confident -> ~0; wrong and confident -> alpha_t * 1 * 100
    assert loss[0, 0].item() == pytest.approx(0.0, abs=1e-30)
    assert loss[0, 2].item() == pytest.approx(0.75 * 100.0, rel=1e-6)
    assert loss[0, 3].item() == pytest.approx(0.25 * 100.0, rel=1e-6)
    b = bce_loss(logits, targets, reduction="none")
    assert torch.isfinite(b).all() and b[0, 2].item() == pytest.approx(100.0, rel=1e-6)


def test_focal_gamma_below_one_gradient_finite_where_torchvision_is_not() -> None:
    # documents why the exp(gamma * logsigmoid) form is used: (1 - p_t) ** 0.5 at p_t == 1 -> NaN grad
    logits = torch.tensor([[100.0]], requires_grad=True)
    targets = torch.tensor([[1.0]])
    sigmoid_focal_loss(logits, targets, gamma=0.5, reduction="sum").backward()
    assert torch.isfinite(logits.grad).all()
    x = torch.tensor([[100.0]], requires_grad=True)
    tv_sigmoid_focal_loss(x, targets, gamma=0.5, reduction="sum").backward()
    assert not torch.isfinite(x.grad).all()


@pytest.mark.parametrize("crit", [FocalLoss(), FocalLoss(alpha=None, gamma=0.5), MultiLabelBCELoss()])
def test_bf16_autocast_cpu_close_to_fp32(crit: torch.nn.Module) -> None:
    torch.manual_seed(6)
    lin = torch.nn.Linear(16, 5)
    x = torch.randn(32, 16)
    targets = torch.randint(0, 2, (32, 5))
    ref = crit(lin(x), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        assert logits.dtype == torch.bfloat16
        out = crit(logits, targets)
    assert out.dtype == torch.float32
    assert torch.isfinite(out)
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=1e-3)


# ---------------------------------------------------------------- contract


def test_inputs_not_modified() -> None:
    logits, targets = _data(seed=7)
    l0, t0 = logits.detach().clone(), targets.clone()
    sigmoid_focal_loss(logits, targets).backward()
    bce_loss(logits, targets)
    assert torch.equal(logits.detach(), l0) and torch.equal(targets, t0)


def test_int_and_bool_targets_accepted() -> None:
    logits, targets = _data(seed=8)
    a = sigmoid_focal_loss(logits, targets)
    b = sigmoid_focal_loss(logits, targets.long())
    c = sigmoid_focal_loss(logits, targets.bool())
    assert a.item() == b.item() == c.item()


def test_bad_inputs_raise() -> None:
    logits, targets = _data(seed=9)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        FocalLoss(gamma=-1.0)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        FocalLoss(alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        sigmoid_focal_loss(logits, targets, alpha=-1.0)  # torchvision's 'disable' value is not accepted
    with pytest.raises(TypeError, match="alpha must be a number"):
        FocalLoss(alpha="0.25")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be one of"):
        FocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="reduction must be one of"):
        bce_loss(logits, targets, reduction="batchmean")
    with pytest.raises(ValueError, match="multi-hot"):
        sigmoid_focal_loss(logits, targets * 0.5)
    with pytest.raises(ValueError, match=r"same shape as logits, expected \(6, 5\), got \(6, 4\)"):
        sigmoid_focal_loss(logits, targets[:, :4])
    with pytest.raises(ValueError, match="2-D"):
        bce_loss(logits[0], targets[0])
    with pytest.raises(TypeError, match="floating-point"):
        bce_loss(targets.long(), targets)
    with pytest.raises(TypeError, match="targets must be a torch.Tensor"):
        MultiLabelBCELoss()(logits, [[1, 0]])
