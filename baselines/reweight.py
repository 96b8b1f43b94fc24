r"""Class re-weighting (RW) for multi-label BCE, with optional deferred re-weighting (DRW).

The "RW" row of Table 3 (Ju et al., MICCAI 2021). Per-class weights, normalised to sum to C, in one
of three modes:

- ``"inverse"``: :math:`w_k \propto 1/n_k` (the DB repository's ``reweight_func='inv'``, which uses
  ``train_num / class_freq``; the constant ``train_num`` cancels in the normalisation);
- ``"sqrt_inverse"``: :math:`w_k \propto 1/\sqrt{n_k}` (its ``'sqrt_inv'``);
- ``"effective_number"``: :math:`w_k \propto (1-\beta)/(1-\beta^{n_k})`, the class-balanced weight of
  Cui et al., CVPR 2019 (``richardaecn/class-balanced-loss`` ``src/cifar_main.py``, ``main``: weights
  ``(1 - beta) / (1 - beta ** n)`` normalised to sum to the number of classes; ``kaidic/LDAM-DRW``
  ``cifar_train.py``, ``train_rule == 'Reweight'``: the same with ``beta = 0.9999``).

Multi-label decision -- the weight of class k multiplies BOTH the positive and the negative entries
of column k. Source: ``wutong16/DistributionBalancedLoss`` ``mllt/models/losses/resample_loss.py``:
``ResampleLoss.RW_weight`` (``'inv'``/``'sqrt_inv'``, ``by_class=True``) and ``CB_weight``
(``CB_mode='by_class'``) return a (C,) vector; ``forward`` passes it as ``weight`` to
``binary_cross_entropy`` (imported from ``cross_entropy_loss.py`` in the same folder, the
mmdetection-v1 helper), which hands it to ``F.binary_cross_entropy_with_logits``; broadcast over the
(N, C) loss, positives and negatives of a column get the same weight. (The repository's other CB
modes give per-image weights; they are not the class re-weighting of Table 3.)

Normalisation to sum C follows ``kaidic/LDAM-DRW`` ``cifar_train.py`` (``per_cls_weights /
np.sum(per_cls_weights) * len(cls_num_list)``) and the class-balanced-loss repository; the DB
repository leaves its ``'inv'`` weights unnormalised (``weight_norm=None``), which only rescales the
loss (and the effective learning rate) by a constant.

DRW (Cao et al., NeurIPS 2019; ``kaidic/LDAM-DRW`` ``cifar_train.py``, ``train_rule == 'DRW'``:
``idx = epoch // 160``, ``betas = [0, 0.9999]``): uniform weights before ``drw_epoch`` (beta = 0
gives weight 1 for every class), then the chosen weights. The official run defers at epoch 160 of
200. ``drw_epoch`` means the same in :class:`ReweightedBCE` and :class:`baselines.ldam.LDAMLoss`
(:func:`drw_active`): the first re-weighted epoch, ``0`` = re-weighted from the start, ``None`` =
never re-weighted. ``ReweightedBCE`` defaults to ``0`` (plain RW), ``LDAMLoss`` to ``None`` (plain LDAM).
"""
from __future__ import annotations

import torch
from torch import nn

from rskd_loss.validation import (
    as_class_counts,
    check_int,
    check_logits_targets,
    check_probability,
    check_reduction,
    reduce_loss,
)

from .bce import bce_elementwise, check_class_weight, check_columns, upcast

__all__ = [
    "REWEIGHT_MODES",
    "class_weights",
    "reweighted_bce_loss",
    "ReweightedBCE",
    "check_reweight_mode",
    "check_beta",
    "check_drw_epoch",
    "drw_active",
    "register_drw_buffers",
    "switch_drw",
]

REWEIGHT_MODES = ("inverse", "sqrt_inverse", "effective_number")


def check_reweight_mode(mode: object, name: str = "mode") -> str:
    """Return ``mode`` if it is one of :data:`REWEIGHT_MODES`, else raise ``ValueError``."""
    if mode not in REWEIGHT_MODES:
        raise ValueError(f"{name} must be one of {REWEIGHT_MODES}, got {mode!r}")
    return str(mode)


