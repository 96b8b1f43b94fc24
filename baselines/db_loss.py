r"""Distribution-Balanced loss (Wu et al., "Distribution-Balanced Loss for Multi-Label Classification
in Long-Tailed Datasets", ECCV 2020).

The "DB Loss [12]" row of Table 3 (Ju et al., MICCAI 2021).

Official code read for every formula and default (no code copied): ``wutong16/DistributionBalancedLoss``
``mllt/models/losses/resample_loss.py`` (``ResampleLoss`` with ``reweight_func='rebalance'``) and the
configs ``configs/coco/LT_resnet50_pfc_DB.py`` and ``configs/voc/LT_resnet50_pfc_DB.py``. The three
parts, in the order the official ``forward`` applies them:

1. Rebalanced weighting (``rebalance_weight``). Class-level sampling probability
   :math:`P^C_k \propto 1/n_k` (``freq_inv``) divided by the instance-level repeat rate
   :math:`P^I_i \propto \sum_j y_{ij}/n_j` (``repeat_rate``); the common 1/C factor cancels:

   .. math:: r_{ik} = \frac{1/n_k}{\sum_j y_{ij}/n_j}, \qquad
             w_{ik} = \alpha + \sigma\big(\beta\,(r_{ik} - \mu)\big)

   applied to positive AND negative entries alike (the official comment: "pos and neg are equally
   treated"). Config names: ``map_param=dict(alpha=..., beta=..., gamma=...)``; the config's
   ``gamma`` is the paper's :math:`\mu`.
2. Negative-tolerant regularisation (``logit_reg_functions``): a class-specific bias
   :math:`\nu_k = -\kappa \log(N/n_k - 1)` (``init_bias``, :math:`N` = number of training images,
   ``train_num``) is ADDED to every logit of column k, then negative entries are scaled by
   :math:`\lambda` (``neg_scale``) and their weight by :math:`1/\lambda`:

   .. math:: z'_{ik} = z_{ik} + \nu_k, \qquad
             \ell_{ik} = y_{ik}\,w_{ik}\,\mathrm{BCE}(z'_{ik}, 1)
                      + (1 - y_{ik})\,\frac{w_{ik}}{\lambda}\,\mathrm{BCE}(\lambda z'_{ik}, 0)

   The official code divides the bias by :math:`\lambda` as well; its maintainer confirmed that
   ``/ self.neg_scale`` is a bug that makes :math:`\kappa` effectively 2-5x smaller
   (``wutong16/DistributionBalancedLoss`` issue #8, "About the formula(9) is inconstense with the
   code implementation"). The default here is the corrected formula; ``legacy_bias=True`` uses
   :math:`\nu_k / \lambda` and reproduces the official numbers.
3. Optional focal term (``focal=dict(focal=True, balance_param=2.0, gamma=2)``):
   :math:`\ell_{ik} \leftarrow \text{balance\_param}\,(1 - p_t)^\gamma\,\ell_{ik}` with :math:`p_t`
   from the regularised logit (:math:`\sigma(z')` for positives, :math:`\sigma(-\lambda z')` for
   negatives); no alpha term.

Presets (verified against the configs):

========  =====  =====  ====  =====  =======  =====  =====  =============
preset    alpha  beta   mu    kappa  lambda   focal  gamma  balance_param
========  =====  =====  ====  =====  =======  =====  =====  =============
``coco``  0.1    10.0   0.2   0.05   2.0      on     2      2.0
``voc``   0.1    10.0   0.3   0.05   5.0      on     2      2.0
========  =====  =====  ====  =====  =======  =====  =====  =============

(``configs/coco/LT_resnet50_pfc_DB.py``: ``map_param=dict(alpha=0.1, beta=10.0, gamma=0.2)``,
``logit_reg=dict(neg_scale=2.0, init_bias=0.05)``, ``focal=dict(focal=True, balance_param=2.0,
gamma=2)``; ``configs/voc/LT_resnet50_pfc_DB.py``: ``map_param=dict(alpha=0.1, beta=10.0,
gamma=0.3)``, ``logit_reg=dict(init_bias=0.05, neg_scale=5)``, same focal.)

An image with NO positive label: :math:`\sum_j y_{ij}/n_j = 0`. The official code divides by it,
gets :math:`r = +\infty` and :math:`\sigma(+\infty) = 1`, so every entry of that image gets weight
:math:`\alpha + 1` (the largest possible). That limit is kept here, computed without producing an
inf (with ``beta = 0`` the limit is :math:`\alpha + 1/2`, as for every other image); no NaN. This
matters for fundus data sets whose "normal" images have no disease label.

Reduction: the official focal branch returns the (N, C) loss and the training loop averages it
(``mllt/apis/train.py``, ``parse_losses``: ``loss_value.mean()``), the non-focal branch averages over all
elements: ``'mean'`` over N*C elements matches both. The official ``loss_weight`` (1.0) is left to
the caller.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from rskd_loss.validation import (
    as_class_counts,
    check_int,
    check_logits_targets,
    check_positive,
    check_reduction,
    reduce_loss,
)

from .bce import bce_elementwise, upcast
from .focal import focal_modulator

__all__ = ["DB_PRESETS", "db_bias", "db_loss", "DBLoss"]

_PARAMS = ("alpha", "beta", "mu", "kappa", "lambda_", "focal", "gamma", "balance_param")

DB_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        # configs/coco/LT_resnet50_pfc_DB.py
        "coco": MappingProxyType(
            dict(alpha=0.1, beta=10.0, mu=0.2, kappa=0.05, lambda_=2.0, focal=True, gamma=2.0, balance_param=2.0)
        ),
        # configs/voc/LT_resnet50_pfc_DB.py
        "voc": MappingProxyType(
            dict(alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, lambda_=5.0, focal=True, gamma=2.0, balance_param=2.0)
        ),
    }
)


def _check_finite(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _resolve_params(preset: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Preset values, overridden by every keyword that is not None, each checked."""
    if preset not in DB_PRESETS:
        raise ValueError(f"preset must be one of {tuple(DB_PRESETS)}, got {preset!r}")
    p = dict(DB_PRESETS[preset])
    p.update({k: v for k, v in overrides.items() if v is not None})
    if not isinstance(p["focal"], bool):
        raise TypeError(f"focal must be a bool, got {type(p['focal']).__name__}")
    return dict(
        alpha=check_positive(p["alpha"], "alpha", allow_zero=True),
        beta=check_positive(p["beta"], "beta", allow_zero=True),
        mu=_check_finite(p["mu"], "mu"),
        kappa=check_positive(p["kappa"], "kappa", allow_zero=True),
        lambda_=check_positive(p["lambda_"], "lambda_"),
        focal=p["focal"],
        gamma=check_positive(p["gamma"], "gamma", allow_zero=True),
        balance_param=check_positive(p["balance_param"], "balance_param"),
    )


