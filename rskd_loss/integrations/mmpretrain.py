"""RSKD in an mmpretrain config: a registered loss, head and hook (mmpretrain 1.2, mmengine 0.10).

Import it from a config with ``custom_imports = dict(imports=["rskd_loss.integrations.mmpretrain"],
allow_failed_imports=False)``; importing registers, into mmpretrain's ``MODELS`` and ``HOOKS``:

=================================  ==========================================================================
name                               what
=================================  ==========================================================================
``RSKDWeightedSubsetKDLoss``       :class:`RSKDWeightedSubsetKDLoss`: base loss + Eq. 4 KD term, mmpretrain's
                                   loss calling convention (``weight``, ``avg_factor``, ``reduction_override``)
``RSKDMultiLabelClsHead``          :class:`RSKDMultiLabelClsHead`: wraps any multi-label head (e.g.
                                   ``MultiLabelLinearClsHead``) and passes each sample's teacher logits,
                                   looked up in a :class:`~rskd_loss.TeacherLogitBank` by ``sample_idx``
``RSKDWeightHook``                 :class:`RSKDWeightHook`: Eq. 3 after every validation, from the class-wise
                                   AP of mmpretrain's ``AveragePrecision(average=None)`` (percent -> fraction)
``RSKDMultiLabelBCELoss``,         the project's baselines (``baselines``) in mmpretrain's convention, usable as
``RSKDFocalLoss``,                 a head's loss or as the ``base`` of ``RSKDWeightedSubsetKDLoss``
``RSKDReweightedBCE``,
``RSKDLDAMLoss``, ``RSKDDBLoss``
=================================  ==========================================================================

Every name starts with ``RSKD`` so nothing shadows mmpretrain's own ``FocalLoss`` & co. (a dotted
prefix such as ``RSKD.FocalLoss`` cannot be used: mmengine reads the part before the dot as a
registry scope). A ``base`` config is built from mmpretrain's ``MODELS``: ``dict(type="FocalLoss")`` is
mmpretrain's focal loss, ``dict(type="RSKDFocalLoss")`` the project's. OLTR is not registered: its loss
needs the head's features and centroids, which mmpretrain's heads do not pass.

``recipes/configs/mmpretrain/rskd_example.py`` (repository top level) is a complete config to copy.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModule, is_model_wrapper
from mmpretrain.models.losses.utils import weight_reduce_loss
from mmpretrain.registry import HOOKS, MODELS
from torch import nn

from rskd_loss.baselines import DBLoss, FocalLoss, LDAMLoss, MultiLabelBCELoss, ReweightedBCE

from ..kd import WeightedSubsetKDLoss
from ..teachers import TeacherLogitBank
from ..validation import REDUCTIONS
from ..workflow import KDWeightUpdater
from .common import load_per_class_metric

__all__ = ["RSKDWeightedSubsetKDLoss", "RSKDMultiLabelClsHead", "RSKDWeightHook", "RSKDMultiLabelBCELoss",
           "RSKDFocalLoss", "RSKDReweightedBCE", "RSKDLDAMLoss", "RSKDDBLoss"]


def _weight_reduce(loss: torch.Tensor, weight: torch.Tensor | None, reduction: str,
                   avg_factor: float | None) -> torch.Tensor:
    """mmpretrain's ``weight_reduce_loss`` on an (N, C) loss; ``weight`` (N,) per sample or (N, C)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if weight is not None:
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
        if weight.dim() == 1 and weight.shape[0] == loss.shape[0]:
            weight = weight.reshape(-1, 1)
        elif tuple(weight.shape) != tuple(loss.shape):
            raise ValueError(f"weight must have shape ({loss.shape[0]},) (per sample) or {tuple(loss.shape)}, "
                             f"got {tuple(weight.shape)}")
        weight = weight.to(loss.dtype)
    return weight_reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor)


