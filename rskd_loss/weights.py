"""The dynamic per-class KD weights of Eq. 3 (Ju et al., MICCAI 2021, Section 2.2)."""
from __future__ import annotations

import torch

from .validation import as_class_metric, check_probability

__all__ = ["KDWeightSchedule", "kd_weights"]


def _check_same_scale(s: torch.Tensor, t: torch.Tensor) -> None:
    """Refuse a student and a teacher metric that look like they are on different scales.

    A metric with a defined value above 1 looks like percent; one whose defined values are all
    <= 1 (an AP of exactly 1.0 included) looks like a fraction. Eq. 3 is scale free, so both in
    percent or both as fractions is fine; one of each would make every weight 0 or 1. A metric with
    no defined value (all NaN) says nothing about its scale and is never refused.
    """
    s_def, t_def = s[~torch.isnan(s)], t[~torch.isnan(t)]
    if not s_def.numel() or not t_def.numel():
        return
    s_pct, t_pct = bool((s_def > 1).any()), bool((t_def > 1).any())
    if s_pct == t_pct:
        return

    def scale(values: torch.Tensor, pct: bool) -> str:
        if pct:
            return f"percent (max {values.max().item():g} > 1)"
        return f"a fraction (all <= 1, max {values.max().item():g})"

    raise ValueError(
        f"student_metric and teacher_metric are on different scales: student_metric looks like "
        f"{scale(s_def, s_pct)}, teacher_metric like {scale(t_def, t_pct)}. Give both as per-class "
        f"AP fractions in [0, 1] (divide percent by 100), or both in percent"
    )


def kd_weights(student_metric: object, teacher_metric: object, delta: float = 0.6) -> torch.Tensor:
    r"""Per-class KD weights of Eq. 3, clamped to [0, 1].

    .. math::

        w_i = \begin{cases}
            1 & \text{if } \delta\,A^T_i \ge A^S_i \\
            \operatorname{clamp}\Big(\dfrac{A^T_i - A^S_i}{A^T_i\,(1-\delta)}, 0, 1\Big) & \text{otherwise}
        \end{cases}

    where :math:`A^T_i` is the teachers' (fixed) metric and :math:`A^S_i` the student's metric of the
    last epoch for class :math:`i`, both measured on the same validation images. The weight falls
    linearly from 1 (student at ``delta`` times the teacher) to 0 (student equal to the teacher).

    Decisions the paper leaves open, and the reason for each:

    * Eq. 3 as printed becomes negative once the student beats the teacher; it is clamped to [0, 1],
      as in LFME (Xiang et al., ECCV 2020), which the formula comes from.
    * A class whose metric is undefined (NaN, e.g. AP with no validation positives) in either model
      keeps weight 1.
    * A teacher metric of 0 with a student metric above 0 gives 0 (the student beats the teacher),
      instead of a division by zero.
    * Both metrics must be on one scale (Eq. 3 is scale free: fractions or percent). One that
      looks like percent (a defined value > 1) next to one that looks like a fraction (every
      defined value <= 1, an AP of exactly 1.0 included) raises ``ValueError`` naming both scales;
      an all-NaN metric is never refused. A percent metric whose every value is <= 1 (under 1 %
      on every class) cannot be told from a fraction: pass fractions, as
      :func:`rskd_loss.metrics.average_precision_per_class` returns them.

    Args:
        student_metric: (C,) per-class metric of the student (e.g. per-class AP), >= 0 or NaN.
        teacher_metric: (C,) per-class metric of the teachers, same scale as ``student_metric``.
        delta: the decay threshold, in (0, 1). Paper: 0.6 (Section 3.1).

    Returns:
        (C,) float32 CPU tensor of weights in [0, 1].

    Example:
        >>> kd_weights([0.3, 0.54, 0.9, float("nan")], [0.9, 0.9, 0.9, 0.9], delta=0.6)
        tensor([1., 1., 0., 1.])
    """
    delta = check_probability(delta, "delta")
    s = as_class_metric(student_metric, "student_metric")
    t = as_class_metric(teacher_metric, "teacher_metric")
    if s.shape != t.shape:
        raise ValueError(
            f"student_metric and teacher_metric must have one value per class each, got "
            f"{s.numel()} and {t.numel()}"
        )
    _check_same_scale(s, t)
    full = delta * t >= s
    safe_t = torch.where(t > 0, t, torch.ones_like(t))
    decayed = torch.where(t > 0, (t - s) / (safe_t * (1.0 - delta)), torch.zeros_like(t))
    w = torch.where(full, torch.ones_like(t), decayed.clamp(0.0, 1.0))
    w = torch.where(torch.isnan(s) | torch.isnan(t), torch.ones_like(w), w)
    return w.to(torch.float32)


class KDWeightSchedule:
    """Callable form of :func:`kd_weights` that holds ``delta`` (Eq. 3).

    Example:
        >>> schedule = KDWeightSchedule(delta=0.6)
        >>> schedule(student_metric=[0.72, 0.95], teacher_metric=[0.9, 0.9])
        tensor([0.5000, 0.0000])
    """

    def __init__(self, delta: float = 0.6) -> None:
        self.delta = check_probability(delta, "delta")

    def __call__(self, *, student_metric: object, teacher_metric: object) -> torch.Tensor:
        return kd_weights(student_metric, teacher_metric, self.delta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(delta={self.delta})"
