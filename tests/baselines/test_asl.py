"""Asymmetric loss (baselines/asl.py): equivalences, hand values, the official formula, gradients, numerics."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import value_and_grad

from rskd_loss.baselines.asl import AsymmetricLoss, asymmetric_loss
from rskd_loss.baselines.registry import build_criterion
from rskd_loss.kd import WeightedSubsetKDLoss

REDUCTIONS = ("mean", "sum", "none")


def _batch(n: int = 6, c: int = 5, seed: int = 0, scale: float = 3.0, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=dtype) * scale
    targets = (torch.rand(n, c, generator=g) < 0.4).to(dtype)
    targets[0] = 0  # an image without positives
    return logits, targets


def _official_reference(z, y, gamma_neg, gamma_pos, clip, eps, detach):
    """The per-element loss of Alibaba-MIIL/ASL src/loss_functions/losses.py, written from its formula:
    xs_neg = min(1 - p + clip, 1); loss = y log max(p, eps) + (1-y) log max(xs_neg, eps);
    weight = (1 - pt)^(gamma_pos y + gamma_neg (1-y)), pt = p y + xs_neg (1-y), no grad if detach."""
    p = torch.sigmoid(z)
    xs_neg = 1 - p if not clip else torch.clamp(1 - p + clip, max=1)
    loss = y * torch.log(torch.clamp(p, min=eps)) + (1 - y) * torch.log(torch.clamp(xs_neg, min=eps))
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not detach):
            pt = p * y + xs_neg * (1 - y)
            weight = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * weight
    return -loss


# ---------------------------------------------------------------- equivalences (value AND gradient)


@pytest.mark.parametrize("clip", [0.0, None])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_no_focusing_no_shift_equals_bce(reduction: str, clip: float | None) -> None:
    logits, targets = _batch(seed=1)  # |z| < 15: every probability far above eps, the clamp inactive
    kw = dict(gamma_neg=0.0, gamma_pos=0.0, clip=clip, reduction=reduction)
    v1, g1 = value_and_grad(asymmetric_loss, logits, targets, **kw)
    v2, g2 = value_and_grad(F.binary_cross_entropy_with_logits, logits, targets, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)
    # the defaults (focusing and shift on) are not BCE
    assert not torch.allclose(asymmetric_loss(logits, targets, reduction=reduction), v2)


@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize(
    "gamma_neg,gamma_pos,clip",
    [(4.0, 1.0, 0.05), (4.0, 0.0, 0.05), (2.0, 3.0, 0.2), (1.0, 1.0, 0.0), (3.0, 2.0, None), (0.0, 0.0, 0.05)],
)
def test_equals_official_formula_in_float64(gamma_neg, gamma_pos, clip, detach: bool) -> None:
    logits, targets = _batch(n=16, c=7, seed=2)
    assert torch.sigmoid(-logits.abs()).min() > 1e-6  # eps = 1e-8 never clamps
    for reduction in REDUCTIONS:
        kw = dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, eps=1e-8, detach_focusing=detach)
        v1, g1 = value_and_grad(asymmetric_loss, logits, targets, reduction=reduction, **kw)

        def ref(z, y, reduction=reduction):
            loss = _official_reference(z, y, gamma_neg, gamma_pos, clip, 1e-8, detach)
            return {"mean": loss.mean, "sum": loss.sum, "none": lambda: loss}[reduction]()

        v2, g2 = value_and_grad(ref, logits, targets)
        torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(g1, g2, rtol=1e-10, atol=1e-12)


def test_detach_changes_the_gradient_not_the_value() -> None:
    logits, targets = _batch(seed=3)
    v1, g1 = value_and_grad(asymmetric_loss, logits, targets, detach_focusing=False)
    v2, g2 = value_and_grad(asymmetric_loss, logits, targets, detach_focusing=True)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    assert (g1 - g2).abs().max() > 1e-3


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_function_and_inputs_untouched(reduction: str) -> None:
    logits, targets = _batch(seed=4)
    kw = dict(gamma_neg=3.0, gamma_pos=0.5, clip=0.1, eps=1e-6, detach_focusing=True)
    z0, y0 = logits.clone(), targets.clone()
    v1, g1 = value_and_grad(AsymmetricLoss(reduction=reduction, **kw), logits, targets)
    v2, g2 = value_and_grad(asymmetric_loss, logits, targets, reduction=reduction, **kw)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    assert torch.equal(logits, z0) and torch.equal(targets, y0)


# ---------------------------------------------------------------- values by hand (float64, math)


def test_hand_values_2x3() -> None:
    z = [[0.0, 1.5, -2.0], [3.0, -0.5, -4.0]]
    y = [[1, 0, 1], [0, 1, 0]]
    m = 0.05

    def sig(v: float) -> float:
        return 1.0 / (1.0 + math.exp(-v))

    # p = sigmoid(z); positives: -(1 - p)^gamma_pos * ln p; negatives: p_m = max(p - m, 0),
    # -(p_m)^gamma_neg * ln(1 - p_m). gamma_neg = 4, m = 0.05, eps inactive (every p > 1e-8).
    # (0,0) z=0,    y=1: p = 0.5,        gamma_pos=1: -0.5 ln 0.5 = 0.34657359;   gamma_pos=0: ln 2 = 0.69314718
    # (0,1) z=1.5,  y=0: p = 0.81757448, p_m = 0.76757448, p_m^4 = 0.34712197, -ln(0.23242552) = 1.45918...
    #                    -> 0.50651532
    # (0,2) z=-2,   y=1: p = 0.11920292, 1-p = 0.88079708, -ln p = 2.12692801 -> 1.87339198 | 2.12692801
    # (1,0) z=3,    y=0: p = 0.95257413, p_m = 0.90257413, p_m^4 = 0.66363842, -ln(0.09742587) -> 1.54539054
    # (1,1) z=-0.5, y=1: p = 0.37754067, 1-p = 0.62245933, -ln p = 0.97407698 -> 0.60632331 | 0.97407698
    # (1,2) z=-4,   y=0: p = 0.01798621 < m, so p_m = 0: weight 0 and ln(1 - 0) = 0 -> 0
    def pos(v: float, gamma_pos: float) -> float:
        return -((1.0 - sig(v)) ** gamma_pos) * math.log(sig(v))

    def neg(v: float) -> float:
        p_m = max(sig(v) - m, 0.0)
        return -(p_m**4) * math.log(1.0 - p_m)

    for gamma_pos, expected in [
        (1.0, [[0.34657359, 0.50651532, 1.87339198], [1.54539054, 0.60632331, 0.0]]),
        (0.0, [[0.69314718, 0.50651532, 2.12692801], [1.54539054, 0.97407698, 0.0]]),
    ]:
        by_math = [[pos(v, gamma_pos) if t else neg(v) for v, t in zip(zr, yr)] for zr, yr in zip(z, y)]
        assert sum(by_math, []) == pytest.approx(sum(expected, []), abs=5e-9)  # the numbers above
        want = torch.tensor(by_math, dtype=torch.float64)
        logits, targets = torch.tensor(z, dtype=torch.float64), torch.tensor(y)
        got = asymmetric_loss(logits, targets, gamma_neg=4.0, gamma_pos=gamma_pos, clip=m, reduction="none")
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
        s = asymmetric_loss(logits, targets, gamma_neg=4.0, gamma_pos=gamma_pos, clip=m, reduction="sum")
        mean = asymmetric_loss(logits, targets, gamma_neg=4.0, gamma_pos=gamma_pos, clip=m)
        torch.testing.assert_close(s, want.sum(), rtol=1e-12, atol=0)
        torch.testing.assert_close(mean, want.sum() / 6, rtol=1e-12, atol=0)


# ---------------------------------------------------------------- gradients


def _away_from_kinks(logits: torch.Tensor, clip: float) -> torch.Tensor:
    """Move logits whose probability is within 0.02 of the shift margin (where max(p - m, 0) bends)."""
    near = (torch.sigmoid(logits) - clip).abs() < 0.02
    return torch.where(near, logits + 1.0, logits)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (4.0, 0.0, 0.05), (2.5, 0.5, 0.0)])
def test_gradcheck_with_gradient_through_the_weights(gamma_neg, gamma_pos, clip) -> None:
    logits, targets = _batch(n=4, c=5, seed=5, scale=2.0)
    z = _away_from_kinks(logits, clip).requires_grad_()

    def fn(x):
        return asymmetric_loss(x, targets, gamma_neg, gamma_pos, clip, detach_focusing=False, reduction="none")

    assert torch.autograd.gradcheck(fn, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (4.0, 0.0, 0.05), (2.5, 0.5, 0.0)])
def test_gradcheck_detached_weights(gamma_neg, gamma_pos, clip) -> None:
    # With detach_focusing the gradient is that of w(z0) * l(z) with the weights w frozen at z0, not the
    # gradient of the loss value itself: gradcheck the frozen form, compare the gradients at z0, and
    # check that gradcheck of the value itself fails (so the detach really drops a term).
    logits, targets = _batch(n=4, c=5, seed=6, scale=2.0)
    z0 = _away_from_kinks(logits, clip)
    kw = dict(gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip, reduction="none")
    ce0 = asymmetric_loss(z0, targets, gamma_neg=0.0, gamma_pos=0.0, clip=clip, reduction="none")  # l(z0) > 0
    w0 = asymmetric_loss(z0, targets, **kw) / ce0

    def frozen(x):
        return w0 * asymmetric_loss(x, targets, gamma_neg=0.0, gamma_pos=0.0, clip=clip, reduction="none")

    z = z0.clone().requires_grad_()
    assert torch.autograd.gradcheck(frozen, (z,), eps=1e-6, atol=1e-8, rtol=1e-6)
    _, g_det = value_and_grad(asymmetric_loss, z0, targets, detach_focusing=True, **kw)
    _, g_frozen = value_and_grad(frozen, z0)
    torch.testing.assert_close(g_det, g_frozen, rtol=1e-10, atol=1e-12)

    def detached(x):
        return asymmetric_loss(x, targets, detach_focusing=True, **kw)

    assert not torch.autograd.gradcheck(detached, (z,), eps=1e-6, atol=1e-8, rtol=1e-6, raise_exception=False)


@pytest.mark.parametrize("clip", [0.05, 0.0])
def test_detached_gradient_equals_analytic_gradient(clip: float) -> None:
    # Weights w constant (detached), p = sigmoid(z), dp/dz = p (1 - p):
    #   positive: l = -w_pos log p                  -> dl/dz = -w_pos (1 - p)
    #   negative, clip m > 0: l = -w_neg log min(1 - p + m, 1)
    #                                               -> dl/dz = w_neg p (1 - p) / (1 - p + m)  if p > m, else 0
    #   negative, no clip:    l = -w_neg log(1 - p) -> dl/dz = w_neg p
    # with w_pos = (1 - p)^gamma_pos and w_neg = max(p - m, 0)^gamma_neg evaluated at z.
    gamma_neg, gamma_pos = 4.0, 1.0
    logits, targets = _batch(n=8, c=6, seed=7, scale=2.5)
    z = _away_from_kinks(logits, clip)
    x = z.clone().requires_grad_()
    asymmetric_loss(x, targets, gamma_neg, gamma_pos, clip, detach_focusing=True, reduction="sum").backward()
    p = torch.sigmoid(z)
    w_pos = (1 - p) ** gamma_pos
    p_m = (p - clip).clamp(min=0)
    w_neg = p_m**gamma_neg
    if clip > 0:
        d_neg = torch.where(p > clip, w_neg * p * (1 - p) / (1 - p + clip), torch.zeros_like(p))
    else:
        d_neg = w_neg * p
    analytic = targets * (-w_pos * (1 - p)) + (1 - targets) * d_neg
    torch.testing.assert_close(x.grad, analytic, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("detach", [False, True])
@pytest.mark.parametrize(
    "gamma_neg,gamma_pos,clip", [(4.0, 1.0, 0.05), (4.0, 0.0, 0.05), (0.5, 0.5, 0.05), (0.5, 0.3, None), (2.0, 1.0, 0.0)]
)
def test_logits_100_finite(dtype, detach, gamma_neg, gamma_pos, clip) -> None:
    z = torch.tensor([[100.0, -100.0, 100.0, -100.0]], dtype=dtype, requires_grad=True)
    y = torch.tensor([[1, 1, 0, 0]])
    loss = asymmetric_loss(z, y, gamma_neg, gamma_pos, clip, detach_focusing=detach, reduction="none")
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(z.grad).all()
    # right answers: certain and right -> 0; certain and wrong -> the eps clamp, -log(1e-8) (times the
    # weight: 1 for the positive; (1 - m)^gamma_neg and -log m for the shifted negative)
    wrong_neg = (1 - clip) ** gamma_neg * -math.log(clip) if clip else -math.log(1e-8)
    want = torch.tensor([[0.0, -math.log(1e-8), wrong_neg, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


def test_gamma_below_one_official_pow_has_nan_gradient_here_finite() -> None:
    # Negatives with p < m: 1 - pt = 0 and d/dx x^0.5 at 0 is inf; the official pow gives NaN there.
    z = torch.tensor([[-4.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    _, g_ref = value_and_grad(lambda x: _official_reference(x, y, 0.5, 1.0, 0.05, 1e-8, False).sum(), z)
    _, g = value_and_grad(asymmetric_loss, z, y, gamma_neg=0.5, clip=0.05, reduction="sum")
    assert torch.isnan(g_ref[0, 0]) and torch.isfinite(g).all()
    assert g[0, 0] == 0  # p < m: no weight and log(1) = 0
    torch.testing.assert_close(g[0, 1], g_ref[0, 1], rtol=1e-12, atol=0)


def test_bf16_autocast_finite_and_close_to_float32() -> None:
    g = torch.Generator().manual_seed(8)
    layer = torch.nn.Linear(16, 6)
    x = torch.randn(32, 16, generator=g) * 3
    y = (torch.rand(32, 6, generator=g) < 0.3).float()
    crit = AsymmetricLoss(gamma_neg=4.0, gamma_pos=0.0, clip=0.05)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        loss = crit(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in layer.parameters())
    # computed in float32 from the bf16 logits: the same as the float32 function on those logits
    torch.testing.assert_close(loss, crit(logits.detach().float(), y), rtol=0, atol=0)
    loss32 = crit(layer(x), y)
    torch.testing.assert_close(loss, loss32, rtol=3e-2, atol=1e-4)
    # a bf16 input without autocast: float32 result
    assert asymmetric_loss(logits.detach(), y).dtype == torch.float32


# ---------------------------------------------------------------- arguments


def test_reduction_none_shape_and_bad_reduction() -> None:
    logits, targets = _batch(n=3, c=4)
    assert asymmetric_loss(logits, targets, reduction="none").shape == (3, 4)
    assert AsymmetricLoss(reduction="none")(logits, targets).shape == (3, 4)
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        asymmetric_loss(logits, targets, reduction="avg")
    with pytest.raises(ValueError, match=r"reduction must be one of"):
        AsymmetricLoss(reduction="batchmean")


@pytest.mark.parametrize(
    "kwargs,exc,msg",
    [
        (dict(gamma_neg=-1.0), ValueError, r"gamma_neg must be >= 0, got -1.0"),
        (dict(gamma_pos=-0.5), ValueError, r"gamma_pos must be >= 0, got -0.5"),
        (dict(gamma_pos=float("nan")), ValueError, r"gamma_pos must be >= 0, got nan"),
        (dict(gamma_neg=float("inf")), ValueError, r"gamma_neg must be finite and >= 0, got inf"),
        (dict(clip=1.0), ValueError, r"clip must be in \[0, 1\), got 1.0"),
        (dict(clip=-0.05), ValueError, r"clip must be in \[0, 1\), got -0.05"),
        (dict(eps=0.0), ValueError, r"eps must be in \(0, 1\), got 0.0"),
        (dict(eps=-1e-8), ValueError, r"eps must be in \(0, 1\), got -1e-08"),
        (dict(eps=1.0), ValueError, r"eps must be in \(0, 1\), got 1.0"),
        (dict(gamma_neg="4"), TypeError, r"gamma_neg must be a number, got str"),
        (dict(detach_focusing=1), TypeError, r"detach_focusing must be a bool, got int"),
    ],
)
def test_bad_hyper_parameters(kwargs, exc, msg) -> None:
    with pytest.raises(exc, match=msg):
        AsymmetricLoss(**kwargs)
    with pytest.raises(exc, match=msg):
        asymmetric_loss(torch.zeros(2, 3), torch.zeros(2, 3), **kwargs)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match=r"targets must be multi-hot with values in \{0, 1\}, got 0.5"):
        asymmetric_loss(torch.zeros(2, 3), torch.full((2, 3), 0.5))
    with pytest.raises(ValueError, match=r"targets must have the same shape as logits"):
        asymmetric_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_clip_none_and_zero_are_the_same() -> None:
    logits, targets = _batch(seed=9)
    a = asymmetric_loss(logits, targets, clip=None, reduction="none")
    b = asymmetric_loss(logits, targets, clip=0.0, reduction="none")
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, asymmetric_loss(logits, targets, clip=0.05, reduction="none"))


# ---------------------------------------------------------------- registry and RSKD wrapper


def test_build_criterion_asl() -> None:
    crit = build_criterion("asl", [30, 5, 1], 40, gamma_pos=0.0, clip=0.1, detach_focusing=True)
    assert isinstance(crit, AsymmetricLoss)
    assert (crit.gamma_neg, crit.gamma_pos, crit.clip, crit.eps, crit.detach_focusing, crit.reduction) == (
        4.0, 0.0, 0.1, 1e-8, True, "mean"
    )
    logits, targets = _batch(n=4, c=3, seed=10)
    direct = AsymmetricLoss(gamma_pos=0.0, clip=0.1, detach_focusing=True)
    assert torch.equal(crit(logits, targets), direct(logits, targets))
    cfg = build_criterion({"name": "ASL", "gamma_neg": 2.0, "reduction": "sum"})
    assert isinstance(cfg, AsymmetricLoss) and (cfg.gamma_neg, cfg.reduction) == (2.0, "sum")
    assert "detach_focusing=False" in repr(build_criterion("asl"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_rskd_wrapper_with_zero_kd_weights_equals_asl(reduction: str) -> None:
    c = 5
    logits, targets = _batch(n=8, c=c, seed=11)
    teacher = torch.randn(8, c, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 3
    base = AsymmetricLoss(reduction=reduction)
    crit = WeightedSubsetKDLoss(base, num_classes=c)
    crit.set_weights(torch.zeros(c))
    v1, g1 = value_and_grad(crit, logits, targets, teacher)
    v2, g2 = value_and_grad(base, logits, targets)
    torch.testing.assert_close(v1, v2, rtol=0, atol=0)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    crit.set_weights(torch.ones(c))
    assert not torch.allclose(crit(logits, targets, teacher), base(logits, targets))
