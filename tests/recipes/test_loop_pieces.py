"""recipes/data/augment.py, views.py, checkpoints.py, tasks.py: keyed random numbers, the on-device batch augmentation, the resumable sampler,
stale temporary files, class counts of a count-based criterion."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from recipes.data.augment import BatchAugment, keyed_uniforms
from recipes.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from recipes.data.views import ResumableSampler
from recipes.engine.checkpoints import remove_stale_temporaries

MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
# crop area 1 (u0 = 1), aspect 1 (u1 = 0.5: the log-midpoint of (0.9, 1.1) is 0 only for a symmetric
# range, so tests use ratio=(1, 1)), centred (u2 = u3 = 0.5), no flip (u4, u5 >= 0.5), angle 0
# (u6 = 0.5), jitter factors 1 (u7 = u8 = u9 = 0.5)
NEUTRAL = torch.tensor([1.0, 0.5, 0.5, 0.5, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5])


def images(b: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, size, size), dtype=torch.uint8, generator=g)


def rand_with(b: int, **cols: float) -> torch.Tensor:
    r = NEUTRAL.repeat(b, 1)
    for k, v in cols.items():
        r[:, int(k[1:])] = v
    return r


def normalised(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 255 - MEAN) / STD


def test_keyed_uniforms_are_a_function_of_seed_epoch_position():
    a = keyed_uniforms(0, 1, np.arange(1000), 10)
    assert a.shape == (1000, 10) and a.dtype == torch.float32
    assert float(a.min()) >= 0.0 and float(a.max()) < 1.0
    assert torch.equal(a, keyed_uniforms(0, 1, torch.arange(1000), 10))
    assert torch.equal(a[500:510], keyed_uniforms(0, 1, np.arange(500, 510), 10))  # any batch of positions
    for other in (keyed_uniforms(1, 1, np.arange(1000), 10), keyed_uniforms(0, 2, np.arange(1000), 10)):
        assert (other != a).float().mean() > 0.99
    # roughly uniform and uncorrelated: mean 1/2, variance 1/12, neighbouring columns independent
    assert abs(float(a.mean()) - 0.5) < 0.01 and abs(float(a.var()) - 1 / 12) < 0.003
    assert abs(float(torch.corrcoef(torch.stack([a[:, 0], a[:, 1]]))[0, 1])) < 0.1


def test_neutral_draw_and_evaluation_only_normalise():
    x = images()
    aug = BatchAugment(16, ratio=(1.0, 1.0))
    torch.testing.assert_close(aug(x, train=True, rand=rand_with(3)), normalised(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(aug(x, train=False), normalised(x), atol=1e-6, rtol=0)


def test_flips_and_rotation_by_ninety_degrees():
    x = images()
    aug = BatchAugment(16, ratio=(1.0, 1.0), degrees=90.0)
    torch.testing.assert_close(aug(x, True, rand_with(3, u4=0.1)), normalised(x.flip(3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(aug(x, True, rand_with(3, u5=0.1)), normalised(x.flip(2)), atol=1e-5, rtol=0)
    # u6 = 1: +90 degrees; the output pixel (row i, col j) reads the input at (j, W-1-i): rot90 k=1 on (H, W)
    out = aug(x, True, rand_with(3, u6=1.0))
    torch.testing.assert_close(out, normalised(torch.rot90(x, 1, dims=(2, 3))), atol=1e-4, rtol=0)


def test_crop_of_a_quarter_of_the_area_is_the_centre_upsampled():
    x = images(size=16)
    aug = BatchAugment(16, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    out = aug(x, True, rand_with(3))  # w = h = 1/2, centred: input pixels 4..11, magnified 2x
    centre = x[:, :, 4:12, 4:12].float()
    expected = F.interpolate(centre, scale_factor=2, mode="bilinear", align_corners=False)
    # bilinear magnification by 2 agrees away from the border (there grid_sample reads the zero padding
    # of the crop's surroundings, which are real pixels here, while interpolate clamps)
    torch.testing.assert_close(out[..., 1:-1, 1:-1], ((expected / 255 - MEAN) / STD)[..., 1:-1, 1:-1],
                               atol=1e-4, rtol=0)


def test_colour_jitter_factors():
    x = images()
    aug = BatchAugment(16, ratio=(1.0, 1.0))
    # u7 = 1: brightness x 1.2, clamped to 1
    out = aug(x, True, rand_with(3, u7=1.0))
    torch.testing.assert_close(out, ((x.float() / 255 * 1.2).clamp(0, 1) - MEAN) / STD, atol=1e-5, rtol=0)
    # u9 = 0: saturation 0.9: blend with the per-pixel grey 0.299 R + 0.587 G + 0.114 B
    out = aug(x, True, rand_with(3, u9=0.0))
    v = x.float() / 255
    grey = (v * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(out, (((v - grey) * 0.9 + grey).clamp(0, 1) - MEAN) / STD, atol=1e-5, rtol=0)


def test_same_rand_same_output_and_the_input_is_untouched():
    x = images()
    before = x.clone()
    r = keyed_uniforms(3, 0, np.arange(3), BatchAugment.NUM_RANDOM)
    aug = BatchAugment(16)
    assert torch.equal(aug(x, True, r), aug(x, True, r))
    assert torch.equal(x, before)


def test_bad_inputs():
    aug = BatchAugment(16)
    with pytest.raises(TypeError, match=r"expects uint8 images \(B, 3, H, W\), got torch.float32"):
        aug(torch.zeros(2, 3, 16, 16), True)
    with pytest.raises(ValueError, match=r"rand must have shape \(2, 10\), got \(2, 9\)"):
        aug(images(2), True, torch.zeros(2, 9))
    with pytest.raises(ValueError, match=r"evaluation images must be 16 x 16, got \(20, 20\)"):
        aug(images(2, 20), False)
    with pytest.raises(ValueError, match=r"scale must be"):
        BatchAugment(16, scale=(0.9, 0.5))


def test_resumable_sampler_starts_where_asked_for_one_epoch():
    base = torch.utils.data.DistributedSampler(list(range(20)), num_replicas=1, rank=0, shuffle=True, seed=0)
    s = ResumableSampler(base)
    s.set_epoch(3)
    full = list(s)
    s.set_epoch(3, start=7)
    assert list(s) == full[7:] and len(s) == 13
    s.set_epoch(4)
    assert len(list(s)) == 20 and list(s) != full
    with pytest.raises(ValueError, match=r"start must be in \[0, 20\], got 21"):
        s.set_epoch(0, start=21)


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.pt.123.ab.tmp").write_bytes(b"half")
    (tmp_path / "last.pt").write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path) == [".last.pt.123.ab.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("criterion, warns", [("rw", True), ("LDAM", True), ("db", True), ("bce", False),
                                              ("focal", False), ("asl", False)])
def test_a_class_without_training_positives_counts_as_one(criterion, warns, capsys):
    from recipes.engine.tasks import counts_for_criterion

    counts = counts_for_criterion(np.array([5, 0, 2]), ["a", "b", "c"], criterion)
    assert counts.tolist() == [5, 1, 2]
    err = capsys.readouterr().err
    assert ("no training positive" in err and "['b']" in err) == warns
