"""One task per method: what a run of that method adds to the shared loop of :mod:`recipes.engine.trainer`.

A task builds its model (and the criterion's set-up that depends on it), chooses its view of the data
(training rows and label columns), runs the model on a batch, computes the loss, and does its
epoch-end work. The trainer owns everything else and never asks which method it runs:

* :class:`SupervisedTask`: a criterion of ``rskd_loss.baselines`` on every label column (the
  "baseline" stage: ERM, RS, RW, focal, LDAM, DB).
* :class:`TeacherTask`: subset ``k`` of a partition, trained on that subset's view of the training
  data (``Partition.teacher_view``); writes the partition beside the subsets' run folders. Cross-fitted
  (``method.crossfit_k``): the view of the training images minus part ``method.crossfit_part``.
  ``method.teacher_init='erm'``: the backbone starts from the ERM run's ``best.pt``, the head new.
* :class:`OLTRTask`: OLTR stage 1 (plain features), or stage 2 (memory features and the centroids of
  the criterion, initialised from stage 1's class-mean features).
* :class:`StudentTask`: RSKD around another task (supervised or OLTR): ``WeightedSubsetKDLoss``
  around its criterion, teacher logits from a bank or from the teachers online, Eq. 3 after every
  validation (:class:`rskd_loss.workflow.KDWeightUpdater`).

:func:`make_task` is the only code that reads ``method.stage``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recipes.config import ConfigError
from recipes.data.folds import make_dataset, make_loader
from recipes.data.views import View
from recipes.distributed import mean_over_ranks
from recipes.engine.predict import predict
from recipes.engine.teacher_sources import (
    OnlineTeachers,
    bank_teachers,
    check_same_data,
    crossfit_positions,
    load_teachers,
    make_partition,
    rows_sha256,
)
from recipes.engine.trunk_cache import check_same_trunk
from recipes.models.backbones import build_model
from rskd_loss import WeightedSubsetKDLoss
from rskd_loss.baselines import COUNT_CRITERIA, build_criterion
from rskd_loss.baselines.oltr import OLTR_CENTROID_SGD
from rskd_loss.metrics import average_precision_per_class
from rskd_loss.workflow import KDWeightUpdater


@dataclass
class RunContext:
    """What a task may read while it sets itself up: the config, the fold's data and the process."""

    cfg: Mapping
    data: Mapping
    device: torch.device
    rank: int
    world: int
    amp: bool
    augment: nn.Module
    out_dir: Path
    resuming: bool
    val_loader: Any = None  # the run's validation loader (set by the trainer before the task builds)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def eval_loader(self, dataset) -> Any:
        return make_loader(self.cfg, dataset, train=False, world=self.world, rank=self.rank)


def counts_for_criterion(counts: np.ndarray, names: list[str], criterion: str) -> np.ndarray:
    """Training counts for a count-based criterion; a class with no training positive counts as 1.

    RW, LDAM and DB divide by the count. A class without any positive in a fold's training part (RFMiD
    has several) would make them undefined; it is given a count of 1 (the rarest possible), with a
    warning that names it, instead of stopping the run.
    """
    zero = [names[i] for i in np.flatnonzero(counts == 0)]
    if zero and criterion.lower() in COUNT_CRITERIA:
        print(f"warning: {len(zero)} class(es) have no training positive, counted as 1 for the {criterion} "
              f"criterion: {zero[:10]}", file=sys.stderr)
    return np.maximum(counts, 1)


