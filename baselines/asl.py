r"""Asymmetric loss (Ridnik et al., "Asymmetric Loss For Multi-Label Classification", ICCV 2021).

Not a row of the paper's Table 3 (Ju et al., MICCAI 2021): a later multi-label baseline, and "Ours +
ASL" is one line, ``WeightedSubsetKDLoss(AsymmetricLoss(gamma_neg=4, gamma_pos=0), num_classes=C)``.

Official code read for the formula and defaults (no code copied): ``Alibaba-MIIL/ASL``
``src/loss_functions/losses.py`` (``AsymmetricLoss`` and ``AsymmetricLossOptimized``, which the
repository's README calls bit-accurate with each other) and ``train.py`` (the criterion it trains
with). Per element, with :math:`p = \sigma(z)`:

- probability shifting of the negatives by the margin ``clip`` (``xs_neg = (1 - p + clip).clamp(max=1)``,
  skipped when ``clip`` is ``None`` or 0), i.e. :math:`1 - p_m` with :math:`p_m = \max(p - m, 0)`;
- the cross-entropy of the logs clamped at ``eps``: :math:`y \log\max(p, \epsilon) + (1 - y)
  \log\max(1 - p_m, \epsilon)`;
- the one-sided focusing weight :math:`(1 - p_t)^{\gamma}` with :math:`p_t = p\,y + (1 - p_m)(1 - y)`
  and :math:`\gamma = \gamma_+ y + \gamma_- (1 - y)`, i.e. :math:`(1-p)^{\gamma_+}` on positives and
  :math:`p_m^{\gamma_-}` on negatives (skipped when both gammas are 0);
- ``return -loss.sum()``.

Both official classes take ``disable_torch_grad_focal_loss``: when true the focusing weight is
computed under ``torch.set_grad_enabled(False)`` (a constant for autograd). Its default is ``True`` in
``AsymmetricLoss`` (since the repository's 2021-03-23 change; ``False`` before) and ``False`` in
``AsymmetricLossOptimized``; ``train.py`` passes ``True``. Here ``detach_focusing`` is that switch:
``True`` gives ``AsymmetricLoss()`` / ``AsymmetricLossOptimized(disable_torch_grad_focal_loss=True)``
and the training script, ``False`` (default) gives ``AsymmetricLossOptimized()`` /
``AsymmetricLoss(disable_torch_grad_focal_loss=False)``, where the gradient also flows through the
weight. The values are the same.

Numerics (the float64 value and gradient equal the official code's; only rounding differs):

- :math:`\log\max(p, \epsilon) = \max(\log\sigma(z), \log\epsilon)` and, without shifting,
  :math:`\log\max(1 - p, \epsilon) = \max(\log\sigma(-z), \log\epsilon)`: log-sigmoids clamped at
  :math:`\log\epsilon`, the same function with the same zero gradient where the clamp is active. They
  differ from the official code in rounding only: in float32 ``1 - sigmoid(z)`` is 0 for
  :math:`z \gtrsim 17` and the official log then sits at :math:`\log\epsilon` early, here
  :math:`\log\sigma(-z)` stays exact until it reaches :math:`\log\epsilon` (:math:`z \approx 18.4`).
- The weights are :math:`\exp(\gamma_+ \log\sigma(-z))` and :math:`p_m^{\gamma_-}` with the power
  taken only where :math:`p_m > 0`: finite gradients for every gamma >= 0 at any logit, where the
  official ``torch.pow(1 - pt, gamma)`` gives a NaN gradient for :math:`0 < \gamma < 1` once
  :math:`1 - p_t` is 0 (``detach_focusing=False``).
- float16/bfloat16 inputs (and autocast) are computed in float32, as every criterion of the package.
"""
from __future__ import annotations

import math

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

from .bce import upcast

__all__ = ["asymmetric_loss", "AsymmetricLoss"]


def _check_gamma(value: float, name: str) -> float:
    value = check_positive(value, name, allow_zero=True)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return value


