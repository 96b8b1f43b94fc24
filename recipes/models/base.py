"""What every backbone builder of the recipes shares: the error a model setting raises, the built
backbone's description, and the reader of a ``model.weights_path`` file. The builders
(:mod:`.backbones`, :mod:`.timm_backbones`) import it; it imports neither.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn

from rskd_loss.errors import RSKDError

__all__ = ["Backbone", "ModelError", "read_state_file"]


class ModelError(RSKDError, ValueError):
    """A model cannot be built as configured (the message says what to change)."""


def read_state_file(weights_path: str) -> Mapping[str, torch.Tensor]:
    """A state dict from ``model.weights_path`` (a bare one, or ``{"model": state_dict}``)."""
    if not os.path.isfile(weights_path):
        raise ModelError(f"model.weights_path {weights_path!r} does not exist")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    return state.get("model", state) if isinstance(state, Mapping) else state


class Backbone(NamedTuple):
    """A built backbone: the module, its feature width F, whether it gives a (B, F, h, w) map (else a
    (B, F) vector), and the map's side h = w at the configured image size (1 for a vector)."""

    module: nn.Module
    features: int
    feature_map: bool
    map_side: int