def check_beta(beta: float) -> float:
    """The effective-number ``beta``, in [0, 1): 0 is allowed (uniform weights, DRW's first stage);
    1 would divide 0 by 0."""
    return check_probability(beta, "beta", low_open=False, high_open=True)


def check_drw_epoch(drw_epoch: object) -> int | None:
    """``None`` or an int >= 0 (``TypeError`` / ``ValueError`` otherwise)."""
    return None if drw_epoch is None else check_int(drw_epoch, "drw_epoch", minimum=0)


def drw_active(drw_epoch: int | None, epoch: int) -> bool:
    """Whether the class weights apply at ``epoch`` (0-based): from ``drw_epoch`` on; never when
    ``drw_epoch`` is ``None``. The one meaning of ``drw_epoch`` for every criterion with DRW."""
    return drw_epoch is not None and epoch >= drw_epoch


def register_drw_buffers(module: nn.Module, class_counts: object, mode: str, beta: float) -> torch.Tensor:
    """Register ``class_counts``, ``target_weight`` (:func:`class_weights`) and ``weight`` (all ones until
    :func:`switch_drw` turns re-weighting on) on ``module``; returns the checked counts."""
    counts = as_class_counts(class_counts, allow_zero=False)
    dtype = torch.get_default_dtype()
    module.register_buffer("class_counts", counts.to(dtype))
    module.register_buffer("target_weight", class_weights(counts, mode, beta).to(dtype))
    module.register_buffer("weight", torch.ones_like(module.target_weight))
    return counts


def switch_drw(weight: torch.Tensor, target_weight: torch.Tensor, active: bool) -> None:
    """Set a DRW weight buffer in place: the class weights when re-weighting is active, else all ones."""
    with torch.no_grad():
        if active:
            weight.copy_(target_weight)
        else:
            weight.fill_(1.0)


def class_weights(class_counts: object, mode: str = "inverse", beta: float = 0.9999) -> torch.Tensor:
    r"""Per-class re-weighting factors, normalised so that they sum to C.

    .. math::

        \tilde w_k = \begin{cases}
            1 / n_k & \text{inverse} \\
            1 / \sqrt{n_k} & \text{sqrt\_inverse} \\
            (1 - \beta) / (1 - \beta^{n_k}) & \text{effective\_number}
        \end{cases}
        \qquad w_k = C\,\tilde w_k \Big/ \sum_{j=1}^{C} \tilde w_j

    Every mode divides by a function of :math:`n_k`, so a zero count raises ``ValueError`` naming
    the class. Computed in float64.

    Args:
        class_counts: (C,) number of positive training images per class (> 0).
        mode: ``"inverse"`` (default; the DB repository's ``'inv'`` RW baseline), ``"sqrt_inverse"``
            or ``"effective_number"``.
        beta: in [0, 1), only used by ``"effective_number"``. Default 0.9999 (``kaidic/LDAM-DRW``
            ``cifar_train.py``, ``train_rule`` 'Reweight'/'DRW'; Cui et al. 2019's CIFAR setting).
            ``beta = 0`` gives uniform weights.

    Returns:
        (C,) float64 tensor, non-negative, summing to C.

    Shape:
        - class_counts: (C,).
        - output: (C,).

    Example:
        >>> class_weights([1, 3], mode="inverse")  # 1/1 : 1/3, scaled to sum 2
        tensor([1.5000, 0.5000], dtype=torch.float64)
    """
    mode = check_reweight_mode(mode)
    beta = check_beta(beta)
    n = as_class_counts(class_counts, allow_zero=False)
    if mode == "inverse":
        w = 1.0 / n
    elif mode == "sqrt_inverse":
        w = 1.0 / torch.sqrt(n)
    else:
        w = (1.0 - beta) / (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), n))
    return w / w.sum() * n.numel()


