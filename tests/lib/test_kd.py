"""binary_kd_loss (Eq. 1-2) and WeightedSubsetKDLoss (Eq. 4)."""
from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from rskd_loss import KDLossParts, WeightedSubsetKDLoss, binary_kd_loss


def _kl_by_hand(zs: float, zt: float, T: float, order: str) -> float:
    """KL of two Bernoulli distributions from the definition (Eq. 1-2), in float64 via `math`.

    q_s = 1/(1+exp(-zs/T)), q_t = 1/(1+exp(-zt/T));
    KL(p||r) = p ln(p/r) + (1-p) ln((1-p)/(1-r)), with p = q_s, r = q_t for Eq. 2 as printed.
    """
    qs = 1.0 / (1.0 + math.exp(-zs / T))
    qt = 1.0 / (1.0 + math.exp(-zt / T))
    p, r = (qs, qt) if order == "student_teacher" else (qt, qs)
    return p * math.log(p / r) + (1 - p) * math.log((1 - p) / (1 - r))


@pytest.mark.parametrize("order", ["student_teacher", "teacher_student"])
@pytest.mark.parametrize("T", [1.0, 3.0, 10.0])
def test_binary_kd_equals_definition_float64(order: str, T: float) -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(7, 5, generator=g, dtype=torch.float64) * 6
    t = torch.randn(7, 5, generator=g, dtype=torch.float64) * 6
    got = binary_kd_loss(s, t, temperature=T, order=order)
    want = torch.tensor(
        [[_kl_by_hand(s[i, j].item(), t[i, j].item(), T, order) for j in range(5)] for i in range(7)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    got_t2 = binary_kd_loss(s, t, temperature=T, order=order, scale_by_t2=True)
    torch.testing.assert_close(got_t2, want * T * T, rtol=1e-10, atol=1e-12)


def test_binary_kd_hand_value() -> None:
    # z_s = 0 -> q_s = 1/2; z_t = ln 3 -> q_t = 3/4 (T = 1).
    # KL(s||t) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3 * 2) = 1/2 ln(4/3)
    # KL(t||s) = 3/4 ln((3/4)/(1/2)) + 1/4 ln((1/4)/(1/2)) = 3/4 ln(3/2) - 1/4 ln 2
    s = torch.tensor([[0.0]], dtype=torch.float64)
    t = torch.tensor([[math.log(3.0)]], dtype=torch.float64)
    st = binary_kd_loss(s, t, temperature=1.0).item()
    ts = binary_kd_loss(s, t, temperature=1.0, order="teacher_student").item()
    assert st == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    assert ts == pytest.approx(0.75 * math.log(1.5) - 0.25 * math.log(2.0), rel=1e-12)
    assert st != pytest.approx(ts)  # the two orders really differ


@pytest.mark.parametrize("order", ["student_teacher", "teacher_student"])
def test_binary_kd_zero_where_equal(order: str) -> None:
    z = (torch.randn(6, 4, dtype=torch.float64) * 30).requires_grad_()
    loss = binary_kd_loss(z, z.detach().clone(), temperature=3.0, order=order)
    assert torch.equal(loss, torch.zeros_like(loss))
    loss.sum().backward()
    torch.testing.assert_close(z.grad, torch.zeros_like(z), atol=1e-15, rtol=0)


@pytest.mark.parametrize("order", ["student_teacher", "teacher_student"])
def test_binary_kd_gradcheck(order: str) -> None:
    g = torch.Generator().manual_seed(1)
    s = (torch.randn(3, 4, generator=g, dtype=torch.float64) * 4).requires_grad_()
    t = (torch.randn(3, 4, generator=g, dtype=torch.float64) * 4).requires_grad_()
    fn = functools.partial(binary_kd_loss, temperature=2.0, order=order)
    assert torch.autograd.gradcheck(fn, (s, t))
    assert torch.autograd.gradgradcheck(fn, (s, t))


@pytest.mark.parametrize("order", ["student_teacher", "teacher_student"])
@pytest.mark.parametrize("T", [1.0, 10.0])
def test_binary_kd_extreme_logits_float32(order: str, T: float) -> None:
    s = torch.tensor([[100.0, -100.0, 100.0, -100.0, 0.0]], requires_grad=True)
    t = torch.tensor([[-100.0, 100.0, 100.0, -100.0, 100.0]])
    loss = binary_kd_loss(s, t, temperature=T, order=order)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(s.grad).all()
    if T == 10.0:
        want = torch.tensor(
            [[_kl_by_hand(a, b, T, order) for a, b in zip(s[0].tolist(), t[0].tolist())]], dtype=torch.float64
        )
    else:
        # At T = 1, sigmoid(+-100) rounds to 1 / 0 in float64, so take the closed form by hand
        # (a = student / T, b = teacher / T; swapped for teacher_student):
        # KL = sigma(a)(a - b) - softplus(a) + softplus(b), with softplus(100) = 100, softplus(-100) ~ 0.
        # student_teacher: (100,-100): 200-100 = 100; (-100,100): 0+0+100 = 100; equal pairs: 0;
        #   (0,100): -50 - ln 2 + 100 = 50 - ln 2.
        # teacher_student: (a,b) = (-100,100): 100; (100,-100): 100; (100, 0): 100 - 100 + ln 2 = ln 2.
        last = 50.0 - math.log(2.0) if order == "student_teacher" else math.log(2.0)
        want = torch.tensor([[100.0, 100.0, 0.0, 0.0, last]], dtype=torch.float64)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-5)


def test_binary_kd_bf16_autocast() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(8, 6)
    x = torch.randn(16, 8)
    t = torch.randn(16, 6) * 5
    ref = binary_kd_loss(layer(x), t, reduction="mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = layer(x)
        assert s.dtype == torch.bfloat16
        got = binary_kd_loss(s, t.bfloat16(), reduction="mean")
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, ref, rtol=5e-2, atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        extreme = binary_kd_loss(torch.full((2, 3), 100.0).bfloat16(), torch.full((2, 3), -100.0).bfloat16(), 1.0)
    assert torch.isfinite(extreme).all()


def test_binary_kd_reductions_and_errors() -> None:
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    none = binary_kd_loss(s, t)
    assert none.shape == (4, 3)
    torch.testing.assert_close(binary_kd_loss(s, t, reduction="mean"), none.mean())
    torch.testing.assert_close(binary_kd_loss(s, t, reduction="sum"), none.sum())
    with pytest.raises(ValueError, match=r"reduction must be one of .*got 'avg'"):
        binary_kd_loss(s, t, reduction="avg")
    with pytest.raises(ValueError, match=r"expected \(4, 3\), got \(4, 2\)"):
        binary_kd_loss(s, t[:, :2])
    with pytest.raises(ValueError, match=r"temperature must be > 0, got 0"):
        binary_kd_loss(s, t, temperature=0)
    with pytest.raises(ValueError, match=r"order must be one of .*got 'hinton'"):
        binary_kd_loss(s, t, order="hinton")
    with pytest.raises(TypeError, match=r"teacher_logits must be a torch.Tensor, got list"):
        binary_kd_loss(s, [[0.0] * 3] * 4)
    with pytest.raises(TypeError, match=r"floating-point"):
        binary_kd_loss(s, t.long())


# ---------------------------------------------------------------- WeightedSubsetKDLoss (Eq. 4)

def _batch(n: int = 6, c: int = 5, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=dtype) * 3
    targets = (torch.rand(n, c, generator=g) < 0.3).to(dtype)
    teacher = torch.randn(n, c, generator=g, dtype=dtype) * 3
    return logits, targets, teacher


BASES = {
    "bce": lambda: nn.BCEWithLogitsLoss(),
    "focal": lambda: functools.partial(sigmoid_focal_loss, alpha=0.25, gamma=2.0, reduction="mean"),
}


@pytest.mark.parametrize("base_name", sorted(BASES))
@pytest.mark.parametrize("zero", ["weights", "kd_weight"])
def test_wrapper_with_kd_off_equals_base(base_name: str, zero: str) -> None:
    logits, targets, teacher = _batch()
    base = BASES[base_name]()
    crit = WeightedSubsetKDLoss(base, num_classes=5, kd_weight=0.0 if zero == "kd_weight" else 1.0)
    if zero == "weights":
        crit.set_weights(torch.zeros(5))
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    wrapped = crit(a, targets, teacher)
    plain = base(b, targets)
    wrapped.backward()
    plain.backward()
    torch.testing.assert_close(wrapped, plain, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    # and with weights on, the loss really differs (so the equality above can fail)
    crit.set_weights(torch.ones(5))
    crit.kd_weight = 1.0
    assert not torch.allclose(crit(logits, targets, teacher), base(logits, targets))


def test_wrapper_equals_eq4_by_hand() -> None:
    # Eq. 4: L = BCE + sum_i w_i * (1/N) sum_n KL(q_s[n,i] || q_t[n,i]), computed with `math` loops.
    logits, targets, teacher = _batch(n=4, c=3, seed=3)
    w = [0.25, 1.0, 0.0]
    T = 10.0
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=3, temperature=T)
    crit.set_weights(w)
    bce = 0.0
    for n in range(4):
        for i in range(3):
            z, y = logits[n, i].item(), targets[n, i].item()
            p = 1 / (1 + math.exp(-z))
            bce -= y * math.log(p) + (1 - y) * math.log(1 - p)
    bce /= 12
    kd = sum(w[i] * sum(_kl_by_hand(logits[n, i].item(), teacher[n, i].item(), T, "student_teacher")
                        for n in range(4)) / 4 for i in range(3))
    assert crit(logits, targets, teacher).item() == pytest.approx(bce + kd, rel=1e-12)


def test_teacher_mask_removes_classes() -> None:
    logits, targets, teacher = _batch(seed=4)
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)
    mask = torch.tensor([True, False, True, False, True])
    masked = crit(logits, targets, teacher, teacher_mask=mask)
    # arbitrary teacher values in uncovered classes change nothing
    other = teacher.clone()
    other[:, ~mask] = 50.0
    torch.testing.assert_close(crit(logits, targets, other, teacher_mask=mask), masked, rtol=0, atol=0)
    # equals the weights-zeroed loss for the uncovered classes
    crit.set_weights(mask.double())
    torch.testing.assert_close(crit(logits, targets, teacher), masked)
    # a per-element (N, C) mask equal to the broadcast (C,) mask gives the same loss
    crit.set_weights(torch.ones(5))
    torch.testing.assert_close(crit(logits, targets, teacher, teacher_mask=mask.expand(6, 5).clone()), masked)


def test_teacher_gets_no_gradient_and_inputs_unchanged() -> None:
    logits, targets, teacher = _batch()
    teacher = teacher.requires_grad_()
    copies = [logits.clone(), targets.clone(), teacher.detach().clone()]
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)
    s = logits.clone().requires_grad_()
    crit(s, targets, teacher).backward()
    assert teacher.grad is None and s.grad is not None
    assert torch.equal(logits, copies[0]) and torch.equal(targets, copies[1])
    assert torch.equal(teacher.detach(), copies[2])


