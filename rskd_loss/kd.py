r"""Per-class binary knowledge distillation (Eq. 1-2) and the weighted subset KD loss (Eq. 4).

Ju et al., "Relational Subsets Knowledge Distillation for Long-tailed Retinal Diseases Recognition",
MICCAI 2021, Section 2.2.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .validation import (
    as_class_metric,
    check_int,
    check_logits_targets,
    check_positive,
    check_same_shape,
    compute_dtype,
    reduce_loss,
    value_checks_enabled,
)
from .weights import KDWeightSchedule

__all__ = ["binary_kd_loss", "WeightedSubsetKDLoss", "KDLossParts", "KD_ORDERS"]

KD_ORDERS = ("student_teacher", "teacher_student")


def _check_kd_args(
    student_logits: object, teacher_logits: object, temperature: float, order: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    if not isinstance(student_logits, torch.Tensor):
        raise TypeError(f"student_logits must be a torch.Tensor, got {type(student_logits).__name__}")
    if not isinstance(teacher_logits, torch.Tensor):
        raise TypeError(f"teacher_logits must be a torch.Tensor, got {type(teacher_logits).__name__}")
    if not student_logits.is_floating_point() or not teacher_logits.is_floating_point():
        raise TypeError(
            f"student_logits and teacher_logits must be floating-point, got {student_logits.dtype} "
            f"and {teacher_logits.dtype}"
        )
    check_same_shape(student_logits, teacher_logits, "student_logits", "teacher_logits")
    if order not in KD_ORDERS:
        raise ValueError(f"order must be one of {KD_ORDERS}, got {order!r}")
    return student_logits, teacher_logits, check_positive(temperature, "temperature")


def binary_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 10.0,
    order: str = "student_teacher",
    scale_by_t2: bool = False,
    reduction: str = "none",
) -> torch.Tensor:
    r"""Per-class binary KL divergence between softened sigmoid outputs (Eq. 1-2).

    Each class is a two-way distribution (Eq. 1): with :math:`a = \hat z / T` (student) and
    :math:`b = z / T` (teacher),

    .. math::

        \hat q = \sigma(a), \qquad q = \sigma(b),

    and Eq. 2 as printed is :math:`\mathrm{KL}(\hat q \,\|\, q)`, student first:

    .. math::

        \mathrm{KL}(\hat q \,\|\, q) = \sum_{\{0,1\}} \hat q \ln\frac{\hat q}{q}
        = \sigma(a)\,(a - b) - \operatorname{softplus}(a) + \operatorname{softplus}(b),

    using :math:`\ln\sigma(x) = -\operatorname{softplus}(-x)` and
    :math:`\operatorname{softplus}(x) - \operatorname{softplus}(-x) = x`. This closed form never takes
    the log of a probability, so it stays finite for logits of +-100 in float32 and bf16.
    ``order="teacher_student"`` gives the Hinton form :math:`\mathrm{KL}(q \,\|\, \hat q)` (swap
    :math:`a` and :math:`b`), which the authors' later code uses. The gradients differ: for
    student-first :math:`\partial/\partial a = \sigma'(a)(a - b)`, for teacher-first
    :math:`\sigma(a) - \sigma(b)`.

    Defaults: ``T = 10`` (the paper's Table 4 picks T = 10), order as printed in Eq. 2, and no
    :math:`T^2` factor (the paper has none); ``scale_by_t2=True`` multiplies by :math:`T^2` as in
    Hinton et al. (2015). Inputs in half precision are computed in float32 (as
    autocast does for ``binary_cross_entropy_with_logits``) and the result is float32.

    Gradients flow to both arguments; detach the teacher's logits (as
    :class:`WeightedSubsetKDLoss` does) when the teacher is frozen.

    Args:
        student_logits: (N, C) logits of the student (unified) model.
        teacher_logits: (N, C) logits of the teachers for the same samples and classes.
        temperature: T > 0.
        order: ``"student_teacher"`` (Eq. 2 as printed) or ``"teacher_student"`` (Hinton).
        scale_by_t2: multiply by T^2.
        reduction: ``'none'`` (default, per element), ``'mean'`` over all elements, or ``'sum'``.

    Shape:
        - student_logits, teacher_logits: (N, C), or any shape as long as both match.
        - output: same shape for ``'none'``, else a scalar.

    Example:
        >>> s = torch.tensor([[2.0, -1.0]]); t = torch.tensor([[2.0, 3.0]])
        >>> binary_kd_loss(s, t, temperature=1.0)[0, 0].item()
        0.0
    """
    student_logits, teacher_logits, temperature = _check_kd_args(
        student_logits, teacher_logits, temperature, order
    )
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        a = student_logits.to(dtype) / temperature
        b = teacher_logits.to(dtype) / temperature
        if order == "teacher_student":
            a, b = b, a
        loss = torch.sigmoid(a) * (a - b) - F.softplus(a) + F.softplus(b)
        # The exact KL is >= 0; rounding in the closed form can leave -1e-7 where a == b.
        loss = loss.clamp_min(0.0)
        if scale_by_t2:
            loss = loss * (temperature * temperature)
    return reduce_loss(loss, reduction)


class KDLossParts(NamedTuple):
    """What :class:`WeightedSubsetKDLoss` returns with ``return_parts=True``, for logging.

    ``loss = base_loss + kd_loss``; ``kd_per_class`` is the unweighted, batch-mean KD term of every
    class (C,) (0 for a class no teacher covers); ``weights`` the per-class weights used (C,).
    """

    loss: torch.Tensor
    base_loss: torch.Tensor
    kd_loss: torch.Tensor
    kd_per_class: torch.Tensor
    weights: torch.Tensor


class WeightedSubsetKDLoss(nn.Module):
    r"""Any criterion plus the dynamically weighted per-class KD loss of Eq. 4.

    .. math::

        L = L_{\text{base}}(\hat z, y) + \lambda \sum_{i=1}^{C} w_i\, m_i\,
            \frac{1}{N} \sum_{n=1}^{N} \mathrm{KL}_{T}\big(\hat q_{n,i} \,\|\, q_{n,i}\big)

    where :math:`\mathrm{KL}_T` is :func:`binary_kd_loss` (Eq. 1-2), :math:`w_i` the per-class
    weights of Eq. 3 (a buffer, initially 1, set each epoch by :meth:`update_weights`), :math:`m_i`
    the ``teacher_mask`` (1 where a teacher covers class i), and :math:`\lambda` = ``kd_weight``
    (1 in the paper). Eq. 4 sums the per-class KD terms (each a batch mean) over classes.

    The wrapper composes ``base`` (it never subclasses it): ``base`` is any callable taking
    ``(logits, targets, **kwargs)``; extra keyword arguments of :meth:`forward` pass through to it
    (e.g. ``features=`` for OLTR). The KD term follows the base's reduction: if ``base`` returns an
    (N, C) per-element loss (``reduction='none'``) the KD term is spread per element as
    :math:`\lambda\,C\,w_i m_{n,i}\,\mathrm{KL}_{n,i}`, so ``loss.mean()`` equals the ``'mean'`` value
    and ``loss.sum()`` the ``'sum'`` value (``base.reduction == 'sum'`` adds that sum). A scalar from a
    base without a ``reduction`` attribute is taken as a mean.

    The teacher's logits are detached: teachers are frozen. With every weight 0 (or ``kd_weight=0``)
    the loss equals ``base`` in value and gradient.

    ``torch.compile``: around any criterion of ``baselines`` the forward is one graph. The value
    checks (finite logits, 0/1 targets, a 0/1 integer ``teacher_mask``) read tensor values, so they
    run in eager mode only and are skipped while compiling (see
    :func:`rskd_loss.validation.value_checks_enabled`); shape, dtype and device checks run in both.

    Args:
        base: the criterion to wrap ("RSKD + X"), e.g. ``nn.BCEWithLogitsLoss()`` or ``FocalLoss()``.
        num_classes: C.
        temperature: T of Eq. 1 (default 10, the paper's Table 4).
        delta: Eq. 3's decay threshold (default 0.6, the paper's Section 3.1).
        order: ``"student_teacher"`` (Eq. 2 as printed, default) or ``"teacher_student"``.
        kd_weight: :math:`\lambda`, a global factor on the KD term (default 1: the paper has none).
        scale_by_t2: multiply the KD term by T^2 (default off: the paper has none).
        soft_targets: accept targets anywhere in [0, 1] (mixup, cutmix, label smoothing) for this
            criterion; values outside [0, 1] or NaN are still refused. Default ``False``: targets
            must be multi-hot {0, 1}. The wrapped ``base`` must accept soft targets too
            (``nn.BCEWithLogitsLoss`` does).

    Shape:
        - logits, targets, teacher_logits: (N, C).
        - teacher_mask: optional (C,) (classes some teacher covers) or (N, C), bool or integer
          0/1 (a float mask is refused).
        - output: what ``base`` returns (a scalar, or (N, C) for a per-element base).

    Example:
        >>> crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=3)
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> targets = torch.randint(0, 2, (4, 3)).float()
        >>> loss = crit(logits, targets, torch.randn(4, 3))
        >>> loss.backward()
        >>> w = crit.update_weights(student_metric=[0.2, 0.7, 0.9], teacher_metric=[0.8, 0.8, 0.8])
    """

    weights: torch.Tensor

    def __init__(
        self,
        base: Callable[..., torch.Tensor],
        num_classes: int,
        temperature: float = 10.0,
        delta: float = 0.6,
        order: str = "student_teacher",
        kd_weight: float = 1.0,
        scale_by_t2: bool = False,
        soft_targets: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(soft_targets, bool):
            raise TypeError(f"soft_targets must be a bool, got {type(soft_targets).__name__}")
        if not callable(base):
            raise TypeError(f"base must be a callable criterion, got {type(base).__name__}")
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        if order not in KD_ORDERS:
            raise ValueError(f"order must be one of {KD_ORDERS}, got {order!r}")
        self.base = base
        self.num_classes = num_classes
        self.temperature = check_positive(temperature, "temperature")
        self.schedule = KDWeightSchedule(delta)
        self.order = order
        self.kd_weight = check_positive(kd_weight, "kd_weight", allow_zero=True)
        self.scale_by_t2 = bool(scale_by_t2)
        self.soft_targets = soft_targets
        self.register_buffer("weights", torch.ones(num_classes))

    @property
    def delta(self) -> float:
        return self.schedule.delta

    def set_weights(self, weights: object) -> None:
        """Set the per-class KD weights (C,), each finite and >= 0 (no in-place change of the input)."""
        w = as_class_metric(weights, "weights")
        if w.numel() != self.num_classes:
            raise ValueError(f"weights must have {self.num_classes} entries (one per class), got {w.numel()}")
        if bool(torch.isnan(w).any()):
            raise ValueError(f"weights must not be NaN, got NaN for class {int(torch.isnan(w).nonzero()[0])}")
        self.weights.copy_(w.to(self.weights.dtype))

    def update_weights(self, *, student_metric: object, teacher_metric: object) -> torch.Tensor:
        """Apply Eq. 3 from per-class metrics (see :func:`rskd_loss.weights.kd_weights`); returns the weights."""
        w = self.schedule(student_metric=student_metric, teacher_metric=teacher_metric)
        self.set_weights(w)
        return self.weights.detach().clone()

    def _check_mask(self, mask: object, shape: torch.Size, device: torch.device) -> torch.Tensor:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"teacher_mask must be a bool torch.Tensor, got {type(mask).__name__}")
        if mask.dtype != torch.bool and (mask.is_floating_point() or mask.is_complex()):
            raise TypeError(
                f"teacher_mask must have dtype torch.bool, got {mask.dtype} (an integer 0/1 mask is "
                f"also accepted)"
            )
        if tuple(mask.shape) not in ((shape[1],), tuple(shape)):
            raise ValueError(
                f"teacher_mask must have shape ({shape[1]},) or {tuple(shape)}, got {tuple(mask.shape)}"
            )
        if mask.dtype != torch.bool:
            if value_checks_enabled() and mask.numel():
                bad = (mask != 0) & (mask != 1)
                if bool(bad.any()):
                    idx = tuple(int(i) for i in bad.nonzero()[0])
                    raise ValueError(
                        f"an integer teacher_mask must hold only 0 and 1, got {mask[idx].item()} at index {idx}"
                    )
            mask = mask != 0
        return mask.to(device)

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        teacher_logits: torch.Tensor,
        teacher_mask: torch.Tensor | None = None,
        return_parts: bool = False,
        **base_kwargs: Any,
    ) -> torch.Tensor | KDLossParts:
        logits, _ = check_logits_targets(logits, targets, binary=not self.soft_targets)
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have num_classes={self.num_classes} columns, got shape {tuple(logits.shape)}"
            )
        if not isinstance(teacher_logits, torch.Tensor):
            raise TypeError(f"teacher_logits must be a torch.Tensor, got {type(teacher_logits).__name__}")
        check_same_shape(logits, teacher_logits, "logits", "teacher_logits")

        base_loss = self.base(logits, targets, **base_kwargs)
        if not isinstance(base_loss, torch.Tensor):
            raise TypeError(f"base criterion must return a torch.Tensor, got {type(base_loss).__name__}")

        kd = binary_kd_loss(
            logits, teacher_logits.detach(), self.temperature, self.order, self.scale_by_t2, "none"
        )  # (N, C), float32 or float64
        if teacher_mask is not None:
            kd = kd * self._check_mask(teacher_mask, logits.shape, logits.device).to(kd.dtype)
        w = self.weights.to(device=kd.device, dtype=kd.dtype)
        n, c = kd.shape
        kd_per_class = kd.mean(dim=0) if n else kd.sum(dim=0)  # (C,) batch means, as Eq. 4

        if base_loss.dim() == 0:
            kd_loss = self.kd_weight * (w * kd_per_class).sum()
            if getattr(self.base, "reduction", "mean") == "sum":
                kd_loss = kd_loss * (n * c)
        elif tuple(base_loss.shape) == tuple(logits.shape):
            kd_loss = (self.kd_weight * c) * kd * w
        else:
            raise ValueError(
                f"base criterion must return a scalar or a per-element loss of shape {tuple(logits.shape)}, "
                f"got shape {tuple(base_loss.shape)}"
            )
        loss = base_loss + kd_loss.to(base_loss.dtype)
        if return_parts:
            return KDLossParts(loss, base_loss, kd_loss, kd_per_class.detach(), w.detach())
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, temperature={self.temperature}, delta={self.delta}, "
            f"order={self.order!r}, kd_weight={self.kd_weight}, scale_by_t2={self.scale_by_t2}"
            + (", soft_targets=True" if self.soft_targets else "")
        )