def _check_asl_params(
    gamma_neg: float, gamma_pos: float, clip: float | None, eps: float, detach_focusing: bool
) -> tuple[float, float, float | None, float, bool]:
    gamma_neg = _check_gamma(gamma_neg, "gamma_neg")
    gamma_pos = _check_gamma(gamma_pos, "gamma_pos")
    if clip is not None:
        clip = check_probability(clip, "clip", low_open=False, high_open=True)
    # eps >= 1 would clamp every log to >= 0, i.e. a loss of 0 everywhere.
    eps = check_probability(eps, "eps")
    if not isinstance(detach_focusing, bool):
        raise TypeError(f"detach_focusing must be a bool, got {type(detach_focusing).__name__}")
    return gamma_neg, gamma_pos, clip, eps, detach_focusing


def _asl_elementwise(
    z: torch.Tensor,
    y: torch.Tensor,
    gamma_neg: float,
    gamma_pos: float,
    clip: float | None,
    eps: float,
    detach_focusing: bool,
) -> torch.Tensor:
    """The (N, C) loss from checked, upcast inputs (binary targets)."""
    log_eps = math.log(eps)
    shift = clip is not None and clip > 0
    log_pos = F.logsigmoid(z).clamp(min=log_eps)  # log max(p, eps)
    if shift:
        log_neg = torch.log((torch.sigmoid(-z) + clip).clamp(max=1.0).clamp(min=eps))  # log max(1 - p_m, eps)
    else:
        log_neg = F.logsigmoid(-z).clamp(min=log_eps)  # log max(1 - p, eps)
    loss_pos, loss_neg = -log_pos, -log_neg
    zw = z.detach() if detach_focusing else z
    if gamma_pos > 0:
        loss_pos = torch.exp(gamma_pos * F.logsigmoid(-zw)) * loss_pos  # (1 - p)^gamma_pos
    if gamma_neg > 0:
        if shift:
            p_m = (torch.sigmoid(zw) - clip).clamp(min=0.0)
            live = p_m > 0
            # p_m^gamma_neg, the power only where p_m > 0 (its gradient at 0 is inf for gamma < 1)
            safe = torch.where(live, p_m, torch.ones_like(p_m))
            w_neg = torch.where(live, safe.pow(gamma_neg), torch.zeros_like(p_m))
        else:
            w_neg = torch.exp(gamma_neg * F.logsigmoid(zw))  # p^gamma_neg
        loss_neg = w_neg * loss_neg
    return y * loss_pos + (1.0 - y) * loss_neg


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float | None = 0.05,
    eps: float = 1e-8,
    detach_focusing: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-label asymmetric loss (ASL).

    With :math:`p = \sigma(z)`, the shifted probability :math:`p_m = \max(p - m, 0)` (:math:`m` =
    ``clip``; :math:`p_m = p` when ``clip`` is ``None`` or 0) and :math:`\epsilon` = ``eps``:

    .. math::

        \ell_{ik} = -\,y_{ik}\,(1 - p)^{\gamma_+}\,\log\max(p, \epsilon)
                    \;-\;(1 - y_{ik})\,p_m^{\gamma_-}\,\log\max(1 - p_m, \epsilon)

    the formula of ``Alibaba-MIIL/ASL`` ``src/loss_functions/losses.py`` (see :mod:`baselines.asl`
    for how the logs and powers are computed stably). ``detach_focusing=True`` treats the weights
    :math:`(1-p)^{\gamma_+}` and :math:`p_m^{\gamma_-}` as constants (the official
    ``disable_torch_grad_focal_loss=True``, as in its ``train.py``); ``False`` lets the gradient flow
    through them too. With ``gamma_neg = gamma_pos = 0`` and ``clip = 0`` (and logits whose
    probabilities stay above ``eps``) it is plain BCE.

    Defaults: ``gamma_neg=4``, ``gamma_pos=1``, ``clip=0.05``, ``eps=1e-8``, the constructor defaults
    of both official classes. The values most users copy, those of the official ``train.py``, are
    ``gamma_neg=4, gamma_pos=0, clip=0.05`` (with ``detach_focusing=True``). The official loss
    returns the sum over all elements (``reduction='sum'`` here); the default ``'mean'`` over all N*C
    elements is the house contract and is that sum divided by N*C (mind the learning rate when
    porting a recipe).

    Args:
        logits: (N, C) float logits.
        targets: (N, C) multi-hot {0, 1}.
        gamma_neg: focusing exponent of the negatives, finite and >= 0.
        gamma_pos: focusing exponent of the positives, finite and >= 0.
        clip: probability margin of the negatives in [0, 1), or ``None`` (no shift, as 0).
        eps: lower clamp of the probabilities inside the logs, in (0, 1).
        detach_focusing: compute the focusing weights without gradient.
        reduction: ``'mean'`` | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> logits = torch.zeros(1, 2)
        >>> targets = torch.tensor([[1, 0]])
        >>> loss = asymmetric_loss(logits, targets, reduction="none")
        >>> # y = 1: (1 - 1/2)^1 * ln 2; y = 0: p_m = 0.45, 0.45^4 * -ln(0.55)
        >>> [round(v, 6) for v in loss[0].tolist()]
        [0.346574, 0.024515]
    """
    check_reduction(reduction)
    gamma_neg, gamma_pos, clip, eps, detach_focusing = _check_asl_params(
        gamma_neg, gamma_pos, clip, eps, detach_focusing
    )
    logits, targets = check_logits_targets(logits, targets)
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z, y = upcast(logits, targets)
        loss = _asl_elementwise(z, y, gamma_neg, gamma_pos, clip, eps, detach_focusing)
    return reduce_loss(loss, reduction)


class AsymmetricLoss(nn.Module):
    r"""Module form of :func:`asymmetric_loss` (registry name ``"asl"``).

    .. math::

        \ell_{ik} = -\,y_{ik}\,(1 - p)^{\gamma_+}\log\max(p, \epsilon)
                    - (1 - y_{ik})\,p_m^{\gamma_-}\log\max(1 - p_m, \epsilon),
        \qquad p_m = \max(p - m, 0)

    Args:
        gamma_neg: focusing exponent of the negatives >= 0. Default 4 (``Alibaba-MIIL/ASL``
            ``src/loss_functions/losses.py``; its ``train.py`` uses 4 too).
        gamma_pos: focusing exponent of the positives >= 0. Default 1 (same file); the official
            ``train.py`` trains with 0, the value most users copy.
        clip: probability margin :math:`m` of the negatives in [0, 1), ``None`` or 0 for no shift.
            Default 0.05 (same file and ``train.py``).
        eps: clamp of the probabilities inside the logs, in (0, 1). Default 1e-8 (same file).
        detach_focusing: focusing weights without gradient, the official
            ``disable_torch_grad_focal_loss``. Default ``False`` (``AsymmetricLossOptimized``'s
            default; ``AsymmetricLoss`` and ``train.py`` use ``True``).
        reduction: ``'mean'`` (default, over all N*C elements) | ``'sum'`` (the official value) |
            ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> crit = AsymmetricLoss(gamma_neg=4, gamma_pos=0, clip=0.05)
        >>> logits = torch.randn(4, 5, requires_grad=True)
        >>> loss = crit(logits, torch.randint(0, 2, (4, 5)))
        >>> loss.backward()
    """

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 1.0,
        clip: float | None = 0.05,
        eps: float = 1e-8,
        detach_focusing: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps, self.detach_focusing = _check_asl_params(
            gamma_neg, gamma_pos, clip, eps, detach_focusing
        )
        self.reduction = check_reduction(reduction)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return asymmetric_loss(
            logits,
            targets,
            self.gamma_neg,
            self.gamma_pos,
            self.clip,
            self.eps,
            self.detach_focusing,
            self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, eps={self.eps}, "
            f"detach_focusing={self.detach_focusing}, reduction={self.reduction!r}"
        )