def test_reduction_follows_base() -> None:
    logits, targets, teacher = _batch(seed=5)
    w = torch.tensor([0.1, 0.5, 1.0, 0.0, 0.7])
    outs = {}
    for red in ("mean", "sum", "none"):
        crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(reduction=red), num_classes=5)
        crit.set_weights(w)
        outs[red] = crit(logits, targets, teacher)
    assert outs["none"].shape == (6, 5)
    torch.testing.assert_close(outs["none"].mean(), outs["mean"])
    torch.testing.assert_close(outs["none"].sum(), outs["sum"])


def test_kwargs_pass_through_and_parts() -> None:
    logits, targets, teacher = _batch()
    seen = {}

    def base(z, y, *, scale):
        seen["scale"] = scale
        return scale * nn.functional.binary_cross_entropy_with_logits(z, y)

    crit = WeightedSubsetKDLoss(base, num_classes=5)
    parts = crit(logits, targets, teacher, return_parts=True, scale=2.0)
    assert isinstance(parts, KDLossParts) and seen["scale"] == 2.0
    torch.testing.assert_close(parts.loss, parts.base_loss + parts.kd_loss)
    torch.testing.assert_close(parts.base_loss, 2.0 * nn.functional.binary_cross_entropy_with_logits(logits, targets))
    torch.testing.assert_close(parts.kd_per_class, binary_kd_loss(logits, teacher).mean(0))
    torch.testing.assert_close(parts.kd_loss, parts.kd_per_class.sum())


