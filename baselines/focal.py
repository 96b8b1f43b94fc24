r"""Sigmoid focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017), multi-label.

The "Focal Loss [8]" row of Table 3 (Ju et al., MICCAI 2021). Each (image, class) entry is a binary
problem, as in RetinaNet's classification subnet.

Sources read for the formula and defaults (no code copied):

- ``pytorch/vision`` ``torchvision/ops/focal_loss.py`` (``sigmoid_focal_loss``; itself from
  ``facebookresearch/fvcore`` ``fvcore/nn/focal_loss.py``, the Detectron2 implementation):
  ``alpha=0.25``, ``gamma=2``, ``p_t`` from the sigmoid, ``alpha_t = alpha*y + (1-alpha)*(1-y)``,
  and ``alpha < 0`` disables the alpha term (here ``alpha=None`` does, a negative alpha is an error).
- ``kornia/kornia`` ``kornia/losses/focal.py`` (``binary_focal_loss_with_logits``): same defaults.
- ``richardaecn/class-balanced-loss`` ``src/cifar_main.py`` (``focal_loss``): the modulating factor
  written as an exponential of log-sigmoids, because ``(1 - p_t) ** gamma`` gives NaN gradients for
  ``gamma < 1`` once ``p_t`` rounds to 1. The same stable form is used here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rskd_loss.validation import (
    check_logits_targets,
    check_positive,
    check_probability,
    check_reduction,
    reduce_loss,
)

from .bce import bce_elementwise, upcast

__all__ = ["sigmoid_focal_loss", "FocalLoss", "focal_modulator"]


def _check_alpha_gamma(alpha: float | None, gamma: float) -> tuple[float | None, float]:
    if alpha is not None:
        alpha = check_probability(alpha, "alpha", low_open=False, high_open=False)
    return alpha, check_positive(gamma, "gamma", allow_zero=True)


def focal_modulator(logits: torch.Tensor, targets: torch.Tensor, gamma: float) -> torch.Tensor:
    r""":math:`(1 - p_t)^\gamma` for binary targets, computed as :math:`\exp(\gamma\,\log\sigma(s\,z))`.

    With :math:`p = \sigma(z)`: :math:`1 - p_t = 1 - p = \sigma(-z)` for :math:`y = 1` and
    :math:`1 - p_t = p = \sigma(z)` for :math:`y = 0`, i.e. :math:`\sigma((1 - 2y) z)`. Taking the
    power through ``logsigmoid`` keeps value and gradient finite for any gamma >= 0 and any logit.
    ``gamma == 0`` gives exactly 1.
    """
    if gamma == 0:
        return torch.ones_like(logits)
    return torch.exp(gamma * F.logsigmoid((1.0 - 2.0 * targets) * logits))


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float | None = 0.25,
    gamma: float = 2.0,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-label sigmoid focal loss.

    With :math:`p = \sigma(z)`, :math:`p_t = p` if :math:`y = 1` else :math:`1 - p`, and
    :math:`\alpha_t = \alpha` if :math:`y = 1` else :math:`1 - \alpha`:

    .. math::

        \ell_{ik} = -\alpha_t\,(1 - p_t)^{\gamma}\,\log p_t
                  = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{BCE}(z_{ik}, y_{ik})

    The BCE factor is the softplus form of :func:`torch.nn.functional.binary_cross_entropy_with_logits`
    and the modulating factor is :math:`\exp(\gamma \log\sigma((1-2y)z))`, so logits of +-100 give a
    finite value and gradient for every gamma >= 0. ``alpha=None`` drops :math:`\alpha_t`; with
    ``alpha=None, gamma=0`` the loss is plain BCE.

    Defaults: ``alpha=0.25``, ``gamma=2`` (Lin et al. 2017, Sec. 5.1; ``torchvision/ops/focal_loss.py``
    and ``kornia/losses/focal.py`` use the same). ``reduction='mean'`` (mean over all N*C elements) is
    the house contract; note that torchvision's function defaults to ``'none'`` and RetinaNet
    normalises by the number of positive anchors instead.

    Args:
        logits: (N, C) float logits.
        targets: (N, C) multi-hot {0, 1}.
        alpha: weight of the positive entries in [0, 1], or ``None`` to disable.
        gamma: focusing parameter, >= 0.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
        >>> targets = torch.tensor([[1, 0], [0, 1]])
        >>> sigmoid_focal_loss(logits, targets, reduction="none").shape
        torch.Size([2, 2])
        >>> # z = 0, y = 1: alpha * (1/2)^2 * ln 2
        >>> round(sigmoid_focal_loss(logits[:1, :1], targets[:1, :1]).item(), 6)
        0.043322
    """
    check_reduction(reduction)
    alpha, gamma = _check_alpha_gamma(alpha, gamma)
    logits, targets = check_logits_targets(logits, targets)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z, y = upcast(logits, targets)
        loss = focal_modulator(z, y, gamma) * bce_elementwise(z, y)
        if alpha is not None:
            loss = (alpha * y + (1.0 - alpha) * (1.0 - y)) * loss
    return reduce_loss(loss, reduction)


class FocalLoss(nn.Module):
    r"""Module form of :func:`sigmoid_focal_loss` (registry name ``"focal"``).

    .. math::

        \ell_{ik} = \alpha_t\,(1 - p_t)^{\gamma}\,\mathrm{BCE}(z_{ik}, y_{ik})

    Args:
        alpha: weight of positive entries in [0, 1], ``None`` disables it. Default 0.25 (Lin et al.
            2017; ``torchvision/ops/focal_loss.py``).
        gamma: focusing parameter >= 0. Default 2 (same sources).
        reduction: ``'mean'`` (default, over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> crit = FocalLoss()
        >>> logits = torch.randn(4, 5, requires_grad=True)
        >>> loss = crit(logits, torch.randint(0, 2, (4, 5)))
        >>> loss.backward()
    """

    def __init__(self, alpha: float | None = 0.25, gamma: float = 2.0, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha, self.gamma = _check_alpha_gamma(alpha, gamma)
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return sigmoid_focal_loss(logits, targets, self.alpha, self.gamma, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, reduction={self.reduction!r}"
