"""Tests of the multi-label OLTR baseline (baselines/oltr.py): head shapes and stage flow, centroid
initialisation, the centroid loss by hand in float64, gradients, reductions, and input checks."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rskd_loss.baselines.oltr import (
    OLTR_COSINE_SCALE,
    OLTR_FEAT_DIM,
    OLTR_FEATURE_LOSS_WEIGHT,
    OLTR_MARGIN,
    OLTR_REACHABILITY_SCALE,
    OLTR_REPEL_WEIGHT,
    ModulatedAttention,
    OLTRHead,
    OLTRLoss,
    class_mean_features,
    cosine_norm_logits,
    disc_centroids_loss,
    oltr_loss,
)

# ---- the hand case used by several tests ------------------------------------------------------
# features v1 = (2, 1), v2 = (0, 2), v3 = (1, 1); centroids c0 = (0, 0), c1 = (1, 1), c2 = (2, 0)
# targets y1 = [1, 1, 0], y2 = [0, 0, 1], y3 = [0, 0, 0] (image 3 has no positive)
# squared distances d_ik:
#   v1: c0 4+1 = 5, c1 1+0 = 1, c2 0+1 = 1
#   v2: c0 0+4 = 4, c1 1+1 = 2, c2 4+4 = 8
#   v3: c0 1+1 = 2, c1 0+0 = 0, c2 1+1 = 2
# attract a_i = 1/2 sum_{k in P_i} d_ik: a1 = (5 + 1)/2 = 3, a2 = 8/2 = 4, a3 = 0
# repel: negatives v1:c2 = 1; v2:c0,c1 = 4 + 2 = 6; v3: all = 2 + 0 + 2 = 4 -> sum 11 over B*C = 9
#   r = max(0, 10 - 11/9) = 79/9
# per sample f_i = a_i + 0.01 * 79/9; mean F = (3 + 4 + 0)/3 + 0.79/9 = 7/3 + 0.79/9
V = [[2.0, 1.0], [0.0, 2.0], [1.0, 1.0]]
C = [[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]
Y = [[1, 1, 0], [0, 0, 1], [0, 0, 0]]
REPEL = 0.01 * 79.0 / 9.0
PER_SAMPLE = [3.0 + REPEL, 4.0 + REPEL, REPEL]
MEAN_F = 7.0 / 3.0 + REPEL


def _hand_case(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor(V, dtype=dtype), torch.tensor(Y), torch.tensor(C, dtype=dtype)


def test_official_defaults() -> None:
    assert OLTR_FEAT_DIM == 512  # config/ImageNet_LT/*.py feature_dim
    assert OLTR_FEATURE_LOSS_WEIGHT == 0.01  # stage_2_meta_embedding.py FeatureLoss weight
    assert OLTR_MARGIN == 10.0 and OLTR_REPEL_WEIGHT == 0.01  # loss/DiscCentroidsLoss.py
    assert OLTR_REACHABILITY_SCALE == 10.0  # models/MetaEmbeddingClassifier.py
    assert OLTR_COSINE_SCALE == 16.0  # models/CosNormClassifier.py
    crit = OLTRLoss(3, 4)
    assert (crit.stage, crit.feature_loss_weight, crit.margin, crit.repel_weight) == (2, 0.01, 10.0, 0.01)
    head = OLTRHead(8, 3)
    assert head.feat_dim == 512 and head.feature_size == (7, 7) and head.use_attention and not head.use_meta


# ---- head ---------------------------------------------------------------------------------------


def test_head_shapes_stage1_stage2_and_other_feature_size() -> None:
    torch.manual_seed(0)
    b, cin, ncls, d = 5, 8, 3, 6
    head1 = OLTRHead.stage1(cin, ncls, feat_dim=d)
    assert head1.attention is None and not head1.use_meta
    for hw in [(7, 7), (5, 3)]:  # no attention: any map size
        out = head1(torch.randn(b, cin, *hw))
        assert out.logits.shape == (b, ncls) and out.features.shape == (b, d)
    head2 = OLTRHead(cin, ncls, feat_dim=d, use_meta=True)  # feature_size None -> 7x7
    out = head2(torch.randn(b, cin, 7, 7), centroids=torch.randn(ncls, d))
    assert out.logits.shape == (b, ncls) and out.features.shape == (b, d)
    assert bool((out.logits.abs() <= OLTR_COSINE_SCALE).all())  # cosine classifier is bounded by its scale
    head3 = OLTRHead(cin, ncls, feat_dim=d, feature_size=(5, 6), use_meta=True)
    assert head3.attention is not None and head3.attention.fc_spatial.in_features == 5 * 6 * cin
    out = head3(torch.randn(b, cin, 5, 6), centroids=torch.randn(ncls, d))
    assert out.logits.shape == (b, ncls) and out.features.shape == (b, d)
    logits, features = out  # a plain 2-tuple as well
    assert logits is out.logits and features is out.features
    with pytest.raises(ValueError, match=r"must be 5x6 \(feature_size\), got 7x7"):
        head3(torch.randn(b, cin, 7, 7), centroids=torch.randn(ncls, d))


def test_attention_is_identity_at_init_and_stage2_starts_from_stage1() -> None:
    torch.manual_seed(1)
    att = ModulatedAttention(6, feature_size=(3, 4))
    x = torch.randn(2, 6, 3, 4)
    assert torch.equal(att(x), x)
    with torch.no_grad():  # once conv_mask is non-zero the layer does change its input
        att.conv_mask.weight.normal_()
    assert not torch.allclose(att(x), x)
    head1 = OLTRHead.stage1(6, 4, feat_dim=5, feature_size=(3, 4))
    head2 = head1.to_stage2()
    assert head2.use_attention and head2.use_meta and head2.feature_size == (3, 4)
    assert torch.equal(head2.hallucinator.weight, head1.fc.weight)  # official init_weights(classifier=True)
    assert torch.equal(head2.hallucinator.bias, head1.fc.bias)
    assert torch.equal(head2.fc_add.weight, head1.fc_add.weight)
    fmap = torch.randn(3, 6, 3, 4)
    assert torch.allclose(head2(fmap, centroids=torch.randn(4, 5)).features, head1(fmap).features)
    with pytest.raises(ValueError, match="to_stage2 needs a stage-1 head"):
        head2.to_stage2()


def test_meta_embedding_by_hand() -> None:
    head = OLTRHead(2, 2, feat_dim=2, use_attention=False, use_meta=True).double()
    with torch.no_grad():
        head.hallucinator.weight.zero_()
        head.hallucinator.bias.zero_()  # softmax of zeros: memory = mean of the centroids
        head.selector.weight.zero_()
        head.selector.bias.fill_(math.atanh(0.5))  # concept selector e = tanh(atanh 0.5) = 0.5
        head.cosine_weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # unit rows e1, e2 after norm
    v = torch.tensor([[3.0, 4.0]], dtype=torch.float64)
    c = torch.tensor([[0.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    # distances |v - c0| = 5, |v - c1| = 4 -> reachability 10 / 4 = 2.5
    # memory = (c0 + c1) / 2 = (1.5, 0); meta = 2.5 * ((3, 4) + 0.5 * (1.5, 0)) = (9.375, 10)
    # |meta| = sqrt(9.375^2 + 100); logits = 16 * |meta|/(1+|meta|) * meta/|meta| . (e1, e2)
    nm = math.sqrt(9.375**2 + 100.0)
    expected = [16.0 * nm / (1.0 + nm) * 9.375 / nm, 16.0 * nm / (1.0 + nm) * 10.0 / nm]
    got = head.meta_embedding(v, c)
    assert torch.allclose(got, torch.tensor([expected], dtype=torch.float64), rtol=0, atol=1e-12)


def test_cosine_norm_logits_by_hand() -> None:
    # x = (3, 4): |x| = 5, squash 5/6; w = (1, 0): cos = 3/5 -> 16 * 5/6 * 3/5 = 8
    f64 = torch.float64
    z = cosine_norm_logits(torch.tensor([[3.0, 4.0]], dtype=f64), torch.tensor([[1.0, 0.0]], dtype=f64))
    assert z.item() == pytest.approx(8.0, abs=1e-12)
    # a zero vector stays finite (norm clamped) and gives 0
    assert cosine_norm_logits(torch.zeros(1, 2), torch.ones(3, 2)).abs().max().item() == 0.0


def test_head_detaches_centroids() -> None:
    torch.manual_seed(2)
    head = OLTRHead(4, 3, feat_dim=5, feature_size=2, use_meta=True)
    crit = OLTRLoss(3, 5)
    crit.set_centroids(torch.randn(3, 5))
    out = head(torch.randn(6, 4, 2, 2), centroids=crit.centroids)
    F.binary_cross_entropy_with_logits(out.logits, torch.ones(6, 3)).backward()
    assert crit.centroids.grad is None  # official: the classifier gets centroids.data
    assert head.hallucinator.weight.grad is not None


def test_head_gradcheck_float64() -> None:
    torch.manual_seed(3)
    head = OLTRHead(2, 3, feat_dim=4, feature_size=(1, 3), use_meta=True).double()
    with torch.no_grad():
        head.attention.conv_mask.weight.normal_(0, 0.5)  # exercise the attention path too
    fmap = torch.randn(2, 2, 1, 3, dtype=torch.float64, requires_grad=True)
    cent = torch.randn(3, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: head(x, centroids=cent).logits, (fmap,))


# ---- centroids ----------------------------------------------------------------------------------


def test_class_means_and_init_centroids_by_hand() -> None:
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, -4.0]])
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0]])
    # class 0: rows 0, 1 -> ((1+3)/2, (0+2)/2) = (2, 1)
    # class 1: rows 0, 2 (row 0 has two positives and counts in both) -> ((1+5)/2, (0-4)/2) = (3, -2)
    # class 2: no positive -> zero centroid and a warning
    means, counts = class_mean_features(feats, y)
    assert means.tolist() == [[2.0, 1.0], [3.0, -2.0], [0.0, 0.0]]
    assert counts.tolist() == [2.0, 2.0, 0.0]
    crit = OLTRLoss(3, 2)
    assert not bool(crit.centroids_initialized)
    feats_before, y_before = feats.clone(), y.clone()
    with pytest.warns(UserWarning, match=r"1 of 3 classes have no positive.*\[2\]"):
        crit.init_centroids(feats, y)
    assert crit.centroids.detach().tolist() == [[2.0, 1.0], [3.0, -2.0], [0.0, 0.0]]
    assert bool(crit.centroids_initialized)
    assert torch.equal(feats, feats_before) and torch.equal(y, y_before)
    # the flag travels with the state dict
    other = OLTRLoss(3, 2)
    other.load_state_dict(crit.state_dict())
    assert bool(other.centroids_initialized) and torch.equal(other.centroids, crit.centroids)


# ---- centroid loss by hand (float64) -----------------------------------------------------------


def test_disc_centroids_loss_hand_case_value() -> None:
    v, y, c = _hand_case()
    none = disc_centroids_loss(v, y, c, reduction="none")
    assert torch.allclose(none, torch.tensor(PER_SAMPLE, dtype=torch.float64), rtol=0, atol=1e-12)
    assert disc_centroids_loss(v, y, c).item() == pytest.approx(MEAN_F, abs=1e-12)
    assert disc_centroids_loss(v, y, c, reduction="sum").item() == pytest.approx(3 * MEAN_F, abs=1e-12)
    # hinge inactive: margin 1 < mean negative distance 11/9 -> only attract remains
    assert disc_centroids_loss(v, y, c, margin=1.0).item() == pytest.approx(7.0 / 3.0, abs=1e-12)


def test_disc_centroids_loss_hand_case_gradient() -> None:
    v, y, c = _hand_case()
    v.requires_grad_(True)
    c.requires_grad_(True)
    disc_centroids_loss(v, y, c).backward()
    # dF/dv1 = (1/3) [(v1 - c0) + (v1 - c1)] + 0.01 * d r/d v1
    #        = (1/3) (3, 1) + 0.01 * (-(1/9) * 2 (v1 - c2)) = (1, 1/3) + 0.01 * (0, -2/9)
    expected_v1 = torch.tensor([1.0, 1.0 / 3.0 - 0.02 / 9.0], dtype=torch.float64)
    assert torch.allclose(v.grad[0], expected_v1, atol=1e-12)
    # v3 has no positive: only the repel part, 0.01 * (-(1/9)) * 2 * sum_k (v3 - c_k)
    #   sum_k (v3 - c_k) = (1, 1) + (0, 0) + (-1, 1) = (0, 2) -> (0, -0.04/9)
    assert torch.allclose(v.grad[2], torch.tensor([0.0, -0.04 / 9.0], dtype=torch.float64), atol=1e-12)
    # dF/dc2 = (1/3)(c2 - v2)  [attract, v2 positive for class 2]
    #        + 0.01 * (-(1/9)) * 2 * [(c2 - v1) + (c2 - v3)]  [repel, class 2 negative for v1, v3]
    #        = (1/3)(2, -2) + 0.01 * (-(2/9)) * ((0, -1) + (1, -1)) = (2/3 - 0.02/9, -2/3 + 0.04/9)
    expected_c2 = torch.tensor([2.0 / 3.0 - 0.02 / 9.0, -2.0 / 3.0 + 0.04 / 9.0], dtype=torch.float64)
    assert torch.allclose(c.grad[2], expected_c2, atol=1e-12)


def test_oltr_loss_hand_case_and_reductions() -> None:
    v, y, c = _hand_case()
    z = torch.zeros(3, 3, dtype=torch.float64)  # BCE(0, y) = ln 2 for every element
    w = 0.01
    none = oltr_loss(z, y, v, c, reduction="none")
    # element (i, k) = ln 2 + (w / C) f_i with C = 3
    expected = torch.tensor([[math.log(2.0) + w / 3.0 * f] * 3 for f in PER_SAMPLE], dtype=torch.float64)
    assert none.shape == (3, 3)
    assert torch.allclose(none, expected, rtol=0, atol=1e-12)
    mean = oltr_loss(z, y, v, c)
    assert mean.item() == pytest.approx(math.log(2.0) + w / 3.0 * MEAN_F, abs=1e-12)
    assert torch.allclose(mean, none.mean(), rtol=0, atol=1e-12)
    assert torch.allclose(oltr_loss(z, y, v, c, reduction="sum"), none.sum(), rtol=0, atol=1e-12)
    # per image, summed over classes: sum_k BCE + w * f_i (the official 1 : 0.01 ratio)
    assert torch.allclose(none.sum(1), 3 * math.log(2.0) + w * torch.tensor(PER_SAMPLE, dtype=torch.float64))


def test_reductions_consistent_random() -> None:
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 4, generator=g)
    y = (torch.rand(6, 4, generator=g) < 0.4).long()
    v, c = torch.rand(6, 3, generator=g), torch.rand(4, 3, generator=g)
    none = oltr_loss(z, y, v, c, reduction="none")
    assert torch.allclose(oltr_loss(z, y, v, c), none.mean(), atol=1e-6)
    assert torch.allclose(oltr_loss(z, y, v, c, reduction="sum"), none.sum(), atol=1e-5)


def test_stage1_is_plain_bce_in_value_and_gradient() -> None:
    g = torch.Generator().manual_seed(5)
    z1 = torch.randn(5, 4, generator=g, requires_grad=True)
    z2 = z1.detach().clone().requires_grad_(True)
    y = (torch.rand(5, 4, generator=g) < 0.5).float()
    a = OLTRLoss(4, 3, stage=1)(z1, y, features=torch.randn(5, 3))  # features ignored in stage 1
    b = F.binary_cross_entropy_with_logits(z2, y)
    a.backward()
    b.backward()
    assert torch.allclose(a, b) and torch.allclose(z1.grad, z2.grad)
    # weight 0 in stage 2 is plain BCE too
    c0 = oltr_loss(z1.detach(), y, torch.randn(5, 3), torch.randn(4, 3), feature_loss_weight=0.0)
    assert torch.allclose(c0, b.detach())


def test_module_equals_function() -> None:
    g = torch.Generator().manual_seed(6)
    z, v = torch.randn(4, 3, generator=g), torch.randn(4, 5, generator=g)
    y = (torch.rand(4, 3, generator=g) < 0.5).long()
    crit = OLTRLoss(3, 5, feature_loss_weight=0.2, margin=3.0, repel_weight=0.5, reduction="none")
    crit.set_centroids(torch.randn(3, 5, generator=g))
    expected = oltr_loss(
        z, y, v, crit.centroids, feature_loss_weight=0.2, margin=3.0, repel_weight=0.5, reduction="none"
    )
    assert torch.equal(crit(z, y, features=v), expected)


def test_gradcheck_float64() -> None:
    g = torch.Generator().manual_seed(7)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[1, 0, 1], [0, 0, 0], [0, 1, 0], [1, 1, 0]])
    v = torch.randn(4, 2, generator=g, dtype=torch.float64, requires_grad=True)
    c = torch.randn(3, 2, generator=g, dtype=torch.float64, requires_grad=True)
    for margin in (10.0, 0.5):  # hinge active (mean distance < 10) and inactive (> 0.5)
        for reduction in ("mean", "sum", "none"):
            def fn(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor, margin=margin, reduction=reduction) -> torch.Tensor:
                return oltr_loss(a, y, b, d, margin=margin, feature_loss_weight=0.7, reduction=reduction)

            assert torch.autograd.gradcheck(fn, (z, v, c))


def test_gradient_step_lowers_loss_on_fixed_batch() -> None:
    torch.manual_seed(8)
    cin, ncls, d = 6, 4, 8
    fmap = torch.randn(8, cin, 3, 3)
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0],
                      [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    head1 = OLTRHead.stage1(cin, ncls, feat_dim=d)
    crit1 = OLTRLoss(ncls, d, stage=1)
    opt = torch.optim.SGD(head1.parameters(), lr=0.5)
    first = crit1(head1(fmap).logits, y).item()
    for _ in range(8):
        opt.zero_grad()
        crit1(head1(fmap).logits, y).backward()
        opt.step()
    assert crit1(head1(fmap).logits, y).item() < first
    head2 = head1.to_stage2(feature_size=3)
    crit2 = OLTRLoss(ncls, d, feature_loss_weight=1.0)
    with torch.no_grad():
        crit2.init_centroids(head1(fmap).features, y)
    opt = torch.optim.SGD(list(head2.parameters()) + list(crit2.parameters()), lr=0.1)

    def step_loss() -> torch.Tensor:
        out = head2(fmap, centroids=crit2.centroids)
        return crit2(out.logits, y, features=out.features)

    first = step_loss().item()
    for _ in range(8):
        opt.zero_grad()
        step_loss().backward()
        opt.step()
    last = step_loss().item()
    assert math.isfinite(last) and last < first


def test_extreme_inputs_stay_finite() -> None:
    z = torch.tensor([[100.0, -100.0, 100.0], [-100.0, 100.0, -100.0]], requires_grad=True)
    y = torch.tensor([[0, 1, 1], [1, 0, 0]])
    v = torch.full((2, 4), 100.0, requires_grad=True)
    c = torch.full((3, 4), -100.0, requires_grad=True)
    loss = oltr_loss(z, y, v, c)
    loss.backward()
    assert torch.isfinite(loss) and all(bool(torch.isfinite(t.grad).all()) for t in (z, v, c))
    head = OLTRHead(3, 3, feat_dim=4, feature_size=2, use_meta=True)
    out = head(torch.full((2, 3, 2, 2), 100.0), centroids=torch.zeros(3, 4))
    assert bool(torch.isfinite(out.logits).all())
    # a feature equal to a centroid: reachability distance clamped, logits finite
    assert bool(torch.isfinite(head.meta_embedding(torch.zeros(1, 4), torch.zeros(3, 4))).all())


def test_bf16_autocast_close_to_fp32() -> None:
    torch.manual_seed(9)
    head = OLTRHead(8, 3, feat_dim=6, feature_size=3, use_meta=True)
    crit = OLTRLoss(3, 6)
    fmap = torch.randn(4, 8, 3, 3)
    y = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    with torch.no_grad():
        crit.init_centroids(head(fmap, centroids=torch.zeros(3, 6)).features, y)
    out32 = head(fmap, centroids=crit.centroids)
    ref = crit(out32.logits, y, features=out32.features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = head(fmap, centroids=crit.centroids)
        low = crit(out16.logits, y, features=out16.features)
    assert torch.isfinite(low) and bool(torch.isfinite(out16.logits).all())
    assert low.float().item() == pytest.approx(ref.item(), rel=5e-2)


def test_caller_tensors_unchanged() -> None:
    g = torch.Generator().manual_seed(10)
    z = torch.randn(4, 3, generator=g, requires_grad=True)
    y = (torch.rand(4, 3, generator=g) < 0.5).float()
    v = torch.randn(4, 5, generator=g, requires_grad=True)
    cent = torch.randn(3, 5, generator=g)
    fmap = torch.randn(4, 2, 7, 7, generator=g)
    saved = [t.detach().clone() for t in (z, y, v, cent, fmap)]
    crit = OLTRLoss(3, 5)
    crit.set_centroids(cent)
    crit(z, y, features=v).backward()
    oltr_loss(z, y, v, cent, reduction="none").sum().backward()
    head = OLTRHead(2, 3, feat_dim=5, use_meta=True)
    head(fmap, centroids=cent).logits.sum().backward()
    crit.init_centroids(v, y)
    for before, after in zip(saved, (z, y, v, cent, fmap)):
        assert torch.equal(before, after.detach())


# ---- bad inputs ---------------------------------------------------------------------------------


def test_bad_inputs_raise() -> None:
    z, y = torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 0]])
    crit = OLTRLoss(3, 4)
    crit.set_centroids(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"features must have shape \(2, feat_dim\) = \(2, 4\), got \(2, 5"):
        crit(z, y, features=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"features must have shape \(2, feat_dim\) = \(2, 4\), got \(3, "):
        crit(z, y, features=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="features .* are required in stage 2"):
        crit(z, y)
    with pytest.raises(ValueError, match="logits must have 3 columns"):
        crit(torch.zeros(2, 4), torch.zeros(2, 4), features=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="multi-hot"):
        crit(z, torch.tensor([[2, 0, 0], [0, 1, 0]]), features=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="features must be finite"):
        crit(z, y, features=torch.tensor([[float("nan"), 0.0, 0.0, 0.0], [0.0] * 4]))
    with pytest.raises(TypeError, match="features must be a floating-point tensor"):
        crit(z, y, features=torch.zeros(2, 4, dtype=torch.long))
    for stage in (0, 3, "2", True):
        with pytest.raises(ValueError, match="stage must be 1 .* or 2"):
            OLTRLoss(3, 4, stage=stage)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="stage must be 1 .* or 2"):
            oltr_loss(z, y, stage=stage)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reduction must be one of"):
        OLTRLoss(3, 4, reduction="avg")
    with pytest.raises(ValueError, match="feature_loss_weight must be >= 0"):
        OLTRLoss(3, 4, feature_loss_weight=-1.0)
    with pytest.raises(RuntimeError, match="needs initialised centroids"):
        OLTRLoss(3, 4)(z, y, features=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"centroids must have shape \(3, feat_dim\)"):
        oltr_loss(z, y, torch.zeros(2, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"targets must have shape \(N, 3\)"):
        crit.init_centroids(torch.zeros(2, 4), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"centroids must have shape \(3, feat_dim\) = \(3, 4\), got \(3, 5"):
        crit.set_centroids(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="at least one sample"):
        disc_centroids_loss(torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(3, 4))


def test_head_bad_inputs_raise() -> None:
    head2 = OLTRHead(4, 3, feat_dim=5, feature_size=2, use_meta=True)
    head1 = OLTRHead.stage1(4, 3, feat_dim=5)
    x = torch.randn(2, 4, 2, 2)
    with pytest.raises(ValueError, match="centroids .* are required by a stage-2 head"):
        head2(x)
    with pytest.raises(ValueError, match=r"centroids must have shape \(3, feat_dim\) = \(3, 5\), got \(3, "):
        head2(x, centroids=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="only used by a stage-2 head"):
        head1(x, centroids=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"feature_map must be \(B, 4, H, W\), got shape \(2, 5, 2, 2\)"):
        head2(torch.randn(2, 5, 2, 2), centroids=torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"feature_map must be \(B, 4, H, W\)"):
        head1(torch.randn(2, 4))
    with pytest.raises(TypeError, match="feature_map must be a floating-point tensor"):
        head1(torch.ones(2, 4, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="feature_size must be >= 1, got 0"):
        OLTRHead(4, 3, feature_size=0)
    with pytest.raises(ValueError, match=r"feature_size must be an int or an \(H, W\) pair"):
        OLTRHead(4, 3, feature_size=(2, 2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="use_meta must be a bool"):
        OLTRHead(4, 3, use_meta=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="in_channels // reduction must be >= 1"):
        OLTRHead(1, 3, attention_reduction=2)
    with pytest.raises(ValueError, match="scale must be > 0"):
        OLTRHead(4, 3, scale=0.0)
