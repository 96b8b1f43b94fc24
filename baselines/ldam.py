r"""LDAM loss (Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss",
NeurIPS 2019), ported to multi-label sigmoid outputs, with optional deferred re-weighting (DRW).

The "LDAM [1]" row of Table 3 (Ju et al., MICCAI 2021).

Official single-label code: ``kaidic/LDAM-DRW`` ``losses.py`` (``LDAMLoss``): margins
``m_j = 1 / n_j^{1/4}`` rescaled so that the largest is ``max_m``; the margin of the TRUE class is
subtracted from its logit; the logits are multiplied by ``s`` and fed to softmax cross-entropy with
optional per-class weights. Defaults from ``cifar_train.py`` (``LDAMLoss(cls_num_list=...,
max_m=0.5, s=30, weight=per_cls_weights)``; DRW: ``idx = epoch // 160``, ``betas = [0, 0.9999]``,
weights normalised to sum C). The model used with it has a cosine classifier: ``cifar_train.py``
sets ``use_norm = True`` for ``--loss_type LDAM`` and ``models/resnet_cifar.py`` then builds
``NormedLinear`` -- ``s = 30`` is a scale for cosine logits in [-1, 1], not for raw logits.

Multi-label port (this module): every (image, class) entry is a binary problem; the margin of class
k is subtracted from the logit of every POSITIVE entry of column k (the analogue of "the true
class"), negatives are left alone, and softmax cross-entropy becomes BCE-with-logits:

.. math::

    \ell_{ik} = w_k\,\mathrm{BCE}\big(s\,(z_{ik} - y_{ik}\,m_k),\; y_{ik}\big)

A multi-label port that reuses the single-label ``scatter_(1, target.view(-1, 1), 1)`` indexing with
a multi-hot target puts the margins on columns 0 and 1 only (the 0/1 VALUES are used as column
indices); the tests check every column, including columns >= 2, gets its own margin.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rskd_loss.validation import (
    as_class_counts,
    check_int,
    check_logits_targets,
    check_positive,
    check_reduction,
    reduce_loss,
)

from .bce import bce_elementwise, check_class_weight, check_columns, upcast
from .reweight import check_beta, check_drw_epoch, check_reweight_mode, drw_active, register_drw_buffers, switch_drw

__all__ = ["ldam_margins", "ldam_loss", "LDAMLoss", "NormedLinear"]


def ldam_margins(class_counts: object, max_m: float = 0.5) -> torch.Tensor:
    r"""Per-class LDAM margins, the rarest class getting ``max_m``.

    .. math::

        m_k = \text{max\_m}\;\frac{n_k^{-1/4}}{\max_j n_j^{-1/4}}

    Args:
        class_counts: (C,) positive training images per class, every entry > 0 (a zero count would
            give an infinite margin: ``ValueError`` naming the class).
        max_m: largest margin, >= 0. Default 0.5 (``kaidic/LDAM-DRW`` ``losses.py`` and
            ``cifar_train.py``).

    Returns:
        (C,) float64 tensor.

    Shape:
        - class_counts: (C,); output: (C,).

    Example:
        >>> ldam_margins([16, 1], max_m=0.5)  # 16^(-1/4) = 1/2 -> half the largest margin
        tensor([0.2500, 0.5000], dtype=torch.float64)
    """
    max_m = check_positive(max_m, "max_m", allow_zero=True)
    n = as_class_counts(class_counts, allow_zero=False)
    m = n.pow(-0.25)
    return m * (max_m / m.max())


def _check_scale(s: float) -> float:
    return check_positive(s, "s")


def ldam_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    margins: torch.Tensor,
    s: float = 30.0,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-label LDAM loss: per-class margin on the positive entries, scale, BCE-with-logits.

    .. math::

        \ell_{ik} = w_k\,\mathrm{BCE}\big(s\,(z_{ik} - y_{ik}\,m_k),\; y_{ik}\big)

    Only positive entries move (by :math:`-s\,m_k`); negatives are scaled by :math:`s` only. With
    ``margins = 0`` and ``s = 1`` (and no weight) this is plain BCE.

    Args:
        logits: (N, C) float logits (cosine similarities when ``s = 30``; see :class:`NormedLinear`).
        targets: (N, C) multi-hot {0, 1}.
        margins: (C,) non-negative margins, e.g. :func:`ldam_margins`.
        s: logit scale > 0. Default 30 (``kaidic/LDAM-DRW`` ``cifar_train.py``).
        weight: optional (C,) class weights on every entry of their column (DRW).
        reduction: ``'mean'`` (over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C); margins, weight: (C,).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> m = ldam_margins([100, 10, 1])
        >>> ldam_loss(torch.zeros(2, 3), torch.eye(2, 3), m, reduction="none").shape
        torch.Size([2, 3])
    """
    check_reduction(reduction)
    s = _check_scale(s)
    logits, targets = check_logits_targets(logits, targets)
    c = logits.shape[1]
    margins = check_class_weight(margins, c, "margins")
    if weight is not None:
        weight = check_class_weight(weight, c, "weight")
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z, y = upcast(logits, targets)
        m = margins.to(device=z.device, dtype=z.dtype)
        loss = bce_elementwise(s * (z - y * m), y)
        if weight is not None:
            loss = weight.to(device=z.device, dtype=z.dtype) * loss
    return reduce_loss(loss, reduction)


