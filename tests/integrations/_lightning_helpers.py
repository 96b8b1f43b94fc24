"""A tiny Lightning student on random learnable data, shared by tests/test_integration_lightning.py and
its DDP worker script (tests/_lightning_ddp_worker.py)."""
from __future__ import annotations

import os

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rskd_loss import IndexedDataset, Partition, TeacherLogitBank, WeightedSubsetKDLoss

D, C = 8, 4
TEACHER_AP = [0.95, 0.9, 0.9, 0.85]


def make_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, C, generator=torch.Generator().manual_seed(123))
    x = torch.randn(n, D, generator=g)
    return x, (x @ w + 0.5 * torch.randn(n, C, generator=g) > 0).float()


def make_bank(path: str | os.PathLike, n: int) -> TeacherLogitBank:
    part = Partition([[0, 1], [2, 3]], names=["a", "b"], num_classes=C)
    logits = torch.randn(n, C, generator=torch.Generator().manual_seed(7)) * 3
    return TeacherLogitBank.write(path, logits, class_names=[str(c) for c in range(C)], partition=part)


class Student(pl.LightningModule):
    """``self.criterion`` and ``validation_step -> {"logits", "targets", "indices"}``: what the callback reads."""

    def __init__(self, bank: TeacherLogitBank, with_indices: bool = False) -> None:
        super().__init__()
        self.net = nn.Linear(D, C)
        self.criterion = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=C)
        self.bank = bank
        self.with_indices = with_indices
        self.val_epochs: list[dict[str, torch.Tensor]] = []   # for the tests only
        self._val: list[dict[str, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y, idx = batch
        return self.criterion(self.net(x), y, self.bank[idx].to(self.device))

    def validation_step(self, batch, batch_idx):
        x, y, idx = batch
        out = {"logits": self.net(x), "targets": y}
        if self.with_indices:
            out["indices"] = idx
        self._val.append({k: v.detach().clone() for k, v in {**out, "indices": idx}.items()})
        return out

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self.val_epochs.append({k: torch.cat([b[k] for b in self._val]) for k in self._val[0]})
        self._val = []

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)


def loaders(n_train: int = 64, n_val: int = 48, batch_size: int = 16):
    x, y = make_data(n_train, 0)
    xv, yv = make_data(n_val, 1)
    train = DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=batch_size, shuffle=True)
    val = DataLoader(IndexedDataset(TensorDataset(xv, yv)), batch_size=batch_size)
    return train, val


def trainer(callbacks, **kwargs) -> pl.Trainer:
    opts = dict(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False)
    opts.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **opts)