def _checked_counts(class_counts: object, num_images: object, kappa: float) -> tuple[torch.Tensor, int]:
    """n_k > 0 (r divides by it); n_k <= N; n_k < N when kappa > 0 (log(N/n_k - 1) needs N/n_k > 1)."""
    n = as_class_counts(class_counts, allow_zero=False)
    total = check_int(num_images, "num_images", minimum=1)
    over = (n > total).nonzero().flatten().tolist()
    if over:
        raise ValueError(
            f"class_counts must be <= num_images={total} (a class cannot have more positive images than "
            f"there are images), got {n[over[0]].item():g} for class {over[0]}"
        )
    full = (n == total).nonzero().flatten().tolist()
    if full and kappa != 0:
        raise ValueError(
            f"class_counts must be < num_images={total} for the negative-tolerant bias "
            f"-kappa*log(N/n_k - 1), got n={total} (every image positive) for class {full[0]}; "
            f"pass kappa=0 to drop the bias"
        )
    return n, total


def db_bias(
    class_counts: object, num_images: int, kappa: float = 0.05, lambda_: float = 2.0, legacy_bias: bool = False
) -> torch.Tensor:
    r"""The negative-tolerant class bias :math:`\nu_k = -\kappa \log(N / n_k - 1)` (float64, (C,)).

    ``legacy_bias=True`` returns :math:`\nu_k / \lambda`, the official code's value
    (``resample_loss.py``, ``init_bias``; a bug per issue #8 of ``wutong16/DistributionBalancedLoss``).
    Defaults: ``kappa=0.05`` (``init_bias`` in both DB configs), ``lambda_=2.0`` (COCO config's
    ``neg_scale``). With ``kappa = 0`` the bias is 0 (also for a class positive in every image).

    Shape:
        - class_counts: (C,); output: (C,).

    Example:
        >>> db_bias([25, 10], num_images=100, kappa=1.0)  # -log(100/25 - 1), -log(100/10 - 1)
        tensor([-1.0986, -2.1972], dtype=torch.float64)
    """
    kappa = check_positive(kappa, "kappa", allow_zero=True)
    lambda_ = check_positive(lambda_, "lambda_")
    n, total = _checked_counts(class_counts, num_images, kappa)
    if kappa == 0:
        return torch.zeros_like(n)
    bias = -kappa * torch.log(total / n - 1.0)
    return bias / lambda_ if legacy_bias else bias


