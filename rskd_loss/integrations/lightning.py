"""Eq. 3 after every validation of a Lightning ``Trainer``: :class:`RSKDWeightCallback`.

Needs ``lightning`` (``pip install 'rskd_loss[lightning]'``; written against Lightning 2.6, the
``lightning.pytorch`` namespace; the separate ``pytorch_lightning`` package has its own ``Callback``
class and is not supported).

What the LightningModule provides (two lines):

* the criterion, a :class:`~rskd_loss.WeightedSubsetKDLoss`, as an attribute (default name
  ``criterion``), so it is a submodule: its per-class weights (a buffer) are saved in every
  checkpoint and moved with the module;
* ``validation_step`` returns ``{"logits": (B, C), "targets": (B, C)}`` (optionally ``"indices"``:
  (B,) sample indices, so that samples a ``DistributedSampler`` repeats to even out the ranks are
  counted once).

Example (a complete run on random data is in ``tests/test_integration_lightning.py``)::

    import lightning as L
    from rskd_loss.integrations.lightning import RSKDWeightCallback

    class Student(L.LightningModule):
        def __init__(self, bank):
            super().__init__()
            self.net = nn.Linear(16, 6)
            self.criterion = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=6)
            self.bank = bank                                      # a TeacherLogitBank
        def training_step(self, batch, batch_idx):
            x, y, idx = batch                                     # IndexedDataset items
            return self.criterion(self.net(x), y, self.bank[idx].to(self.device))
        def validation_step(self, batch, batch_idx):
            x, y = batch
            return {"logits": self.net(x), "targets": y}
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-2)

    trainer = L.Trainer(max_epochs=10, callbacks=[RSKDWeightCallback(teacher_ap="teacher_ap.json")])
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from ..kd import WeightedSubsetKDLoss
from ..workflow import KDWeightUpdater
from .common import first_per_index, gather_rows, load_per_class_metric

__all__ = ["RSKDWeightCallback"]


class RSKDWeightCallback(pl.Callback):
    """Set the criterion's per-class KD weights (Eq. 3) from the student's validation AP, every validation.

    During ``trainer.fit`` (not the sanity check, not a separate ``trainer.validate``) the callback
    collects ``logits`` and ``targets`` from what ``validation_step`` returns on the first
    validation loader, gathers them from every process (``torch.distributed`` all_gather, ranks in
    order, uneven sizes allowed), computes the student's per-class AP
    (:func:`rskd_loss.metrics.average_precision_per_class`, fractions) and applies Eq. 3 through a
    :class:`~rskd_loss.KDWeightUpdater`. Rank 0's weights are then broadcast, so every rank trains
    with identical weights. It logs ``rskd/kd_weight_mean``.

    Args:
        teacher_ap: the teachers' per-class AP (C,) on the same validation images, fixed for the run:
            a sequence / array / tensor, or a ``.json`` / ``.npy`` / ``.txt`` file
            (:func:`~rskd_loss.integrations.load_per_class_metric`), as fractions (e.g. from
            :func:`rskd_loss.teacher_average_precision`); ``teacher_ap_percent=True`` divides by 100.
        criterion: name of the LightningModule's attribute holding the :class:`WeightedSubsetKDLoss`.
        logits_key, targets_key, indices_key: keys of ``validation_step``'s returned dict
            (``indices_key`` is optional in the dict).

    Example:
        >>> cb = RSKDWeightCallback(teacher_ap=[0.9, 0.8, 0.4])
        >>> cb.calls
        0
    """

    def __init__(self, teacher_ap: object, *, criterion: str = "criterion", logits_key: str = "logits",
                 targets_key: str = "targets", indices_key: str = "indices",
                 teacher_ap_percent: bool = False) -> None:
        super().__init__()
        self.teacher_ap = load_per_class_metric(teacher_ap, "teacher_ap", percent=teacher_ap_percent)
        self.criterion_attr = criterion
        self.keys = (logits_key, targets_key, indices_key)
        self.updater: KDWeightUpdater | None = None
        self._calls = 0
        self._rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    @property
    def calls(self) -> int:
        """How many times Eq. 3 was applied (restored from a checkpoint)."""
        return self.updater.calls if self.updater is not None else self._calls

    # ---- wiring
    def _criterion(self, pl_module: pl.LightningModule) -> WeightedSubsetKDLoss:
        crit = getattr(pl_module, self.criterion_attr, None)
        if not isinstance(crit, WeightedSubsetKDLoss):
            raise TypeError(
                f"RSKDWeightCallback needs the LightningModule's attribute {self.criterion_attr!r} to be a "
                f"WeightedSubsetKDLoss (set self.{self.criterion_attr} = WeightedSubsetKDLoss(...) in __init__, "
                f"or pass criterion='<attribute name>'), got {type(crit).__name__}"
            )
        return crit

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        crit = self._criterion(pl_module)
        if self.updater is None or self.updater.criterion is not crit:
            self.updater = KDWeightUpdater(crit, teacher_metric=self.teacher_ap)
            self.updater.calls = self._calls

    def _active(self, trainer: pl.Trainer) -> bool:
        return self.updater is not None and not trainer.sanity_checking and trainer.state.fn == "fit"

    # ---- collect
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active(trainer) or dataloader_idx != 0:
            return
        lk, tk, ik = self.keys
        if not isinstance(outputs, Mapping) or lk not in outputs or tk not in outputs:
            got = sorted(map(str, outputs)) if isinstance(outputs, Mapping) else type(outputs).__name__
            raise ValueError(
                f"RSKDWeightCallback: validation_step must return a dict with {lk!r} (B, C) and {tk!r} (B, C) "
                f"(optionally {ik!r} (B,)), got {got}"
            )
        logits, targets = outputs[lk], outputs[tk]
        if not isinstance(logits, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise TypeError(f"RSKDWeightCallback: {lk!r} and {tk!r} must be tensors, got "
                            f"{type(logits).__name__} and {type(targets).__name__}")
        if logits.dim() != 2 or targets.shape != logits.shape:
            raise ValueError(f"RSKDWeightCallback: {lk!r} and {tk!r} must both be (B, C), got shapes "
                             f"{tuple(logits.shape)} and {tuple(targets.shape)}")
        idx = outputs.get(ik)
        if idx is not None:
            idx = torch.as_tensor(idx, device=logits.device).reshape(-1).long().detach()
            if idx.numel() != logits.shape[0]:
                raise ValueError(f"RSKDWeightCallback: {ik!r} must hold one index per row ({logits.shape[0]}), "
                                 f"got {idx.numel()}")
        self._rows.append((logits.detach().float(), targets.detach().float(), idx))

    # ---- Eq. 3
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer):
            return
        if not self._rows:
            raise ValueError("RSKDWeightCallback: no validation batch reached the callback on this process")
        with_idx = {r[2] is not None for r in self._rows}
        if len(with_idx) != 1:
            raise ValueError(f"RSKDWeightCallback: {self.keys[2]!r} must be in every validation_step output "
                             f"or in none")
        logits = gather_rows(torch.cat([r[0] for r in self._rows]))
        targets = gather_rows(torch.cat([r[1] for r in self._rows]))
        if with_idx == {True}:
            idx = gather_rows(torch.cat([r[2] for r in self._rows]))  # type: ignore[misc]
            _, logits, targets = first_per_index(idx, logits, targets)
        self._rows = []
        assert self.updater is not None
        weights = self.updater.step(logits=logits.cpu(), targets=targets.cpu())
        weights = trainer.strategy.broadcast(weights, src=0)
        self.updater.criterion.set_weights(weights)
        pl_module.log("rskd/kd_weight_mean", float(weights.mean()), rank_zero_only=True)

    # ---- checkpoint
    def state_dict(self) -> dict[str, Any]:
        """The call count and the teachers' AP (the weights are in the module's state_dict: a buffer)."""
        return {"calls": self.calls, "teacher_ap": self.teacher_ap.clone()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._calls = int(state_dict["calls"])
        if self.updater is not None:
            self.updater.calls = self._calls
