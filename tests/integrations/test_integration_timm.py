"""RSKD with timm: a tiny timm model, timm's Mixup (multi-label, soft targets) and timm's multi-label losses
wrapped in WeightedSubsetKDLoss(soft_targets=True); the sample index carried as the target's last column,
which is how it survives timm's fast_collate / prefetcher (docs/integrations.md).

Needs the `timm` extra (in `dev`): skipped, with the reason, when it is missing.
"""
from __future__ import annotations

import pytest

timm = pytest.importorskip("timm", reason="needs the 'timm' extra: pip install -e '.[timm]'")

import torch
from timm.data import Mixup
from timm.data.loader import fast_collate
from timm.loss import AsymmetricLossMultiLabel, BinaryCrossEntropy

from rskd_loss import KDWeightUpdater, WeightedSubsetKDLoss

C, N, B = 5, 16, 8


class IndexInTarget(torch.utils.data.Dataset):
    """Items (uint8 image, target + [index]): timm's fast_collate keeps only (input, target)."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (N, 3, 32, 32), generator=g, dtype=torch.uint8)
        self.targets = (torch.rand(N, C, generator=g) < 0.4).double()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int):
        return self.images[i], torch.cat([self.targets[i], torch.tensor([float(i)], dtype=torch.float64)])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("make_base", [lambda: AsymmetricLossMultiLabel(reduction="mean"),
                                       lambda: BinaryCrossEntropy(smoothing=0.0)], ids=["asl", "bce"])
def test_timm_model_mixup_soft_targets(make_base):
    torch.manual_seed(0)
    ds = IndexInTarget()
    bank = torch.randn(N, C) * 3                              # stands in for TeacherLogitBank(...)[idx]
    model = timm.create_model("test_resnet", num_classes=C, pretrained=False)
    criterion = WeightedSubsetKDLoss(make_base(), C, soft_targets=True)
    criterion.set_weights(torch.full((C,), 0.5))
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=C, multi_label=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = torch.utils.data.DataLoader(ds, batch_size=B, shuffle=True, collate_fn=fast_collate)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
    losses, seen = [], []
    for images, target in loader:                             # as timm's train_one_epoch, prefetcher off
        assert target.shape == (B, C + 1) and target.dtype == torch.float64
        target, idx = target[:, :-1].float(), target[:, -1].long()   # split BEFORE mixup
        torch.testing.assert_close(target, ds.targets[idx].float())
        seen += idx.tolist()
        x = (images.float() - mean) / std
        x, soft = mixup(x, target)
        assert soft.shape == (B, C) and bool(((soft > 0) & (soft < 1)).any())   # soft targets
        loss = criterion(model(x), soft, bank[idx])
        opt.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() for g in grads)
        losses.append(loss.item())
    assert len(losses) == N // B
    assert sorted(seen) == list(range(N))                     # every index survived the collate exactly

    with torch.no_grad():                                     # Eq. 3 from the validation AP (here: train images)
        logits = model((ds.images.float() - mean) / std)
    weights = KDWeightUpdater(criterion, teacher_metric=[0.9] * C).step(logits=logits, targets=ds.targets)
    assert weights.shape == (C,) and torch.equal(criterion.weights, weights)


def test_reductions_the_wrapper_understands():
    """The KD term follows the base's reduction: 'mean' and 'none' agree; timm's ASL default 'batchmean'
    (sum / N) is taken as a mean, which makes the KD term C times weaker next to the base."""
    torch.manual_seed(1)
    z, y, t = torch.randn(4, C), torch.rand(4, C), torch.randn(4, C)
    mean = WeightedSubsetKDLoss(AsymmetricLossMultiLabel(reduction="mean"), C, soft_targets=True)(z, y, t)
    none = WeightedSubsetKDLoss(AsymmetricLossMultiLabel(reduction="none"), C, soft_targets=True)(z, y, t)
    torch.testing.assert_close(none.mean(), mean)
    batchmean = WeightedSubsetKDLoss(AsymmetricLossMultiLabel(), C, soft_targets=True)(z, y, t)
    base = AsymmetricLossMultiLabel()(z, y)
    torch.testing.assert_close(batchmean - base, mean - AsymmetricLossMultiLabel(reduction="mean")(z, y))

    # timm's sparse class-index targets (single-label) are refused: RSKD needs dense (N, C) targets
    with pytest.raises(ValueError, match="targets must have the same shape as logits"):
        WeightedSubsetKDLoss(BinaryCrossEntropy(), C, soft_targets=True)(z, torch.tensor([0, 1, 2, 3]), t)
