"""The training augmentation, batched on the device, with random choices keyed by sample position."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from recipes.data.transforms import AUGMENTATION, IMAGENET_MEAN, IMAGENET_STD

_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele, Lea & Flood 2014) on uint64 arrays: a well-mixed 64-bit hash."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, positions: Sequence[int] | np.ndarray | torch.Tensor,
                   n: int) -> torch.Tensor:
    """(B, n) float32 uniforms in [0, 1), a pure function of (seed, epoch, position, column).

    The random choices of the training augmentation are drawn from here, keyed by the sample's position
    in the epoch's global sample sequence, instead of from a random-number stream: an interrupted and
    resumed run, a run on 1 process and on 8, and a run with 0 or 16 loader workers all augment every
    sample identically.
    """
    with np.errstate(over="ignore"):
        pos = np.asarray(positions, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
        key = _splitmix64(np.uint64(seed) * _SPLITMIX_GAMMA + np.uint64(epoch))
        z = _splitmix64(key ^ _splitmix64(pos * np.uint64(n) + np.arange(n, dtype=np.uint64) + _SPLITMIX_GAMMA))
    return torch.from_numpy(((z >> np.uint64(40)).astype(np.float64) / 2.0 ** 24).astype(np.float32))


class BatchAugment(nn.Module):
    """uint8 (B, 3, H, W) images on the device -> float (B, 3, size, size), augmented (train) and normalised.

    The whole training augmentation runs batched on the device, so the CPU only decodes and resizes
    (augmenting on the CPU starves a GPU). Per sample, with the uniforms ``rand`` (B, 10):

    * random resized crop: area fraction ``s ~ U(scale)``, aspect ``r ~ logU(ratio)``, crop of
      ``w = sqrt(s r)`` x ``h = sqrt(s / r)`` of the image (clipped to 1) at a uniform position;
    * horizontal and vertical flips (p = 0.5 each; left and right eyes are mirror images);
    * rotation by ``U(-degrees, degrees)``, black fill (the background of a fundus photograph);
    * brightness, contrast and saturation factors ``U(1 - b, 1 + b)`` (torchvision's ``ColorJitter``
      formulas: scale; blend with the image's mean grey; blend with the per-pixel grey), composed
      into one colour matrix per sample and clamped to [0, 1] once at the end (torchvision clamps
      after each of the three: they differ only where a pixel passes 0 or 1 half-way).

    Crop, flips and rotation are one affine map per sample, sampled bilinearly (``grid_sample``):
    output pixel ``p`` (normalised to [-1, 1]) reads the input at
    ``R(theta) diag(w f_x, h f_y) p + c``. Defaults: ``recipes.data.transforms.AUGMENTATION``, the ranges of
    the CPU pipeline ``train_transform``, hue jitter left out. Evaluation (``train=False``) only converts and
    normalises (the loader already resized and centre-cropped). ``rand=None`` draws from torch's
    generator (not reproducible across world sizes; the recipes pass :func:`keyed_uniforms`).
    """

    NUM_RANDOM = 10

    def __init__(self, size: int, scale: tuple[float, float] = AUGMENTATION["scale"],
                 ratio: tuple[float, float] = AUGMENTATION["ratio"], degrees: float = AUGMENTATION["degrees"],
                 brightness: float = AUGMENTATION["brightness"], contrast: float = AUGMENTATION["contrast"],
                 saturation: float = AUGMENTATION["saturation"]) -> None:
        super().__init__()
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")
        self.size, self.scale, self.degrees = int(size), scale, float(degrees)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.jitter = (float(brightness), float(contrast), float(saturation))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("grey", torch.tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, train: bool, rand: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise TypeError(f"BatchAugment expects uint8 images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        if not train:
            if x.shape[-2:] != (self.size, self.size):
                raise ValueError(f"evaluation images must be {self.size} x {self.size}, got {tuple(x.shape[-2:])}")
            return x.float().div_(255.0).sub_(self.mean).div_(self.std)
        b = x.shape[0]
        if rand is None:
            rand = torch.rand(b, self.NUM_RANDOM, device=x.device)
        if rand.shape != (b, self.NUM_RANDOM):
            raise ValueError(f"rand must have shape ({b}, {self.NUM_RANDOM}), got {tuple(rand.shape)}")
        u = rand.to(x.device, torch.float32).unbind(1)
        # crop, flips, rotation: one affine map per sample
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * u[1])
        w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        cx, cy = (2 * u[2] - 1) * (1 - w), (2 * u[3] - 1) * (1 - h)
        fx, fy = torch.where(u[4] < 0.5, -1.0, 1.0), torch.where(u[5] < 0.5, -1.0, 1.0)
        angle = math.radians(self.degrees) * (2 * u[6] - 1)
        cos, sin = angle.cos(), angle.sin()
        x = nn.functional.grid_sample(x.float(), self._grid(w * fx * cos, -h * fy * sin, cx, w * fx * sin,
                                                            h * fy * cos, cy), mode="bilinear",
                                      padding_mode="zeros", align_corners=False)
        # colour: brightness b, contrast c (around the mean grey level L of the brightened image),
        # saturation s (around each pixel's grey g = w.x) are affine in x: y = c b S x + (1 - c) L with
        # S = s I + (1 - s) 1 w^T (S 1 = 1, as w sums to 1); one 3x3 matrix per sample, then one clamp
        bri, con, sat = self.jitter
        fb, fc, fs = (1 - bri + 2 * bri * u[7]), (1 - con + 2 * con * u[8]), (1 - sat + 2 * sat * u[9])
        eye = torch.eye(3, device=x.device)
        S = fs.view(b, 1, 1) * eye + (1 - fs).view(b, 1, 1) * self.grey.view(1, 1, 3)
        level = fb * (x.mean((2, 3)) @ self.grey.view(3, 1)).view(b) / 255.0
        matrix = (fc * fb / 255.0).view(b, 1, 1) * S
        y = torch.bmm(matrix, x.view(b, 3, -1)).view_as(x)
        y.add_(((1 - fc) * level).view(b, 1, 1, 1)).clamp_(0.0, 1.0)
        return y.sub_(self.mean).div_(self.std)

    def _grid(self, a: torch.Tensor, b_: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
              f: torch.Tensor) -> torch.Tensor:
        """``affine_grid`` for the maps [[a, b, c], [d, e, f]] (B,) each, by broadcasting (no batched matmul)."""
        n = self.size
        lin = (torch.arange(n, device=a.device, dtype=torch.float32) * 2 + 1) / n - 1  # pixel centres
        gx, gy = lin.view(1, 1, n), lin.view(1, n, 1)
        v = lambda t: t.view(-1, 1, 1)  # noqa: E731
        return torch.stack([v(a) * gx + v(b_) * gy + v(c), v(d) * gx + v(e) * gy + v(f)], -1)
