"""Predictions of a model on a loader (gathered over ranks) and the validation loss."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

#: ``forward(model, x) -> {"logits": (B, C), ...}``: what a prediction collects per batch
Forward = Callable[[nn.Module, torch.Tensor], Mapping[str, torch.Tensor]]


def plain_forward(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"logits": model(x)}


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, augment: nn.Module, amp: bool,
            world: int = 1, forward: Forward = plain_forward) -> dict[str, np.ndarray]:
    """Outputs of ``forward(model, x)`` on every sample of ``loader``, plus "targets" and "indices".

    The model runs in eval mode under bf16 autocast when ``amp``; every output is returned as float32
    numpy. Under torchrun each rank predicts its own shard and the shards are gathered, so every rank
    gets the whole, identical result (sorted by sample index; a padded sampler's repeats dropped).
    """
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"targets": [], "indices": []}
    for x, y, idx in loader:
        x = augment(x.to(device, non_blocking=True), train=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            outputs = forward(model, x)
        for key, value in outputs.items():
            out.setdefault(key, []).append(value.float().cpu())
        out["targets"].append(torch.as_tensor(y).cpu())
        out["indices"].append(torch.as_tensor(idx).cpu())
    model.train(was_training)
    res = {k: torch.cat(v).numpy() for k, v in out.items()}
    if world > 1:
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, res)
        res = {k: np.concatenate([s[k] for s in shards]) for k in res}
        _, first = np.unique(res["indices"], return_index=True)
        res = {k: v[first] for k, v in res.items()}
    order = np.argsort(res["indices"], kind="stable")
    return {k: v[order] for k, v in res.items()}


def bce_value(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy (the validation loss that drives the plateau schedule)."""
    z = torch.from_numpy(logits).double()
    return float(nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(targets).double()))
