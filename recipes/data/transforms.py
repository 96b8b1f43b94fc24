"""Train / eval image transforms (``torchvision.transforms.v2``) for fundus photographs.

Both take an RGB ``PIL.Image`` (what :class:`~recipes.data.csv_dataset.MultiLabelCSVDataset` returns)
and give a float32 tensor ``(3, size, size)`` normalised with the ImageNet statistics
``mean = (0.485, 0.456, 0.406)``, ``std = (0.229, 0.224, 0.225)``: the backbone of the paper is an
ImageNet-pretrained ResNet-50 (Sec. 3.1), and these are the values its weights were trained with
(torchvision ``references/classification/presets.py``, ``ClassificationPresetTrain`` /
``ClassificationPresetEval`` defaults). The same statistics are used for the from-scratch tiny CNNs of
the CPU demo, so a recipe never has to know which backbone it feeds.

The paper states only the input size, 256 x 256 (Sec. 3.1); the augmentation below is this project's
choice, kept mild because lesions are small and colour carries diagnosis:

* ``train_transform``: ``RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1))`` (close to the
  full field, so a peripheral lesion is rarely cropped out), horizontal and vertical flips (p = 0.5
  each; left and right eyes are mirror images), ``RandomRotation(15)`` with black fill (the
  background of a fundus photograph), ``ColorJitter(brightness=0.2, contrast=0.2, saturation=0.1,
  hue=0.02)``.
* ``eval_transform``: ``Resize(size)`` (short side) then ``CenterCrop(size)``: deterministic; on
  the square crops of :mod:`recipes.data.cache` this is a plain resize.

The ranges are written once, in ``AUGMENTATION``. The recipes do not run ``train_transform`` in their
loaders: they decode and resize on the CPU with ``uint8_transform`` and run the same augmentation
batched on the device (``recipes.data.augment.BatchAugment``, the same ranges, hue left out); ``train_transform`` /
``eval_transform`` are for a user's own CPU pipeline.

Resizing is bilinear with antialiasing (the torchvision reference's default interpolation).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

__all__ = ["AUGMENTATION", "IMAGENET_MEAN", "IMAGENET_STD", "train_transform", "eval_transform", "uint8_transform",
           "denormalize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The training augmentation's ranges, the one place they are written: ``train_transform`` (CPU,
#: torchvision) and ``recipes.data.augment.BatchAugment`` (batched on the device; no hue) read them here.
AUGMENTATION = {"scale": (0.8, 1.0), "ratio": (0.9, 1.1), "degrees": 15.0, "brightness": 0.2, "contrast": 0.2,
                "saturation": 0.1, "hue": 0.02}


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return size


def train_transform(
    size: int = 256,
    *,
    scale: tuple[float, float] = AUGMENTATION["scale"],
    degrees: float = AUGMENTATION["degrees"],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Random augmentation for training; see the module doc for each step and its default.

    Shape:
        PIL RGB image (any size) -> float32 tensor ``(3, size, size)``.

    Example::

        >>> from PIL import Image
        >>> import torch
        >>> torch.manual_seed(0) is not None
        True
        >>> train_transform(32)(Image.new("RGB", (40, 48))).shape
        torch.Size([3, 32, 32])
    """
    size = _check_size(size)
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=scale, ratio=AUGMENTATION["ratio"], antialias=True),
        v2.RandomHorizontalFlip(p=0.5),
        v2.RandomVerticalFlip(p=0.5),
        v2.RandomRotation(degrees, fill=0),
        v2.ColorJitter(**{k: AUGMENTATION[k] for k in ("brightness", "contrast", "saturation", "hue")}),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def uint8_transform(size: int = 256) -> v2.Compose:
    """Resize (short side) + centre crop, kept as uint8: the CPU part of the recipes' pipeline.

    The recipes decode and resize on the CPU and ship uint8 to the device, where
    ``recipes.data.augment.BatchAugment`` augments (training) and normalises, batched.

    Shape:
        PIL RGB image (any size) -> uint8 tensor ``(3, size, size)``.

    Example::
        >>> from PIL import Image
        >>> t = uint8_transform(32)(Image.new("RGB", (40, 48)))
        >>> t.shape, t.dtype
        (torch.Size([3, 32, 32]), torch.uint8)
    """
    size = _check_size(size)
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def eval_transform(
    size: int = 256,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Deterministic resize (short side) + centre crop + normalisation for validation and test.

    Shape:
        PIL RGB image (any size) -> float32 tensor ``(3, size, size)``.

    Example::

        >>> from PIL import Image
        >>> eval_transform(32)(Image.new("RGB", (40, 48))).shape
        torch.Size([3, 32, 32])
    """
    size = _check_size(size)
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(size, antialias=True),
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Undo the normalisation (for figures): returns a new tensor in [0, 1] (clamped)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return (x * s + m).clamp(0, 1)