class LDAMLoss(nn.Module):
    r"""Multi-label LDAM loss with optional DRW (registry name ``"ldam"``).

    .. math::

        \ell_{ik} = w_k(e)\,\mathrm{BCE}\big(s\,(z_{ik} - y_{ik}\,m_k),\; y_{ik}\big), \qquad
        m_k = \text{max\_m}\,\frac{n_k^{-1/4}}{\max_j n_j^{-1/4}}

    Use it with a cosine classifier (:class:`NormedLinear`): ``s = 30`` is tied to logits in
    [-1, 1] in the official code (``kaidic/LDAM-DRW`` ``cifar_train.py`` builds the model with
    ``use_norm=True`` for LDAM). With a plain ``nn.Linear`` head, s = 30 multiplies unbounded logits.

    DRW (``drw_epoch`` means what it means for :class:`baselines.reweight.ReweightedBCE`; see
    :func:`baselines.reweight.drw_active`): with ``drw_epoch=None`` (default) there is no
    re-weighting (the official ``train_rule 'None'``); with ``drw_epoch=e`` the weights are uniform
    for epochs < e and :func:`baselines.reweight.class_weights` ``(class_counts, reweight_mode,
    beta)`` from epoch e on (``train_rule 'DRW'``: e = 160 of 200 epochs, effective number with
    beta 0.9999); ``e = 0`` re-weights from the start. The class weight multiplies the positive and
    negative entries of its column (see :mod:`baselines.reweight`). Call :meth:`set_epoch` each epoch.

    Buffers: ``class_counts``, ``margins``, ``target_weight`` (after DRW starts), ``weight`` (now). They
    are stored in the default dtype (float32, so that ``.to(device)`` works on every backend); the
    loss is computed in the logits' dtype (float32 for half precision).

    Args:
        class_counts: (C,) positive training images per class, all > 0 (``ValueError`` names a
            class with count 0).
        max_m: largest margin >= 0. Default 0.5 (``kaidic/LDAM-DRW`` ``cifar_train.py``).
        s: logit scale > 0. Default 30 (same file).
        drw_epoch: ``None`` (default, never re-weighted) or the first re-weighted epoch (int >= 0;
            ``0`` re-weights from the start); the same meaning as in ``ReweightedBCE``.
        reweight_mode: one of ``"inverse"``, ``"sqrt_inverse"``, ``"effective_number"``. Default
            ``"effective_number"`` (the official DRW).
        beta: effective-number beta in [0, 1). Default 0.9999 (official DRW).
        reduction: ``'mean'`` (default, over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> head = NormedLinear(8, 3)
        >>> crit = LDAMLoss([100, 10, 1], drw_epoch=1)
        >>> logits = head(torch.randn(4, 8))
        >>> loss = crit(logits, torch.randint(0, 2, (4, 3)))
        >>> loss.backward()
        >>> crit.set_epoch(1)  # deferred re-weighting starts
        >>> crit.margins
        tensor([0.1581, 0.2812, 0.5000])
    """

    class_counts: torch.Tensor
    margins: torch.Tensor
    target_weight: torch.Tensor
    weight: torch.Tensor

    def __init__(
        self,
        class_counts: object,
        max_m: float = 0.5,
        s: float = 30.0,
        drw_epoch: int | None = None,
        reweight_mode: str = "effective_number",
        beta: float = 0.9999,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reweight_mode = check_reweight_mode(reweight_mode, "reweight_mode")
        self.beta = check_beta(beta)
        self.max_m = check_positive(max_m, "max_m", allow_zero=True)
        self.s = _check_scale(s)
        self.drw_epoch = check_drw_epoch(drw_epoch)
        self.reduction = check_reduction(reduction)
        counts = register_drw_buffers(self, class_counts, reweight_mode, self.beta)
        self.register_buffer("margins", ldam_margins(counts, self.max_m).to(self.class_counts.dtype))
        self.epoch = 0
        self.set_epoch(0)

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def set_epoch(self, epoch: int) -> None:
        """Switch the DRW weights for ``epoch`` (0-based): uniform before ``drw_epoch``, then re-weighted."""
        self.epoch = check_int(epoch, "epoch", minimum=0)
        switch_drw(self.weight, self.target_weight, drw_active(self.drw_epoch, self.epoch))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_columns(logits, self.num_classes)
        return ldam_loss(logits, targets, self.margins, self.s, self.weight, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, max_m={self.max_m}, s={self.s}, drw_epoch={self.drw_epoch}, "
            f"reweight_mode={self.reweight_mode!r}, beta={self.beta}, reduction={self.reduction!r}"
        )


class NormedLinear(nn.Module):
    r"""Cosine-normalised linear head: :math:`\text{out}_{ik} = \cos(x_i, W_{:,k})`, in [-1, 1].

    .. math::

        \text{out} = \frac{x}{\lVert x \rVert_2}\;\Big[\frac{W_{:,k}}{\lVert W_{:,k} \rVert_2}\Big]_k

    The head LDAM is paired with in the official code (``kaidic/LDAM-DRW`` ``models/resnet_cifar.py``,
    ``NormedLinear``; selected by ``use_norm=True`` for LDAM in ``cifar_train.py``): the weight has
    shape ``(in_features, out_features)`` (as there, the transpose of ``nn.Linear``), is drawn from
    U(-1, 1) and every column is rescaled to unit norm; there is no bias. LDAM's ``s = 30`` assumes
    these bounded logits. Zero-norm inputs give 0 (``F.normalize``'s epsilon).

    Args:
        in_features: feature size (> 0).
        out_features: number of classes (> 0).

    Shape:
        - input: (N, in_features); output: (N, out_features).

    Example:
        >>> head = NormedLinear(4, 2)
        >>> out = head(torch.randn(3, 4))
        >>> out.shape, bool(out.abs().max() <= 1.0)
        (torch.Size([3, 2]), True)
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = check_int(in_features, "in_features", minimum=1)
        self.out_features = check_int(out_features, "out_features", minimum=1)
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """U(-1, 1), then each column scaled to unit L2 norm (the official initialisation)."""
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(self.weight.norm(dim=0, keepdim=True).clamp_min(1e-12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"input must have shape (N, {self.in_features}), got {tuple(x.shape)}"
            )
        return F.normalize(x, dim=1) @ F.normalize(self.weight, dim=0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"