class SupervisedTask:
    """``criterion(logits, y)`` on the model's logits; label ``columns`` of the data set (None: all),
    trained on the fold's training rows ``train_positions`` (None: all)."""

    def __init__(self, name: str, criterion: nn.Module, columns: list[int] | None = None,
                 train_positions: np.ndarray | None = None, model_cfg: Mapping | None = None,
                 init_from: str | None = None) -> None:
        self.name, self.criterion = name, criterion
        self.columns, self.train_positions = columns, train_positions
        self.model_cfg, self.init_from = model_cfg, init_from

    def build(self, ctx: RunContext) -> nn.Module:
        """The model on ``ctx.device``; its weights from ``init_from``'s ``best.pt`` on a fresh start."""
        model = build_model(self.model_cfg, self.num_outputs(ctx), image_size=ctx.cfg["data"]["image_size"],
                            **self.model_options())
        if self.init_from and not ctx.resuming:
            ckpt = Path(self.init_from) / "best.pt"
            state = check_same_data(ckpt, ctx.data)
            check_same_trunk(ckpt, state, self.model_cfg, "the run of method.init_from and this one")
            model.load_state_dict(state["model"])
        return model.to(ctx.device)

    def num_outputs(self, ctx: RunContext) -> int:
        return len(self.columns) if self.columns is not None else len(ctx.data["class_names"])

    def model_options(self) -> dict:
        return {}

    def forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": model(x)}

    def loss_inputs(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keyword arguments of the criterion besides (logits, targets)."""
        return {}

    def loss(self, out: Mapping[str, torch.Tensor], y: torch.Tensor, idx: torch.Tensor,
             x: torch.Tensor) -> torch.Tensor:
        return self.criterion(out["logits"].float(), y, **self.loss_inputs(out))

    def criterion_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        if params:
            raise ValueError(f"{type(self.criterion).__name__} has trainable parameters; only OLTR's "
                             f"criterion has an optimiser of its own")
        return None

    def start_epoch(self, epoch: int, epochs: int) -> None:
        if hasattr(self.criterion, "set_epoch"):  # deferred re-weighting (DRW)
            self.criterion.set_epoch(epoch)

    def end_epoch(self, ctx: RunContext, val_ap: np.ndarray) -> dict[str, Any]:
        return {}

    def result(self) -> dict[str, Any]:
        return {}


class TeacherTask(SupervisedTask):
    """Subset ``subset`` of ``partition``: its label columns, on its view of the training rows.

    ``backbone_from``: a run folder (the fold's ERM run) whose ``best.pt`` backbone starts the teacher
    on a fresh start; the head, of the subset's width, stays newly initialised. ``crossfit``: the
    record of a cross-fitted teacher (K, its part, the SHA-256 of the CSV rows it left out), written
    to ``result.json`` so the student can check it.
    """

    def __init__(self, name: str, criterion: nn.Module, partition, subset: int, view, model_cfg: Mapping,
                 backbone_from: str | None = None, crossfit: dict | None = None) -> None:
        super().__init__(name, criterion, list(view.columns), view.sample_indices, model_cfg)
        self.partition, self.subset = partition, subset
        self.backbone_from, self.crossfit = backbone_from, crossfit

    def build(self, ctx: RunContext) -> nn.Module:
        if ctx.main:  # the students read it beside the subsets' run folders
            self.partition.to_json(ctx.out_dir.parent / "partition.json")
        model = super().build(ctx)
        if self.backbone_from and not ctx.resuming:
            self._load_backbone(model, ctx)
        return model

    def _load_backbone(self, model: nn.Module, ctx: RunContext) -> None:
        ckpt, model_name = Path(self.backbone_from) / "best.pt", f"model.name={ctx.cfg['model']['name']!r}"
        saved = check_same_data(ckpt, ctx.data)
        check_same_trunk(ckpt, saved, self.model_cfg, "the ERM run and its teachers")
        backbone = {k: v for k, v in saved["model"].items() if k.startswith("backbone.")}
        try:
            missing, unexpected = model.load_state_dict(backbone, strict=False)
        except RuntimeError as exc:
            raise ConfigError(f"{ckpt}: its backbone does not fit this teacher's model ({model_name}): "
                              f"{' '.join(str(exc).split())[:300]}; the ERM run and the teachers need the same "
                              f"model settings") from None
        not_head = [k for k in missing if not k.startswith("head.")]
        if not backbone or not_head or unexpected:
            raise ConfigError(f"{ckpt}: expected the backbone of this teacher's model ({model_name}), got "
                              f"{len(backbone)} backbone tensors, missing {not_head[:3]}, unexpected {unexpected[:3]}")

    def result(self) -> dict[str, Any]:
        return {"crossfit": self.crossfit} if self.crossfit else {}


class OLTRTask(SupervisedTask):
    """OLTR stage ``stage`` (1 or 2) with :class:`rskd_loss.baselines.oltr.OLTRLoss` as ``criterion``.

    Stage 2 starts from stage 1's ``best.pt`` (``init_from``): the criterion's centroids are the class
    means of stage 1's direct features on the training images, the head becomes the stage-2 head
    (memory features, attention), and the centroids get their own SGD (official OLTR code's values,
    ``OLTR_CENTROID_SGD``).
    """

    def __init__(self, name: str, criterion: nn.Module, stage: int, model_cfg: Mapping,
                 init_from: str | None = None) -> None:
        super().__init__(name, criterion, model_cfg=model_cfg, init_from=init_from)
        self.stage = stage

    def model_options(self) -> dict:
        return {"oltr_stage": 1}

    def build(self, ctx: RunContext) -> nn.Module:
        model = super().build(ctx)
        if self.stage == 2:
            if self.init_from and not ctx.resuming:  # centroids = class means of stage-1 direct features
                plain = ctx.eval_loader(View(make_dataset(ctx.cfg, ctx.data, "train")))
                feats = predict(model, plain, ctx.device, ctx.augment, ctx.amp, ctx.world,
                                forward=lambda m, x: self._outputs(m(x)))
                self.criterion.init_centroids(torch.from_numpy(feats["features"]),
                                              torch.from_numpy(feats["targets"]))
            model.head = model.head.to_stage2(feature_size=model.feature_size)
        return model.to(ctx.device)

    @staticmethod
    def _outputs(out: Any) -> dict[str, torch.Tensor]:
        return {"logits": out.logits, "features": out.features}

    def forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._outputs(model(x, centroids=self.criterion.centroids) if self.stage == 2 else model(x))

    def loss_inputs(self, out: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"features": out["features"].float()}

    def criterion_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        return torch.optim.SGD(params, **OLTR_CENTROID_SGD) if params else None


TeacherLogits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StudentTask:
    """RSKD around ``inner``: ``kd`` (a :class:`WeightedSubsetKDLoss` around ``inner.criterion``) on the
    inner task's outputs and the teachers' logits of the batch (``teacher_logits(x, idx)``).

    :meth:`build` loads the teachers, measures their per-class validation AP once, and (``mode``
    "bank") builds or reuses the bank of their training-image logits; after every validation the KD
    weights follow Eq. 3 (``dynamic_weights``). In the first and last epoch the task also measures the
    mean |dL/dz| per class of the base loss and of the KD term (logged as ``grad_base`` / ``grad_kd``).
    """

    def __init__(self, inner: SupervisedTask, kd: WeightedSubsetKDLoss, *, mode: str = "bank",
                 dynamic_weights: bool = True, teacher_logits: TeacherLogits | None = None) -> None:
        self.inner, self.kd, self.mode, self.dynamic_weights = inner, kd, mode, dynamic_weights
        self.teacher_logits, self.updater, self.teachers = teacher_logits, None, None
        self.name, self.columns, self.train_positions = inner.name, inner.columns, inner.train_positions
        self.measure_grads, self.grad_sum, self.grad_count = False, None, 0

    @property
    def criterion(self) -> nn.Module:
        return self.kd

    def build(self, ctx: RunContext) -> nn.Module:
        model = self.inner.build(ctx)
        teachers, partition, hashes = load_teachers(ctx.cfg, ctx.data, ctx.device)
        val = predict(teachers, ctx.val_loader, ctx.device, ctx.augment, ctx.amp, ctx.world)
        self.updater = KDWeightUpdater(self.kd, average_precision_per_class(val["logits"], val["targets"]))
        self.teachers = teachers  # frozen, in eval mode (SubsetTeachers)
        self.teacher_logits = (bank_teachers(ctx, teachers, partition, hashes) if self.mode == "bank"
                               else OnlineTeachers(teachers, ctx.amp))
        return model

    def forward(self, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.inner.forward(model, x)

    def loss(self, out: Mapping[str, torch.Tensor], y: torch.Tensor, idx: torch.Tensor,
             x: torch.Tensor) -> torch.Tensor:
        logits = out["logits"].float()
        parts = self.kd(logits, y, self.teacher_logits(x, idx), return_parts=True, **self.inner.loss_inputs(out))
        if self.measure_grads:  # |dL/dz| per class of the base loss and of the KD term (loss-level only)
            g_base, g_kd = (torch.autograd.grad(p, logits, retain_graph=True)[0]
                            for p in (parts.base_loss, parts.kd_loss))
            self.grad_sum += torch.stack((g_base.abs().sum(0), g_kd.abs().sum(0))).double()
            self.grad_count += len(y)
        return parts.loss

    def criterion_optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer | None:
        return self.inner.criterion_optimizer(params)

    def start_epoch(self, epoch: int, epochs: int) -> None:
        self.inner.start_epoch(epoch, epochs)
        # a diagnostic kept off the other epochs' steps (after a mid-epoch resume: the batches since)
        self.measure_grads = epoch in (0, epochs - 1)
        self.grad_sum, self.grad_count = torch.zeros(2, self.kd.num_classes, dtype=torch.float64), 0

    def end_epoch(self, ctx: RunContext, val_ap: np.ndarray) -> dict[str, Any]:
        line: dict[str, Any] = {}
        if self.dynamic_weights:
            line["kd_weights"] = self.updater.step(val_ap).tolist()
        if self.measure_grads:
            mean = mean_over_ranks((self.grad_sum / max(self.grad_count, 1)).to(ctx.device), ctx.world)
            line["grad_base"], line["grad_kd"] = mean.tolist()
        return line

    def result(self) -> dict[str, Any]:
        ap = self.updater.teacher_metric.numpy()
        return {"teacher_val_ap": [None if not np.isfinite(v) else float(v) for v in ap]}


Task = SupervisedTask | StudentTask


def make_task(cfg: Mapping, data: Mapping, seed: int) -> Task:
    """The task of ``method.stage`` (baseline | teacher | student), built from the config and the fold."""
    meth = cfg["method"]
    stage, names, counts = meth["stage"], data["class_names"], data["train_counts"]
    if stage == "teacher":
        return _teacher_task(cfg, data, seed)
    ccfg = dict(meth["criterion"])
    oltr = meth["oltr_stage"]
    if oltr:
        with torch.random.fork_rng(devices=[]):  # a throwaway model, for its feature width only
            probe = build_model({**cfg["model"], "pretrained": False}, 1, oltr_stage=1,
                                image_size=cfg["data"]["image_size"])
        ccfg.setdefault("feat_dim", probe.head.feat_dim)
        ccfg.setdefault("stage", oltr)
    base = _criterion({**meth, "criterion": ccfg}, counts, list(names), len(data["train_targets"]))
    inner = (OLTRTask(meth["name"], base, oltr, cfg["model"], meth["init_from"]) if oltr else
             SupervisedTask(meth["name"], base, model_cfg=cfg["model"], init_from=meth["init_from"]))
    if stage == "baseline":
        return inner
    kd = meth["kd"]
    loss = WeightedSubsetKDLoss(base, len(names), temperature=kd["temperature"], delta=kd["delta"],
                                order=kd["order"], kd_weight=kd["kd_weight"], scale_by_t2=kd["scale_by_t2"])
    return StudentTask(inner, loss, mode=meth["teacher_mode"], dynamic_weights=kd["dynamic_weights"])


def _teacher_task(cfg: Mapping, data: Mapping, seed: int) -> TeacherTask:
    """The teacher of subset ``method.subset``. The partition is always that of the fold's whole training
    counts (the student's); a cross-fitted teacher's view is taken on the training rows minus its part."""
    meth, names = cfg["method"], data["class_names"]
    partition = make_partition(cfg, data["train_counts"], names)
    if meth["subset"] >= partition.num_subsets:
        raise ConfigError(f"method.subset={meth['subset']} but the partition has {partition.num_subsets} "
                          f"subsets {partition.names}")
    parts = crossfit_positions(cfg, data)
    kept = np.arange(len(data["train_targets"])) if parts is None else np.setdiff1d(
        np.arange(len(data["train_targets"])), parts[meth["crossfit_part"]])
    view = partition.teacher_view(meth["subset"], data["train_targets"][kept], images=meth["teacher_images"],
                                  seed=seed)
    view = replace(view, sample_indices=kept[view.sample_indices])  # positions among the fold's training rows
    crossfit = None if parts is None else {
        "k": meth["crossfit_k"], "part": meth["crossfit_part"], "left_out": int(len(parts[meth["crossfit_part"]])),
        "left_out_sha256": rows_sha256(data["rows"]["train"][parts[meth["crossfit_part"]]])}
    columns = list(view.columns)
    counts = data["train_targets"][kept].sum(0)
    base = _criterion(meth, counts[columns], [names[c] for c in columns], len(view.sample_indices))
    return TeacherTask(meth["name"], base, partition, meth["subset"], view, cfg["model"],
                       backbone_from=meth["init_from"] if meth["teacher_init"] == "erm" else None, crossfit=crossfit)


def _criterion(meth: Mapping, counts: np.ndarray, names: list[str], num_images: int) -> nn.Module:
    ccfg = meth["criterion"]
    return build_criterion(ccfg, class_counts=counts_for_criterion(np.asarray(counts), names, ccfg["name"]),
                           num_images=num_images)