class _ProjectLoss(nn.Module):
    """A criterion of ``baselines`` in mmpretrain's loss convention (built with ``reduction='none'``)."""

    criterion_cls: type[nn.Module]

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.criterion = self.criterion_cls(reduction="none", **kwargs)
        self.reduction, self.loss_weight = reduction, float(loss_weight)

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None) -> torch.Tensor:
        loss = self.criterion(cls_score, label)
        return self.loss_weight * _weight_reduce(loss, weight, reduction_override or self.reduction, avg_factor)


def _project_loss(cls: type[nn.Module], doc: str) -> type[_ProjectLoss]:
    name = "RSKD" + cls.__name__
    new = type(name, (_ProjectLoss,), {"criterion_cls": cls, "__doc__": doc, "__module__": __name__})
    MODELS.register_module(name=name, module=new)
    return new


_CONVENTION = (" in mmpretrain's loss convention: ``forward(cls_score, label, weight=None, avg_factor=None, "
               "reduction_override=None)``; constructor: ``reduction``, ``loss_weight`` and the criterion's "
               "own keyword arguments.")
RSKDMultiLabelBCELoss = _project_loss(MultiLabelBCELoss, ":class:`rskd_loss.baselines.MultiLabelBCELoss`" + _CONVENTION)
RSKDFocalLoss = _project_loss(FocalLoss, ":class:`rskd_loss.baselines.FocalLoss`" + _CONVENTION)
RSKDReweightedBCE = _project_loss(ReweightedBCE, ":class:`rskd_loss.baselines.ReweightedBCE`" + _CONVENTION)
RSKDLDAMLoss = _project_loss(LDAMLoss, ":class:`rskd_loss.baselines.LDAMLoss`" + _CONVENTION)
RSKDDBLoss = _project_loss(DBLoss, ":class:`rskd_loss.baselines.DBLoss`" + _CONVENTION)


def _build_base(base: object) -> Callable[..., torch.Tensor]:
    if isinstance(base, Mapping):
        if "type" not in base:
            raise ValueError(f"base must be a config dict with a 'type' (e.g. dict(type='FocalLoss') or "
                             f"dict(type='RSKDFocalLoss')), got keys {sorted(base)}")
        base = MODELS.build(base)
    if not callable(base):
        raise TypeError(f"base must be a loss config dict or a loss module, got {type(base).__name__}")
    params = inspect.signature(base.forward if isinstance(base, nn.Module) else base).parameters
    if "reduction_override" not in params:
        raise TypeError(
            f"base must follow mmpretrain's loss convention, forward(cls_score, label, weight=None, "
            f"avg_factor=None, reduction_override=None) (mmpretrain's losses, or the project's as "
            f"'RSKDFocalLoss', 'RSKDDBLoss', ...), got {type(base).__name__} with parameters {list(params)}"
        )
    if getattr(base, "use_sigmoid", True) is False:
        raise ValueError(f"base {type(base).__name__} has use_sigmoid=False (softmax, single-label); RSKD is "
                         f"multi-label: set use_sigmoid=True")
    return base


