"""Distribution-Balanced loss: baselines/db_loss.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from loss_helpers import random_batch, value_and_grad

from rskd_loss.baselines.bce import bce_loss
from rskd_loss.baselines.db_loss import DB_PRESETS, DBLoss, db_bias, db_loss

REDUCTIONS = ("mean", "sum", "none")
OFF = dict(alpha=0.5, beta=0.0, kappa=0.0, lambda_=1.0, focal=False)  # w = 0.5 + sigmoid(0) = 1

COUNTS = [50, 10, 2]
N_IMG = 100
Z = [[0.5, -1.0, 2.0], [-0.3, 0.8, -1.5]]
Y = [[1, 0, 1], [0, 1, 0]]


def _data(n: int = 6, c: int = 4, seed: int = 0, scale: float = 2.0, dtype=torch.float64):
    logits, targets = random_batch(n, c, seed, scale, dtype)
    targets[:, 0] = 1  # every image has at least one positive
    return logits, targets


_value_and_grad = value_and_grad


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _db_by_hand(
    z, y, counts, n_img, *, alpha, beta, mu, kappa, lam, focal, gamma, bp, legacy=False
) -> list[list[float]]:
    """DB loss per element from the definitions (Wu et al. 2020; official resample_loss.py), with math only.

    1. r_ik = (1/n_k) / sum_j y_ij / n_j;  w_ik = alpha + sigmoid(beta (r_ik - mu))
    2. nu_k = -kappa log(N/n_k - 1) (legacy: nu_k / lambda);  z'_ik = z_ik + nu_k
       positive: w * log(1 + exp(-z'));  negative: (w / lambda) * log(1 + exp(lambda z'))
    3. focal: p_t = sigmoid(z') (positive) or sigmoid(-lambda z') (negative); multiply by bp (1 - p_t)^gamma
    """
    out = []
    for zi, yi in zip(z, y):
        repeat = sum(yk / nk for yk, nk in zip(yi, counts))
        row = []
        for k, (zk, yk) in enumerate(zip(zi, yi)):
            r = (1.0 / counts[k]) / repeat
            w = alpha + _sigmoid(beta * (r - mu))
            nu = -kappa * math.log(n_img / counts[k] - 1.0)
            if legacy:
                nu /= lam
            zp = zk + nu
            if yk:
                loss = w * math.log1p(math.exp(-zp))
                p_t = _sigmoid(zp)
            else:
                loss = (w / lam) * math.log1p(math.exp(lam * zp))
                p_t = _sigmoid(-lam * zp)
            if focal:
                loss = bp * (1.0 - p_t) ** gamma * loss
            row.append(loss)
        out.append(row)
    return out


# ---------------------------------------------------------------- presets


def test_presets_match_official_configs() -> None:
    # configs/coco/LT_resnet50_pfc_DB.py: map_param alpha 0.1, beta 10.0, gamma(mu) 0.2;
    # logit_reg neg_scale 2.0, init_bias 0.05; focal True, balance_param 2.0, gamma 2
    assert dict(DB_PRESETS["coco"]) == dict(
        alpha=0.1, beta=10.0, mu=0.2, kappa=0.05, lambda_=2.0, focal=True, gamma=2.0, balance_param=2.0
    )
    # configs/voc/LT_resnet50_pfc_DB.py: mu 0.3, neg_scale 5, rest as COCO
    assert dict(DB_PRESETS["voc"]) == dict(
        alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, lambda_=5.0, focal=True, gamma=2.0, balance_param=2.0
    )
    crit = DBLoss(COUNTS, N_IMG)  # default preset: coco
    assert (crit.alpha, crit.beta, crit.mu, crit.kappa, crit.lambda_) == (0.1, 10.0, 0.2, 0.05, 2.0)
    assert (crit.focal, crit.gamma, crit.balance_param) == (True, 2.0, 2.0)
    voc = DBLoss(COUNTS, N_IMG, preset="voc", mu=0.25)  # an explicit keyword overrides only itself
    assert (voc.mu, voc.lambda_, voc.alpha, voc.kappa) == (0.25, 5.0, 0.1, 0.05)
    with pytest.raises(TypeError):
        DB_PRESETS["coco"]["mu"] = 1.0  # type: ignore[index]  # read-only


# ---------------------------------------------------------------- equivalence


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_parts_off_equals_bce(reduction: str) -> None:
    logits, targets = _data(seed=2)
    crit = DBLoss([30, 12, 5, 1], 60, reduction=reduction, **OFF).double()
    v1, g1 = _value_and_grad(crit, logits, targets)
    v2, g2 = _value_and_grad(bce_loss, logits, targets, reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_module_equals_function(reduction: str) -> None:
    logits, targets = _data(seed=3)
    counts = [30, 12, 5, 1]
    crit = DBLoss(counts, 60, preset="voc", reduction=reduction).double()
    v1, g1 = _value_and_grad(crit, logits, targets)
    v2, g2 = _value_and_grad(db_loss, logits, targets, counts, 60, "voc", reduction=reduction)
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=1e-9)  # module buffers are float32
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------- values by hand (float64, math)


@pytest.mark.parametrize("preset", ["coco", "voc"])
@pytest.mark.parametrize("focal", [True, False])
@pytest.mark.parametrize("legacy", [False, True])
def test_hand_values_2x3(preset: str, focal: bool, legacy: bool) -> None:
    # Worked numbers for coco (alpha .1, beta 10, mu .2, kappa .05, lambda 2), counts [50, 10, 2], N = 100:
    # image 0 (positives 0, 2): sum 1/n_j = 1/50 + 1/2 = 0.52 -> r = 0.02/0.52, 0.1/0.52, 0.5/0.52
    # image 1 (positive 1):     sum 1/n_j = 1/10 = 0.1      -> r = 0.2, 1.0, 5.0
    # w_1,0 = 0.1 + sigmoid(10 (0.2 - 0.2)) = 0.6
    # nu = -0.05 log(100/n - 1) = -0.05 * (log 1, log 9, log 49) = (0, -0.1099, -0.1946)
    p = DB_PRESETS[preset]
    want = _db_by_hand(
        Z, Y, COUNTS, N_IMG, alpha=p["alpha"], beta=p["beta"], mu=p["mu"], kappa=p["kappa"], lam=p["lambda_"],
        focal=focal, gamma=p["gamma"], bp=p["balance_param"], legacy=legacy,
    )
    if preset == "coco" and not focal and not legacy:
        # spot check entry (1, 0): negative, z = -0.3, nu = 0, w = 0.6: (0.6 / 2) log(1 + e^{-0.6})
        assert want[1][0] == pytest.approx(0.3 * math.log1p(math.exp(-0.6)), rel=1e-15)
    logits = torch.tensor(Z, dtype=torch.float64)
    targets = torch.tensor(Y)
    got = db_loss(logits, targets, COUNTS, N_IMG, preset, focal=focal, legacy_bias=legacy, reduction="none")
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=1e-15)
    total = sum(map(sum, want))
    crit = DBLoss(COUNTS, N_IMG, preset, focal=focal, legacy_bias=legacy, reduction="sum").double()
    assert crit(logits, targets).item() == pytest.approx(total, rel=1e-6)
    assert db_loss(logits, targets, COUNTS, N_IMG, preset, focal=focal, legacy_bias=legacy).item() == pytest.approx(
        total / 6, rel=1e-12
    )


def test_rebalance_weight_on_negatives_too() -> None:
    # kappa 0, lambda 1, focal off -> l_ik / BCE_ik = w_ik for positive AND negative entries
    logits = torch.tensor(Z, dtype=torch.float64)
    targets = torch.tensor(Y)
    ratio = db_loss(logits, targets, COUNTS, N_IMG, kappa=0.0, lambda_=1.0, focal=False, reduction="none") / (
        F.binary_cross_entropy_with_logits(logits, targets.double(), reduction="none")
    )
    r = [[0.02 / 0.52, 0.1 / 0.52, 0.5 / 0.52], [0.2, 1.0, 5.0]]
    w = [[0.1 + _sigmoid(10.0 * (rik - 0.2)) for rik in row] for row in r]
    torch.testing.assert_close(ratio, torch.tensor(w, dtype=torch.float64), rtol=1e-12, atol=0)


def test_image_without_positive_gets_weight_alpha_plus_one() -> None:
    # official: repeat_rate = 0 -> r = (1/n)/0 = inf -> sigmoid(inf) = 1 -> w = alpha + 1 for the whole row
    logits = torch.tensor([[0.4, -0.7, 1.1], [0.3, 0.2, -0.9]], dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([[0, 0, 0], [1, 0, 0]])
    loss = db_loss(logits, targets, COUNTS, N_IMG, kappa=0.0, lambda_=1.0, focal=False, reduction="none")
    bce = F.binary_cross_entropy_with_logits(logits, targets.double(), reduction="none")
    torch.testing.assert_close(loss[0], 1.1 * bce[0])
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # beta = 0: every weight is alpha + 1/2, including that row (no NaN from 0 * inf)
    loss0 = db_loss(logits, targets, COUNTS, N_IMG, alpha=0.5, beta=0.0, kappa=0.0, lambda_=1.0, focal=False,
                    reduction="none")
    torch.testing.assert_close(loss0, bce)
    # with the full coco preset the row is finite too
    assert torch.isfinite(DBLoss(COUNTS, N_IMG).double()(logits, targets))


# ---------------------------------------------------------------- legacy bias (wutong16/DistributionBalancedLoss issue #8)


def test_legacy_bias_is_bias_over_lambda() -> None:
    kappa, lam = 0.05, 5.0
    legacy = DBLoss(COUNTS, N_IMG, preset="voc", legacy_bias=True).double()
    fixed = DBLoss(COUNTS, N_IMG, preset="voc").double()
    # nu_k = -kappa log(N/n_k - 1): n = 50 -> log 1 = 0; n = 10 -> log 9; n = 2 -> log 49
    nu = [-kappa * math.log(N_IMG / n - 1.0) for n in COUNTS]
    torch.testing.assert_close(fixed.bias, torch.tensor(nu, dtype=torch.float64), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(legacy.bias, torch.tensor([v / lam for v in nu], dtype=torch.float64),
                               rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(db_bias(COUNTS, N_IMG, kappa, lam, legacy_bias=True),
                               torch.tensor([v / lam for v in nu], dtype=torch.float64))
    # legacy loss == corrected loss with kappa / lambda, in value and gradient
    logits, targets = _data(n=5, c=3, seed=4)
    v1, g1 = _value_and_grad(db_loss, logits, targets, COUNTS, N_IMG, "voc", legacy_bias=True)
    v2, g2 = _value_and_grad(db_loss, logits, targets, COUNTS, N_IMG, "voc", kappa=kappa / lam)
    torch.testing.assert_close(v1, v2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-15)
    v3, _ = _value_and_grad(db_loss, logits, targets, COUNTS, N_IMG, "voc")
    assert not torch.allclose(v1, v3)  # the two really differ


# ---------------------------------------------------------------- contract


def test_caller_logits_unchanged() -> None:
    logits, targets = _data(seed=5)
    counts = [30, 12, 5, 1]
    l0, t0 = logits.detach().clone(), targets.clone()
    DBLoss(counts, 60).double()(logits, targets).backward()
    db_loss(logits, targets, counts, 60, legacy_bias=True)
    assert torch.equal(logits.detach(), l0) and torch.equal(targets, t0)
    # a non-leaf input (the usual case: the output of a head) is not modified either
    base = logits.detach().clone().requires_grad_()
    out = base * 1.0
    o0 = out.detach().clone()
    DBLoss(counts, 60).double()(out, targets).backward()
    assert torch.equal(out.detach(), o0)


@pytest.mark.parametrize("preset", ["coco", "voc"])
def test_reductions_consistent(preset: str) -> None:
    logits, targets = _data(seed=6)
    none = DBLoss([30, 12, 5, 1], 60, preset, reduction="none").double()(logits, targets)
    assert none.shape == (6, 4)
    s = DBLoss([30, 12, 5, 1], 60, preset, reduction="sum").double()(logits, targets)
    m = DBLoss([30, 12, 5, 1], 60, preset, reduction="mean").double()(logits, targets)
    torch.testing.assert_close(s, none.sum())
    torch.testing.assert_close(m, none.mean())


# ---------------------------------------------------------------- gradcheck, extremes, bf16


@pytest.mark.parametrize("kwargs", [dict(preset="coco"), dict(preset="voc", legacy_bias=True),
                                    dict(preset="coco", focal=False), dict(preset="voc", gamma=0.5)])
def test_gradcheck(kwargs: dict) -> None:
    logits, targets = _data(n=3, c=4, seed=7, scale=1.0)
    targets[1] = 0  # include an image without positives
    assert torch.autograd.gradcheck(
        lambda x: db_loss(x, targets, [30, 12, 5, 1], 60, reduction="sum", **kwargs), (logits,)
    )


@pytest.mark.parametrize("preset", ["coco", "voc"])
def test_extreme_logits_finite(preset: str) -> None:
    logits = torch.tensor([[100.0, -100.0, 100.0], [-100.0, 100.0, -100.0]], requires_grad=True)
    targets = torch.tensor([[1, 1, 0], [0, 0, 1]])
    loss = DBLoss(COUNTS, N_IMG, preset, reduction="none")(logits, targets)
    assert torch.isfinite(loss).all()
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert loss[0, 1].item() > 50.0  # a confident wrong positive still costs


def test_bf16_autocast_cpu_close_to_fp32() -> None:
    torch.manual_seed(8)
    lin = torch.nn.Linear(16, 4)
    x = torch.randn(32, 16)
    targets = torch.randint(0, 2, (32, 4))
    crit = DBLoss([20, 9, 4, 2], 40)
    ref = crit(lin(x), targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = lin(x)
        assert logits.dtype == torch.bfloat16
        out = crit(logits, targets)
    assert torch.isfinite(out) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=3e-2, atol=1e-3)


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise() -> None:
    logits, targets = _data(n=4, c=3, seed=9)
    with pytest.raises(ValueError, match=r"preset must be one of \('coco', 'voc'\), got 'lvis'"):
        DBLoss(COUNTS, N_IMG, preset="lvis")
    with pytest.raises(ValueError, match=r"preset must be one of \('coco', 'voc'\)"):
        db_loss(logits, targets, COUNTS, N_IMG, preset="COCO-MLT")
    with pytest.raises(ValueError, match="got 0 for class 1"):
        DBLoss([5, 0, 3], N_IMG)
    with pytest.raises(ValueError, match="class_counts must be >= 0, got -3 for class 2"):
        DBLoss([5, 4, -3], N_IMG)
    with pytest.raises(ValueError, match=r"class_counts must be <= num_images=100 .* got 150 for class 2"):
        DBLoss([5, 4, 150], N_IMG)
    with pytest.raises(ValueError, match=r"class_counts must be < num_images=100 .* for class 0; pass kappa=0"):
        DBLoss([100, 4, 3], N_IMG)
    DBLoss([100, 4, 3], N_IMG, kappa=0.0)  # a class in every image is fine without the bias
    with pytest.raises(ValueError, match=r"logits must have 4 columns \(one per class count\), got shape \(4, 3\)"):
        DBLoss([5, 4, 3, 2], N_IMG)(logits, targets)
    with pytest.raises(ValueError, match="class_counts must have 3 entries"):
        db_loss(logits, targets, [5, 4], N_IMG)
    with pytest.raises(ValueError, match="num_images must be >= 1, got 0"):
        DBLoss(COUNTS, 0)
    with pytest.raises(TypeError, match="num_images must be an int"):
        DBLoss(COUNTS, 100.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lambda_ must be > 0"):
        DBLoss(COUNTS, N_IMG, lambda_=0.0)
    with pytest.raises(ValueError, match="kappa must be >= 0"):
        DBLoss(COUNTS, N_IMG, kappa=-0.05)
    with pytest.raises(ValueError, match="mu must be finite"):
        DBLoss(COUNTS, N_IMG, mu=float("nan"))
    with pytest.raises(TypeError, match="focal must be a bool"):
        DBLoss(COUNTS, N_IMG, focal="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        DBLoss(COUNTS, N_IMG, gamma=-2.0)
    with pytest.raises(ValueError, match="reduction must be one of"):
        DBLoss(COUNTS, N_IMG, reduction="batchmean")
    with pytest.raises(ValueError, match="multi-hot"):
        DBLoss(COUNTS, N_IMG).double()(logits, targets * 2)