def reweighted_bce_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""BCE with a per-class weight on every entry (positive and negative) of its column.

    .. math::

        \ell_{ik} = w_k\,\mathrm{BCE}(z_{ik}, y_{ik})

    Args:
        logits: (N, C) float logits.
        targets: (N, C) multi-hot {0, 1}.
        weight: (C,) finite, non-negative class weights, e.g. from :func:`class_weights`.
        reduction: ``'mean'`` (over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C); weight: (C,).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> w = class_weights([10, 10, 10])  # equal counts -> all ones
        >>> reweighted_bce_loss(torch.zeros(2, 3), torch.ones(2, 3), w.float()).item() > 0
        True
    """
    check_reduction(reduction)
    logits, targets = check_logits_targets(logits, targets)
    weight = check_class_weight(weight, logits.shape[1])
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z, y = upcast(logits, targets)
        loss = weight.to(device=z.device, dtype=z.dtype) * bce_elementwise(z, y)
    return reduce_loss(loss, reduction)


class ReweightedBCE(nn.Module):
    r"""Class re-weighted multi-label BCE (RW), with optional deferred re-weighting (DRW).

    .. math::

        \ell_{ik} = w_k(e)\,\mathrm{BCE}(z_{ik}, y_{ik}), \qquad
        w(e) = \begin{cases} \mathbf 1 & e < e_{\mathrm{drw}} \\
                             \text{class\_weights}(n, \text{mode}, \beta) & e \ge e_{\mathrm{drw}}
               \end{cases}

    The class weight multiplies both the positive and the negative entries of its column (the DB
    repository's ``ResampleLoss`` ``'inv'``/``'sqrt_inv'``/``'CB'`` ``by_class`` weights; see the
    module docstring). Call :meth:`set_epoch` at the start of every epoch when ``drw_epoch > 0``.

    Buffers: ``class_counts`` (C,), ``target_weight`` (C,) (the weights after DRW starts), ``weight``
    (C,) (the weights in use now). They are stored in the default dtype (float32, so that
    ``.to(device)`` works on every backend); the loss is computed in the logits' dtype (float32 for
    half precision).

    Args:
        class_counts: (C,) positive training images per class (every entry > 0).
        mode: ``"inverse"`` (default) | ``"sqrt_inverse"`` | ``"effective_number"``; see
            :func:`class_weights`.
        beta: effective-number beta in [0, 1). Default 0.9999 (``kaidic/LDAM-DRW`` ``cifar_train.py``).
        drw_epoch: the first re-weighted epoch (int >= 0; :func:`drw_active`). ``0`` (default):
            re-weight from the start (RW). An int e > 0: uniform weights for epochs < e, then the
            class weights (DRW; the official run uses e = 160 of 200 epochs). ``None``: never
            re-weight (uniform weights, i.e. plain BCE), as ``LDAMLoss(drw_epoch=None)``.
        reduction: ``'mean'`` (default, over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> crit = ReweightedBCE([100, 10, 1], mode="sqrt_inverse", drw_epoch=2)
        >>> crit.weight
        tensor([1., 1., 1.])
        >>> crit.set_epoch(2)
        >>> bool(crit.weight[2] > crit.weight[0])
        True
        >>> crit(torch.zeros(2, 3), torch.tensor([[1, 0, 0], [0, 1, 1]])).shape
        torch.Size([])
    """

    class_counts: torch.Tensor
    target_weight: torch.Tensor
    weight: torch.Tensor

    def __init__(
        self,
        class_counts: object,
        mode: str = "inverse",
        beta: float = 0.9999,
        drw_epoch: int | None = 0,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.mode = check_reweight_mode(mode)
        self.beta = check_beta(beta)
        self.drw_epoch = check_drw_epoch(drw_epoch)
        self.reduction = check_reduction(reduction)
        register_drw_buffers(self, class_counts, self.mode, self.beta)
        self.epoch = 0
        self.set_epoch(0)

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def set_epoch(self, epoch: int) -> None:
        """Switch the weights for ``epoch`` (0-based): uniform before ``drw_epoch`` (always, if it is
        ``None``), re-weighted from it on."""
        self.epoch = check_int(epoch, "epoch", minimum=0)
        switch_drw(self.weight, self.target_weight, drw_active(self.drw_epoch, self.epoch))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        check_columns(logits, self.num_classes)
        return reweighted_bce_loss(logits, targets, self.weight, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, mode={self.mode!r}, beta={self.beta}, "
            f"drw_epoch={self.drw_epoch}, reduction={self.reduction!r}"
        )