@MODELS.register_module(name="RSKDWeightedSubsetKDLoss")
class RSKDWeightedSubsetKDLoss(WeightedSubsetKDLoss):
    """:class:`~rskd_loss.WeightedSubsetKDLoss` with mmpretrain's loss convention and a ``base`` from a config.

    ``forward(cls_score, label, teacher_logits, weight=None, avg_factor=None, reduction_override=None,
    teacher_mask=None)``: the base is called with ``reduction_override='none'`` for its (N, C)
    per-element loss, the KD term is spread per element as in :class:`WeightedSubsetKDLoss`
    (:math:`\\lambda C w_i \\mathrm{KL}_{n,i}`), then ``weight`` (per sample (N,) or per element
    (N, C)) multiplies the total and mmpretrain's ``weight_reduce_loss`` reduces it. A multi-label
    head passes ``avg_factor=N``: the base's value is then exactly what mmpretrain computes without
    RSKD (sum over classes, mean over samples: C times an element mean), and the KD term keeps the
    ratio to the base it has with a mean-reduced base in plain PyTorch (Eq. 4's; ``kd_weight=1/C``
    instead pairs mmpretrain's summed base with Eq. 4's per-class batch means).

    ``teacher_logits`` comes from :class:`RSKDMultiLabelClsHead`; the per-class weights are the
    buffer ``weights`` (in the model's ``state_dict``, so in every checkpoint), set by
    :class:`RSKDWeightHook`. A head that passes no ``teacher_logits`` gets a ``TypeError``.

    Args:
        base: a loss config, built from mmpretrain's ``MODELS`` (``dict(type='FocalLoss')``,
            ``dict(type='CrossEntropyLoss', use_sigmoid=True)``, ``dict(type='RSKDFocalLoss')``, ...),
            or a loss module following mmpretrain's convention.
        num_classes, temperature, delta, order, kd_weight, scale_by_t2, soft_targets: as for
            :class:`WeightedSubsetKDLoss` (``soft_targets=True`` with mmpretrain's Mixup / CutMix).
        reduction: ``'mean'`` (default, divided by ``avg_factor`` when given), ``'sum'``, ``'none'``.
        loss_weight: a factor on the whole loss (mmpretrain's convention).

    Example:
        >>> loss = MODELS.build(dict(type="RSKDWeightedSubsetKDLoss", base=dict(type="FocalLoss"), num_classes=3))
        >>> z, y = torch.randn(4, 3), torch.randint(0, 2, (4, 3)).float()
        >>> loss(z, y, teacher_logits=torch.randn(4, 3), avg_factor=4).shape
        torch.Size([])
    """

    def __init__(self, base: object, num_classes: int, temperature: float = 10.0, delta: float = 0.6,
                 order: str = "student_teacher", kd_weight: float = 1.0, scale_by_t2: bool = False,
                 soft_targets: bool = False, reduction: str = "mean", loss_weight: float = 1.0) -> None:
        super().__init__(_build_base(base), num_classes, temperature=temperature, delta=delta, order=order,
                         kd_weight=kd_weight, scale_by_t2=scale_by_t2, soft_targets=soft_targets)
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction, self.loss_weight = reduction, float(loss_weight)

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor,  # type: ignore[override]
                teacher_logits: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                avg_factor: float | None = None, reduction_override: str | None = None,
                teacher_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        if teacher_logits is None:
            raise TypeError("RSKDWeightedSubsetKDLoss got no teacher_logits: use it as the loss of a head wrapped "
                            "in head=dict(type='RSKDMultiLabelClsHead', head=..., teacher_bank=...)")
        per_element = super().forward(cls_score, label, teacher_logits, teacher_mask,
                                      reduction_override="none", **kwargs)
        reduction = reduction_override or self.reduction
        return self.loss_weight * _weight_reduce(per_element, weight, reduction, avg_factor)


def _sample_indices(data_samples: Sequence[Any]) -> torch.Tensor:
    idx = []
    for i, ds in enumerate(data_samples):
        meta = ds.metainfo if hasattr(ds, "metainfo") else {}
        if "sample_idx" not in meta:
            raise ValueError(
                f"data sample {i} has no 'sample_idx' in its metainfo (got {sorted(meta)}): RSKD looks the teacher "
                f"logits up by it; keep 'sample_idx' in PackInputs' meta_keys (it is in the default)"
            )
        idx.append(int(meta["sample_idx"]))
    return torch.tensor(idx, dtype=torch.long)


