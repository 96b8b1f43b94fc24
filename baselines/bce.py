r"""ERM baseline: plain binary cross-entropy with logits, one independent sigmoid per class.

The "ERM model" row of Table 3 (Ju et al., MICCAI 2021) is a multi-label classifier trained with the
plain per-class binary cross-entropy; every other baseline in this package reduces to it when its
extra terms are switched off (the tests check each of those equivalences).

This module also holds the small helpers the other baselines share (:func:`upcast` to the compute
dtype, the element-wise BCE, the per-class weight and column checks), so each formula is written once.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rskd_loss.validation import (
    check_logits_targets,
    check_reduction,
    compute_dtype,
    reduce_loss,
    value_checks_enabled,
)

__all__ = [
    "bce_loss",
    "MultiLabelBCELoss",
    "upcast",
    "bce_elementwise",
    "check_class_weight",
    "check_columns",
]


def upcast(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """New tensors in the compute dtype (:func:`rskd_loss.validation.compute_dtype`: float32 for half
    precision; never the caller's tensors modified)."""
    dtype = compute_dtype(logits.dtype)
    return logits.to(dtype), targets.to(dtype)


def bce_elementwise(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Per-element :math:`-[y \log\sigma(z) + (1-y)\log(1-\sigma(z))]` in the stable softplus form."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def check_class_weight(weight: object, num_classes: int, name: str = "weight") -> torch.Tensor:
    """A (C,) tensor of finite, non-negative per-class weights (the value check reads the tensor, so it
    follows :func:`rskd_loss.validation.value_checks`)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape ({num_classes},), got {type(weight).__name__}")
    if tuple(weight.shape) != (num_classes,):
        raise ValueError(f"{name} must have shape ({num_classes},) (one per class), got {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {weight.dtype}")
    if value_checks_enabled() and (not bool(torch.isfinite(weight).all()) or bool((weight < 0).any())):
        bad = int((~torch.isfinite(weight) | (weight < 0)).nonzero()[0])
        raise ValueError(f"{name} must be finite and >= 0, got {weight[bad].item()} for class {bad}")
    return weight


def check_columns(logits: object, num_classes: int) -> None:
    """A criterion built from C class counts must get (N, C) logits."""
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] != num_classes:
        raise ValueError(
            f"logits must have {num_classes} columns (class_counts has {num_classes} entries), got shape "
            f"{tuple(logits.shape)}"
        )


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    r"""Plain multi-label binary cross-entropy with logits (the ERM baseline).

    .. math::

        \ell_{ik} = -\big[y_{ik}\log\sigma(z_{ik}) + (1-y_{ik})\log(1-\sigma(z_{ik}))\big]
                  = \operatorname{softplus}(z_{ik}) - y_{ik} z_{ik}

    computed in the softplus form (finite for logits of +-100). ``reduction='mean'`` (default, the
    house contract and ``torch.nn.BCEWithLogitsLoss``'s default) averages over all N*C elements.
    float16/bfloat16 logits are computed in float32 and the result is float32.

    Args:
        logits: (N, C) float logits.
        targets: (N, C) multi-hot {0, 1}.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> logits = torch.zeros(2, 3)
        >>> targets = torch.tensor([[1, 0, 0], [0, 1, 1]])
        >>> round(bce_loss(logits, targets).item(), 4)  # ln 2
        0.6931
    """
    check_reduction(reduction)
    logits, targets = check_logits_targets(logits, targets)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z, y = upcast(logits, targets)
        loss = bce_elementwise(z, y)
    return reduce_loss(loss, reduction)


class MultiLabelBCELoss(nn.Module):
    r"""Module form of :func:`bce_loss` (the ERM baseline; registry names ``"bce"`` and ``"erm"``).

    Named so that it does not shadow ``torch.nn.BCELoss`` / ``torch.nn.BCEWithLogitsLoss``; unlike
    those it checks its inputs (shape, multi-hot targets) and computes half-precision logits in
    float32.

    Args:
        reduction: ``'mean'`` (default) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> crit = MultiLabelBCELoss()
        >>> crit(torch.zeros(2, 3), torch.ones(2, 3)).shape
        torch.Size([])
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return bce_loss(logits, targets, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"
