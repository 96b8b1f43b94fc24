"""Helpers shared by the framework integrations: per-class metrics from a config, rows from every process.

Only ``torch`` and ``numpy``: importing this module never imports Lightning, mmpretrain or timm.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.distributed as dist

from ..validation import as_float_vector

__all__ = ["load_per_class_metric", "gather_rows", "first_per_index"]


def load_per_class_metric(value: object, name: str = "teacher_ap", *, percent: bool = False,
                          num_classes: int | None = None) -> torch.Tensor:
    """A per-class metric (C,) from a sequence, an array, a tensor or a file, as a new float64 CPU tensor.

    A ``str`` / path is read by its suffix: ``.json`` (a list of numbers, or an object with the list
    under ``"ap"``), ``.npy``, or ``.txt`` / ``.csv`` (numbers separated by whitespace or commas).
    ``percent=True`` divides by 100 (mmpretrain reports AP in percent; Eq. 3 takes fractions
    next to the student's fractions). ``num_classes`` checks the length.

    Example:
        >>> load_per_class_metric([80.0, 55.0], percent=True)
        tensor([0.8000, 0.5500], dtype=torch.float64)
    """
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        suffix = os.path.splitext(path)[1].lower()
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
            if isinstance(raw, dict):
                if "ap" not in raw:
                    raise ValueError(f"{name}: {path} holds a JSON object; expected a list, or an object with "
                                     f"the list under 'ap', got keys {sorted(raw)}")
                raw = raw["ap"]
            value = [float("nan") if v is None else v for v in raw] if isinstance(raw, list) else raw
        elif suffix == ".npy":
            value = np.load(path, allow_pickle=False)
        elif suffix in (".txt", ".csv"):
            with open(path, encoding="utf-8") as f:
                value = [float(v) for v in f.read().replace(",", " ").split()]
        else:
            raise ValueError(f"{name}: expected a .json, .npy, .txt or .csv file, got {path!r}")
    t = as_float_vector(value, name).clone()
    if num_classes is not None and t.numel() != num_classes:
        raise ValueError(f"{name} must have {num_classes} entries (one per class), got {t.numel()}")
    return t / 100.0 if percent else t


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows of ``tensor`` from every process (rank 0's first); itself without a process group.

    Ranks may hold different numbers of rows (a last partial batch): the sizes are gathered first
    and every tensor is padded to the largest, gathered, then trimmed. Every rank must call it (a
    collective) with the same trailing shape and dtype, on the device its backend needs (CPU for
    gloo, the rank's GPU for NCCL). The result is the same on every rank.

    Example:
        >>> gather_rows(torch.ones(3, 2)).shape  # one process: unchanged
        torch.Size([3, 2])
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    world = dist.get_world_size()
    tensor = tensor.contiguous()
    size = torch.tensor([tensor.shape[0]], dtype=torch.long, device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, counts)])


def first_per_index(indices: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Keep the first row of every distinct sample index (a ``DistributedSampler`` repeats samples to
    even out the ranks); returns ``(indices, *tensors)`` restricted to those rows, in sample-index order.

    Example:
        >>> idx, x = first_per_index(torch.tensor([2, 0, 2]), torch.tensor([[1.0], [2.0], [3.0]]))
        >>> idx.tolist(), x.flatten().tolist()
        ([0, 2], [2.0, 1.0])
    """
    idx = torch.as_tensor(indices).reshape(-1).long()
    for t in tensors:
        if t.shape[0] != idx.numel():
            raise ValueError(f"every tensor needs one row per index ({idx.numel()}), got shape {tuple(t.shape)}")
    order = torch.sort(idx.cpu(), stable=True).indices
    sorted_idx = idx.cpu()[order]
    keep = torch.ones_like(sorted_idx, dtype=torch.bool)
    keep[1:] = sorted_idx[1:] != sorted_idx[:-1]
    rows = order[keep]
    return (idx[rows.to(idx.device)], *(t[rows.to(t.device)] for t in tensors))