@MODELS.register_module(name="RSKDMultiLabelClsHead")
class RSKDMultiLabelClsHead(BaseModule):
    """A multi-label head whose loss also gets each sample's teacher logits (composition: it holds ``head``).

    ``head`` is any mmpretrain multi-label head (``MultiLabelLinearClsHead``, ``CSRAHead``, ...) whose
    ``loss`` is an :class:`RSKDWeightedSubsetKDLoss`. In :meth:`loss` the teacher logits of every
    sample are read from the :class:`~rskd_loss.TeacherLogitBank` at ``teacher_bank`` by the data
    sample's ``sample_idx`` (mmengine's ``BaseDataset`` sets it to the item's index, which the
    :class:`~mmpretrain.datasets.PackInputs` transform keeps), then ``head.loss(feats, data_samples,
    teacher_logits=...)``; ``forward``, ``pre_logits`` and ``predict`` are the wrapped head's.

    The bank must hold one row per item of the training data set, in its order (``dataset[i]`` is
    row i), built from the teachers with :func:`rskd_loss.build_bank`. ``RepeatDataset`` and
    ``ClassBalancedDataset`` keep the inner data set's ``sample_idx`` (fine); a ``ConcatDataset`` restarts
    it in every part (not supported).

    Example (config)::

        head=dict(type="RSKDMultiLabelClsHead", teacher_bank="work_dirs/teachers/bank.rskd",
                  head=dict(type="MultiLabelLinearClsHead", num_classes=C, in_channels=2048,
                            loss=dict(type="RSKDWeightedSubsetKDLoss", base=dict(type="FocalLoss"),
                                      num_classes=C)))
    """

    def __init__(self, head: Mapping[str, Any] | nn.Module, teacher_bank: str | os.PathLike,
                 init_cfg: Mapping[str, Any] | None = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.head = head if isinstance(head, nn.Module) else MODELS.build(head)
        crit = getattr(self.head, "loss_module", None)
        if not isinstance(crit, WeightedSubsetKDLoss):
            raise TypeError(f"head's loss must be an RSKDWeightedSubsetKDLoss (loss=dict(type="
                            f"'RSKDWeightedSubsetKDLoss', base=..., num_classes=...)), got {type(crit).__name__}")
        self.teacher_bank = os.fspath(teacher_bank)
        bank = TeacherLogitBank(self.teacher_bank)
        if bank.num_classes != crit.num_classes:
            raise ValueError(f"{self.teacher_bank}: the bank has {bank.num_classes} classes, the loss "
                             f"num_classes={crit.num_classes}")
        self._bank: TeacherLogitBank | None = None   # opened on first use (a model deep copy stays cheap)

    @property
    def loss_module(self) -> WeightedSubsetKDLoss:
        return self.head.loss_module

    def teacher_logits(self, data_samples: Sequence[Any], device: torch.device) -> torch.Tensor:
        """(B, C) float32 teacher logits of the samples, on ``device``."""
        if self._bank is None:
            self._bank = TeacherLogitBank(self.teacher_bank)
            if device.type != "cpu":
                self._bank.to(device)
        return self._bank[_sample_indices(data_samples)].to(device)

    def pre_logits(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.head.pre_logits(feats)

    def forward(self, feats: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.head(feats)

    def loss(self, feats: tuple[torch.Tensor, ...], data_samples: Sequence[Any], **kwargs: Any) -> dict:
        device = feats[-1].device if isinstance(feats, (tuple, list)) else feats.device
        return self.head.loss(feats, data_samples, teacher_logits=self.teacher_logits(data_samples, device),
                              **kwargs)

    def predict(self, feats: tuple[torch.Tensor, ...], data_samples: Sequence[Any] | None = None,
                **kwargs: Any) -> list:
        return self.head.predict(feats, data_samples, **kwargs)


@HOOKS.register_module(name="RSKDWeightHook")
class RSKDWeightHook(Hook):
    """Eq. 3 after every validation of a training run, from mmpretrain's class-wise AP.

    Reads ``metrics[metric_key]`` (``AveragePrecision(average=None)`` in ``val_evaluator``: a list
    of per-class AP in percent), divides it by 100 and applies Eq. 3 to the model's only
    :class:`~rskd_loss.WeightedSubsetKDLoss` through a :class:`~rskd_loss.KDWeightUpdater`. mmengine
    broadcasts the metrics from rank 0, so every rank sets the same weights. A validation outside
    ``runner.train()`` (``runner.val()``, ``runner.test()``) changes nothing.

    The weights are a buffer of the loss, so every checkpoint's ``state_dict`` holds them. mmengine
    writes the checkpoint of epoch k before validation k (it then holds the weights of validation
    k-1, and a run resumed from it trains with those until its next validation), and writes it again
    after a validation that improves a ``save_best`` metric; the hook adds ``checkpoint["rskd"] =
    {"calls", "teacher_ap"}``, where ``calls`` says how many validations the saved weights reflect.

    Note: mmpretrain's AP does not merge tied scores (scikit-learn's and
    :func:`~rskd_loss.metrics.average_precision_per_class` do) and gives 0 (not NaN) to a class with
    no validation positive; Eq. 3 keeps weight 1 for such a class either way.

    Args:
        teacher_ap: the teachers' per-class AP on the same validation images: a list, or a ``.json`` /
            ``.npy`` / ``.txt`` file (:func:`~rskd_loss.integrations.load_per_class_metric`), as fractions;
            ``teacher_ap_percent=True`` if it is in percent (as mmpretrain reports it).
        metric_key: the key of the class-wise AP in the validation metrics.

    Example (config)::

        custom_hooks = [dict(type="RSKDWeightHook", teacher_ap="work_dirs/teachers/teacher_ap.json")]
    """

    priority = "NORMAL"

    def __init__(self, teacher_ap: object, metric_key: str = "multi-label/AP_classwise",
                 teacher_ap_percent: bool = False) -> None:
        self.teacher_ap = load_per_class_metric(teacher_ap, "teacher_ap", percent=teacher_ap_percent)
        self.metric_key = metric_key
        self.updater: KDWeightUpdater | None = None
        self._calls = 0

    @property
    def calls(self) -> int:
        return self.updater.calls if self.updater is not None else self._calls

    @staticmethod
    def find_criterion(model: nn.Module) -> WeightedSubsetKDLoss:
        """The model's only :class:`WeightedSubsetKDLoss` (a model wrapper is unwrapped)."""
        if is_model_wrapper(model):
            model = model.module
        found = [m for m in model.modules() if isinstance(m, WeightedSubsetKDLoss)]
        if len(found) != 1:
            raise ValueError(f"RSKDWeightHook needs exactly one WeightedSubsetKDLoss in the model (the head's "
                             f"loss), found {len(found)}")
        return found[0]

    def before_train(self, runner: Any) -> None:
        self.updater = KDWeightUpdater(self.find_criterion(runner.model), teacher_metric=self.teacher_ap)
        self.updater.calls = self._calls

    def after_val_epoch(self, runner: Any, metrics: Mapping[str, Any] | None = None) -> None:
        if self.updater is None:
            return
        metrics = metrics or {}
        if self.metric_key not in metrics:
            raise ValueError(
                f"RSKDWeightHook: the validation metrics have no {self.metric_key!r} (got {sorted(metrics)}); add "
                f"dict(type='AveragePrecision', average=None) to val_evaluator, or set metric_key"
            )
        student_ap = load_per_class_metric(metrics[self.metric_key], self.metric_key, percent=True)
        weights = self.updater.step(student_ap)
        runner.logger.info(f"RSKD: KD weights after validation {self.updater.calls}: "
                           f"{[round(float(w), 4) for w in weights]}")
        runner.message_hub.update_scalar("val/rskd_kd_weight_mean", float(weights.mean()))

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        checkpoint["rskd"] = {"calls": self.calls, "teacher_ap": self.teacher_ap.tolist()}

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        self._calls = int(checkpoint.get("rskd", {}).get("calls", 0))
        if self.updater is not None:
            self.updater.calls = self._calls