def test_update_weights_and_state_dict() -> None:
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=3, delta=0.6)
    w = crit.update_weights(student_metric=[0.68, 0.9, float("nan")], teacher_metric=[0.8, 0.8, 0.8])
    # class 0: (0.8 - 0.68) / (0.8 * 0.4) = 0.375; class 1 beats the teacher -> 0; NaN -> 1
    torch.testing.assert_close(w, torch.tensor([0.375, 0.0, 1.0]))
    state = crit.state_dict()
    assert set(state) == {"weights"}
    fresh = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=3)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.weights, w)


def test_wrapper_extreme_and_bf16() -> None:
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=4)
    s = torch.tensor([[100.0, -100.0, 100.0, -100.0]], requires_grad=True)
    y = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    t = torch.tensor([[-100.0, 100.0, -100.0, 100.0]])
    loss = crit(s, y, t)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    torch.manual_seed(0)
    layer = nn.Linear(8, 4)
    x = torch.randn(32, 8)
    yy = (torch.rand(32, 4) < 0.3).float()
    tt = torch.randn(32, 4)
    ref = crit(layer(x), yy, tt)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = crit(layer(x), yy, tt)
    assert torch.isfinite(got)
    torch.testing.assert_close(got.float(), ref, rtol=3e-2, atol=1e-3)