def _db_core(
    logits: torch.Tensor,
    targets: torch.Tensor,
    inv_freq: torch.Tensor,
    bias: torch.Tensor,
    p: Mapping[str, Any],
    reduction: str,
) -> torch.Tensor:
    """DB loss from precomputed 1/n_k and bias; inputs already checked."""
    with torch.autocast(device_type=logits.device.type, enabled=False):
        z, y = upcast(logits, targets)
        inv = inv_freq.to(device=z.device, dtype=z.dtype)
        # 1. rebalanced weight r_ik = (1/n_k) / sum_j y_ij / n_j, w = alpha + sigmoid(beta (r - mu)).
        #    No gradient flows through it (it depends on targets and counts only).
        repeat = (y * inv).sum(dim=1, keepdim=True)  # (N, 1)
        has_pos = repeat > 0
        r = inv / torch.where(has_pos, repeat, torch.ones_like(repeat))
        sig = torch.sigmoid(p["beta"] * (r - p["mu"]))
        # An image with no positive: the official 1/n / 0 = inf -> sigmoid = 1 (0.5 if beta == 0).
        sig = torch.where(has_pos, sig, torch.full_like(sig, 1.0 if p["beta"] > 0 else 0.5))
        w = p["alpha"] + sig
        # 2. negative-tolerant regularisation: shift by the class bias, scale negatives by lambda.
        lam = p["lambda_"]
        zb = z + bias.to(device=z.device, dtype=z.dtype)  # a new tensor; the caller's logits untouched
        zr = y * zb + (1.0 - y) * (lam * zb)
        wr = y * w + (1.0 - y) * (w / lam)
        loss = wr * bce_elementwise(zr, y)
        # 3. focal term on the regularised logits, no alpha.
        if p["focal"]:
            loss = p["balance_param"] * focal_modulator(zr, y, p["gamma"]) * loss
    return reduce_loss(loss, reduction)