def test_wrapper_errors() -> None:
    logits, targets, teacher = _batch()
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)
    with pytest.raises(ValueError, match=r"targets must have the same shape as logits, expected \(6, 5\), got \(6, 4\)"):
        crit(logits, targets[:, :4], teacher)
    with pytest.raises(ValueError, match=r"values in \{0, 1\}, got 2.0"):
        bad = targets.clone()
        bad[1, 2] = 2
        crit(logits, bad, teacher)
    with pytest.raises(ValueError, match=r"logits must be finite, got nan at index \(2, 3\)"):
        bad = logits.clone()
        bad[2, 3] = float("nan")
        crit(bad, targets, teacher)
    with pytest.raises(ValueError, match=r"teacher_logits must have the same shape as logits, expected \(6, 5\), got \(5, 5\)"):
        crit(logits, targets, teacher[:5])
    with pytest.raises(ValueError, match=r"num_classes=4 columns, got shape \(6, 5\)"):
        WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=4)(logits, targets, teacher)
    with pytest.raises(ValueError, match=r"weights must have 5 entries .*got 3"):
        crit.set_weights([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"teacher_mask must have shape \(5,\) or \(6, 5\), got \(4,\)"):
        crit(logits, targets, teacher, teacher_mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"teacher_mask must have dtype torch.bool, got torch.float32"):
        crit(logits, targets, teacher, teacher_mask=torch.ones(5))
    with pytest.raises(TypeError, match=r"base must be a callable criterion, got str"):
        WeightedSubsetKDLoss("bce", num_classes=5)
    with pytest.raises(ValueError, match=r"num_classes must be >= 1, got 0"):
        WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=0)
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got 1.0"):
        WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5, delta=1.0)
    with pytest.raises(ValueError, match=r"base criterion must return a scalar or a per-element loss of shape \(6, 5\), got shape \(6,\)"):
        WeightedSubsetKDLoss(lambda z, y: z.sum(1), num_classes=5)(logits, targets, teacher)