def db_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_counts: object,
    num_images: int,
    preset: str = "coco",
    *,
    alpha: float | None = None,
    beta: float | None = None,
    mu: float | None = None,
    kappa: float | None = None,
    lambda_: float | None = None,
    focal: bool | None = None,
    gamma: float | None = None,
    balance_param: float | None = None,
    legacy_bias: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Distribution-Balanced loss (functional form; see the module docstring for every source).

    .. math::

        r_{ik} = \frac{1/n_k}{\sum_j y_{ij}/n_j}, \quad w_{ik} = \alpha + \sigma(\beta(r_{ik} - \mu)),
        \quad z'_{ik} = z_{ik} + \nu_k, \quad \nu_k = -\kappa\log\Big(\frac{N}{n_k} - 1\Big)

    .. math::

        \ell_{ik} = \text{bp}^{[f]}\,(1 - p_t)^{\gamma [f]}\,\Big[y_{ik}\,w_{ik}\,
            \log(1 + e^{-z'_{ik}}) + (1 - y_{ik})\,\frac{w_{ik}}{\lambda}\,\log(1 + e^{\lambda z'_{ik}})\Big]

    where :math:`[f]` marks the factors present only with ``focal=True`` (bp = ``balance_param``,
    :math:`p_t = \sigma(z')` for positives and :math:`\sigma(-\lambda z')` for negatives).

    Each keyword that is not ``None`` overrides the preset (``"coco"`` default, or ``"voc"``; see
    :data:`DB_PRESETS`). ``alpha=0.5, beta=0`` makes every :math:`w_{ik} = 1`; ``kappa=0,
    lambda_=1`` switches the regularisation off; ``focal=False`` the focal term: all three off is
    plain BCE.

    Args:
        logits: (N, C) float logits (never modified).
        targets: (N, C) multi-hot {0, 1}.
        class_counts: (C,) positive training images per class: 0 < n_k < N (n_k = N allowed only
            with ``kappa = 0``); ``ValueError`` names the offending class.
        num_images: N, the number of training images (``train_num`` in the official code).
        preset: ``"coco"`` | ``"voc"``.
        alpha, beta, mu: rebalanced-weight mapping (>= 0, >= 0, finite).
        kappa, lambda_: bias scale (>= 0) and negative logit scale (> 0).
        focal, gamma, balance_param: focal term switch, its gamma (>= 0) and factor (> 0).
        legacy_bias: use the official (buggy) bias :math:`\nu/\lambda`
            (``wutong16/DistributionBalancedLoss`` issue #8).
        reduction: ``'mean'`` (over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C); class_counts: (C,).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> logits = torch.zeros(2, 3)
        >>> targets = torch.tensor([[1, 0, 1], [0, 1, 0]])
        >>> db_loss(logits, targets, [50, 10, 2], num_images=100, reduction="none").shape
        torch.Size([2, 3])
    """
    check_reduction(reduction)
    p = _resolve_params(
        preset,
        dict(alpha=alpha, beta=beta, mu=mu, kappa=kappa, lambda_=lambda_, focal=focal, gamma=gamma,
             balance_param=balance_param),
    )
    logits, targets = check_logits_targets(logits, targets)
    n, total = _checked_counts(class_counts, num_images, p["kappa"])
    if n.numel() != logits.shape[1]:
        raise ValueError(
            f"class_counts must have {logits.shape[1]} entries (one per logit column), got {n.numel()}"
        )
    bias = db_bias(n, total, p["kappa"], p["lambda_"], legacy_bias=bool(legacy_bias))
    return _db_core(logits, targets, 1.0 / n, bias, p, reduction)


class DBLoss(nn.Module):
    r"""Distribution-Balanced loss module (registry name ``"db"``); formula in :func:`db_loss`.

    .. math::

        \ell_{ik} = \text{bp}\,(1 - p_t)^{\gamma}\,\Big[y_{ik}\,w_{ik}\,\log(1 + e^{-z'_{ik}})
            + (1 - y_{ik})\,\frac{w_{ik}}{\lambda}\,\log(1 + e^{\lambda z'_{ik}})\Big]

    Buffers: ``class_counts`` (C,), ``inv_freq`` :math:`1/n_k` (C,), ``bias`` :math:`\nu_k` (C,)
    (:math:`\nu_k/\lambda` with ``legacy_bias=True``); they are stored in the default dtype (float32,
    so that ``.to(device)`` works on every backend); the loss is computed in the logits' dtype
    (float32 for half precision). Resolved hyper-parameters are attributes (``alpha``, ``beta``,
    ``mu``, ``kappa``, ``lambda_``, ``focal``, ``gamma``, ``balance_param``).

    Args:
        class_counts: (C,) positive training images per class, 0 < n_k < N.
        num_images: N, number of training images.
        preset: ``"coco"`` (default; ``configs/coco/LT_resnet50_pfc_DB.py``) or ``"voc"``
            (``configs/voc/LT_resnet50_pfc_DB.py``). Unknown -> ``ValueError`` listing both.
        alpha, beta, mu, kappa, lambda_, focal, gamma, balance_param: override the preset when not
            ``None`` (see :data:`DB_PRESETS` for the preset values and their config lines).
        legacy_bias: ``False`` (default): bias :math:`-\kappa\log(N/n_k - 1)` as in the paper's
            Eq. 9; ``True``: the official code's value divided by :math:`\lambda`
            (``wutong16/DistributionBalancedLoss`` issue #8).
        reduction: ``'mean'`` (default, over all N*C elements) | ``'sum'`` | ``'none'``.

    Shape:
        - logits, targets: (N, C).
        - output: scalar, or (N, C) for ``'none'``.

    Example:
        >>> crit = DBLoss([50, 10, 2], num_images=100, preset="voc", focal=False)
        >>> crit.lambda_, crit.mu, crit.focal
        (5.0, 0.3, False)
        >>> logits = torch.zeros(2, 3, requires_grad=True)
        >>> crit(logits, torch.tensor([[1, 0, 1], [0, 1, 0]])).backward()
    """

    class_counts: torch.Tensor
    inv_freq: torch.Tensor
    bias: torch.Tensor

    def __init__(
        self,
        class_counts: object,
        num_images: int,
        preset: str = "coco",
        *,
        alpha: float | None = None,
        beta: float | None = None,
        mu: float | None = None,
        kappa: float | None = None,
        lambda_: float | None = None,
        focal: bool | None = None,
        gamma: float | None = None,
        balance_param: float | None = None,
        legacy_bias: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        params = _resolve_params(
            preset,
            dict(alpha=alpha, beta=beta, mu=mu, kappa=kappa, lambda_=lambda_, focal=focal, gamma=gamma,
                 balance_param=balance_param),
        )
        self.preset = preset
        self.alpha: float = params["alpha"]
        self.beta: float = params["beta"]
        self.mu: float = params["mu"]
        self.kappa: float = params["kappa"]
        self.lambda_: float = params["lambda_"]
        self.focal: bool = params["focal"]
        self.gamma: float = params["gamma"]
        self.balance_param: float = params["balance_param"]
        self.legacy_bias = bool(legacy_bias)
        n, total = _checked_counts(class_counts, num_images, self.kappa)
        self.num_images = total
        dtype = torch.get_default_dtype()
        self.register_buffer("class_counts", n.to(dtype))
        self.register_buffer("inv_freq", (1.0 / n).to(dtype))
        self.register_buffer("bias", db_bias(n, total, self.kappa, self.lambda_, self.legacy_bias).to(dtype))

    @property
    def num_classes(self) -> int:
        return int(self.class_counts.numel())

    def _params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _PARAMS}

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, targets = check_logits_targets(logits, targets)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have {self.num_classes} columns (one per class count), got shape "
                f"{tuple(logits.shape)}"
            )
        return _db_core(logits, targets, self.inv_freq, self.bias, self._params(), self.reduction)

    def extra_repr(self) -> str:
        ps = ", ".join(f"{k}={v}" for k, v in self._params().items())
        return (
            f"num_classes={self.num_classes}, num_images={self.num_images}, preset={self.preset!r}, {ps}, "
            f"legacy_bias={self.legacy_bias}, reduction={self.reduction!r}"
        )
