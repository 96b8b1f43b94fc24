"""The training loop every method shares: loaders, optimiser and schedule, AMP, DDP, the finite-loss
check, checkpoints and exact resume, metrics logging and the final test of the best checkpoint.

What differs between methods (model, criterion, data view, loss of a batch, epoch-end work) is a task
(:mod:`recipes.engine.tasks`); the trainer only calls it. Outputs in the run folder: ``metrics.jsonl`` (one
line per epoch), ``last.pt`` (every epoch, and every ``run.checkpoint_every`` steps), ``best.pt``
(best validation mAP; the last epoch with ``schedule.select='last'``), and at the end ``result.json`` (test
metrics of ``best.pt``; head / medium / tail by :mod:`recipes.engine.groups`) and
``predictions.npz`` (its per-image val / test logits), preceded by the run's small, committable record
(``record.json`` + ``record.npz``, :mod:`recipes.engine.run_record`). Everything is written atomically;
checkpoints load with ``weights_only=True``.
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from recipes.data.augment import keyed_uniforms
from recipes.data.folds import make_dataset, make_loader
from recipes.data.views import View
from recipes.distributed import barrier, mean_over_ranks
from recipes.engine.checkpoints import (
    CHECKPOINT_VERSION,
    atomic_torch_save,
    atomic_write_json,
    fault_point,
    load_checkpoint,
    nan_to_none,
    plain_config,
)
from recipes.engine.groups import group_rule, group_scores
from recipes.engine.predict import bce_value, predict
from recipes.engine.run_log import TensorBoard, append_jsonl, progress, truncate_metrics
from recipes.engine.run_record import record_arrays, write_record
from recipes.engine.schedule import make_optimizer, make_schedule
from recipes.engine.tasks import RunContext, Task
from rskd_loss.fileio import atomic_write_bytes
from rskd_loss.metrics import average_precision_per_class
from rskd_loss.validation import value_checks


def train_step(task: Task, model: nn.Module, optimizers: Sequence[torch.optim.Optimizer], x: torch.Tensor,
               y: torch.Tensor, idx: torch.Tensor, *, amp: bool,
               after_backward: Callable[[], None] | None = None) -> torch.Tensor:
    """One optimisation step of ``task`` on an augmented batch; returns the loss (detached).

    The model runs under bf16 autocast when ``amp``; the task's loss is computed in float32 outside it.
    ``after_backward`` runs between backward and the optimiser steps (the trainer averages the
    criterion's gradients over ranks there). ``recipes/benchmark/run_cost.py`` times this same function.
    """
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = task.forward(model, x)
    loss = task.loss(out, y, idx, x)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    for opt in optimizers:
        opt.step()
    return loss.detach()


class Trainer:
    """Trains ``task`` in the run folder ``ctx.out_dir``, continuing from ``saved`` (a ``last.pt``) if given."""

    def __init__(self, cfg: Mapping, ctx: RunContext, task: Task, saved: dict | None = None) -> None:
        self.cfg, self.ctx, self.task = cfg, ctx, task
        self.run_cfg, self.sched = cfg["run"], cfg["schedule"]
        data = ctx.data
        self.columns = task.columns if task.columns is not None else list(range(len(data["class_names"])))
        self.class_names = [data["class_names"][c] for c in self.columns]
        self.class_counts = data["train_counts"][self.columns]
        self.thresholds = tuple(cfg["method"]["partition"]["thresholds"])
        self.groups = group_rule(cfg["method"]["partition"], data["train_counts"])  # the fold's, all classes
        self.channels_last = self.run_cfg["channels_last"] in ("auto", True)  # faster on GPU and, measured, CPU
        self.plain_cfg = plain_config(cfg)
        self._make_loaders()
        torch.manual_seed(self.run_cfg["seed"] + ctx.rank)  # the initialisation does not depend on data preparation
        self.model = self._make_model()
        self.criterion = task.criterion.to(ctx.device)
        self._make_optimizers()
        self.start_epoch, self.start_step, self.best_map = 0, 0, -np.inf
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        if saved is not None:
            self._restore(saved)

    # ---- set-up
    def _make_loaders(self) -> None:
        ctx, cfg, task = self.ctx, self.cfg, self.task
        if cfg["data"]["preload"] and ctx.world > 1:  # rank 0 decodes the cache once; the others then read it
            if ctx.main:
                make_dataset(cfg, ctx.data, "train")
            barrier(ctx.world)
        view = {part: View(make_dataset(cfg, ctx.data, part), task.train_positions if part == "train" else None,
                           task.columns) for part in ("train", "val", "test")}
        targets = ctx.data["train_targets"][:, self.columns]
        if task.train_positions is not None:
            targets = targets[task.train_positions]
        self.num_train = len(targets)
        self.train_loader = make_loader(cfg, view["train"], train=True, world=ctx.world, rank=ctx.rank,
                                        sampler_kind=cfg["method"]["sampler"], targets=targets,
                                        seed=self.run_cfg["seed"])
        self.val_loader, self.test_loader = (ctx.eval_loader(view[p]) for p in ("val", "test"))
        ctx.val_loader = self.val_loader

    def _make_model(self) -> nn.Module:
        model = self.task.build(self.ctx)
        if self.run_cfg["sync_bn"] and self.ctx.world > 1:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _make_optimizers(self) -> None:
        sched, device = self.sched, self.ctx.device
        self.opt = make_optimizer(self.model.parameters(), sched, device)
        self.crit_params = [p for p in self.criterion.parameters() if p.requires_grad]
        self.crit_opt = self.task.criterion_optimizer(self.crit_params)
        self.optimizers = [self.opt] + ([self.crit_opt] if self.crit_opt is not None else [])
        # a cosine spans every step of the run: the epoch's steps as the loop takes them (its step cap)
        steps_per_epoch = min(len(self.train_loader), self.run_cfg["max_steps_per_epoch"] or len(self.train_loader))
        self.schedule = make_schedule(self.opt, sched, steps_per_epoch)
        self.train_model = self.model
        if self.ctx.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if self.run_cfg["compile"]:
            self.train_model = torch.compile(self.train_model)

    # ---- checkpoints
    def state(self, epoch: int, step: int, loss_sum: torch.Tensor) -> dict:
        """Everything a resumed run needs to continue exactly (``step`` batches of ``epoch`` done)."""
        device = self.ctx.device
        return {"version": CHECKPOINT_VERSION, "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "centroid_optimizer": self.crit_opt.state_dict() if self.crit_opt is not None else {},
                "scheduler": self.schedule.state_dict(), "criterion": self.criterion.state_dict(), "epoch": epoch,
                "step": step, "best_map": self.best_map, "loss_sum": loss_sum.detach().double().cpu(),
                "config": self.plain_cfg, "class_names": self.class_names, "data_id": self.ctx.data["data_id"],
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0)}

    def _restore(self, saved: dict) -> None:
        device = self.ctx.device
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        if self.crit_opt is not None:
            self.crit_opt.load_state_dict(saved["centroid_optimizer"])
        self.schedule.load_state_dict(saved["scheduler"])
        self.criterion.load_state_dict(saved["criterion"])
        self.best_map = saved["best_map"]
        if saved.get("step", 0) > 0:  # written in the middle of an epoch
            self.start_epoch, self.start_step = saved["epoch"], saved["step"]
            self.loss_sum = saved["loss_sum"].to(device)
        else:
            self.start_epoch = saved["epoch"] + 1
        torch.set_rng_state(saved["rng_cpu"])
        if device.type == "cuda" and saved["rng_cuda"].numel():
            torch.cuda.set_rng_state(saved["rng_cuda"], device)
        if self.ctx.main:
            truncate_metrics(self.ctx.out_dir / "metrics.jsonl", self.start_epoch)
            print(f"resumed from {self.ctx.out_dir / 'last.pt'} at epoch {self.start_epoch} step "
                  f"{self.start_step}", flush=True)

    # ---- training
    def check_finite(self, first_bad: torch.Tensor, epoch: int) -> None:
        """One host-device synchronisation per ``run.log_every`` steps: stop on a non-finite loss."""
        if self.ctx.world > 1:  # every rank stops together
            torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MAX)
        step = int(first_bad)
        if step >= 0:
            good = self.ctx.out_dir / "last.pt"
            raise FloatingPointError(f"loss is not finite (nan or inf) at epoch {epoch} step {step}; last good "
                                     f"checkpoint: {good if good.is_file() else 'none'} (not overwritten)")

    def _average_criterion_grads(self) -> None:
        """Parameters of the loss are outside DDP: average their gradients over the ranks by hand."""
        for p in self.crit_params:
            if p.grad is not None:
                mean_over_ranks(p.grad, self.ctx.world)

    def train_epoch(self, epoch: int) -> float:
        """One epoch (from ``start_step`` after a mid-epoch resume); returns the mean training loss."""
        ctx, r = self.ctx, self.run_cfg
        steps = self.start_step if epoch == self.start_epoch else 0
        if epoch != self.start_epoch:
            self.loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
        per_rank_batch = self.cfg["data"]["batch_size"]
        self.train_loader.sampler.set_epoch(epoch, start=steps * per_rank_batch)
        self.task.start_epoch(epoch, self.sched["epochs"])
        self.train_model.train()
        first_bad = torch.full((), -1, dtype=torch.int64, device=ctx.device)
        sync = self._average_criterion_grads if ctx.world > 1 and self.crit_params else None
        with value_checks(False):  # the data were checked when read: no per-step check (each one a sync)
            for x, y, idx in progress(self.train_loader, ctx.main, f"{self.task.name} {epoch + 1}"):
                if r["max_steps_per_epoch"] and steps >= r["max_steps_per_epoch"]:
                    break
                fault_point("step")
                x = self._augment(x, epoch, steps, len(idx))
                loss = train_step(self.task, self.train_model, self.optimizers, x, y.to(ctx.device, non_blocking=True),
                                  idx, amp=ctx.amp, after_backward=sync)
                self.schedule.after_step()
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), steps, first_bad)
                self.loss_sum += loss
                steps += 1
                save = r["checkpoint_every"] and steps % r["checkpoint_every"] == 0
                if save or steps % r["log_every"] == 0:
                    self.check_finite(first_bad, epoch)
                if save:
                    # the ranks' mean: every rank resumes from it, and the epoch's mean over ranks stays right
                    mean_sum = mean_over_ranks(self.loss_sum.clone(), ctx.world)
                    if ctx.main:
                        atomic_torch_save(self.state(epoch, steps, mean_sum), ctx.out_dir / "last.pt")
                    barrier(ctx.world)
        self.check_finite(first_bad, epoch)
        self.loss_sum = mean_over_ranks(self.loss_sum, ctx.world)  # the logged loss covers every rank's batches
        return float(self.loss_sum) / max(steps, 1)

    def _augment(self, x: torch.Tensor, epoch: int, steps: int, batch: int) -> torch.Tensor:
        """The uint8 batch on the device, augmented; each sample's random choices keyed by its position
        in the epoch's global sequence (identical for any world size, worker count or resume)."""
        ctx = self.ctx
        positions = (steps * self.cfg["data"]["batch_size"] + np.arange(batch)) * ctx.world + ctx.rank
        rand = keyed_uniforms(self.run_cfg["seed"], epoch, positions, ctx.augment.NUM_RANDOM)
        x = ctx.augment(x.to(ctx.device, non_blocking=True), train=self.cfg["data"]["augment"],
                        rand=rand.to(ctx.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def evaluate(self, loader) -> dict[str, Any]:
        ctx = self.ctx
        pred = predict(self.model, loader, ctx.device, ctx.augment, ctx.amp, ctx.world, forward=self.task.forward)
        ap = average_precision_per_class(pred["logits"], pred["targets"])
        return {"ap": ap, "loss": bce_value(pred["logits"], pred["targets"]), "logits": pred["logits"],
                "targets": pred["targets"]}

    def fit(self) -> None:
        ctx, out_dir = self.ctx, self.ctx.out_dir
        tb = TensorBoard(out_dir if ctx.main else None)
        epochs = self.sched["epochs"]
        for epoch in range(self.start_epoch, epochs):
            t0 = time.time()
            train_loss = self.train_epoch(epoch)
            val = self.evaluate(self.val_loader)
            val_map = group_scores(val["ap"], self.class_counts, self.groups["cuts"])
            self.schedule.after_epoch(val["loss"])
            extra = self.task.end_epoch(ctx, val["ap"])
            score = val_map["total"] if np.isfinite(val_map["total"]) else -np.inf  # NaN: no val positive
            improved = score > self.best_map or not (out_dir / "best.pt").is_file() or self.sched["select"] == "last"
            self.best_map = max(self.best_map, score)
            if ctx.main:
                line = {"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_map": val_map,
                        "lr": self.opt.param_groups[0]["lr"], "seconds": time.time() - t0, **extra}
                append_jsonl(out_dir / "metrics.jsonl", line)
                state = self.state(epoch, 0, self.loss_sum)
                if improved:  # best.pt before last.pt: a kill in between redoes this epoch, identically
                    atomic_torch_save(state, out_dir / "best.pt")
                atomic_torch_save(state, out_dir / "last.pt")
                tb.log(line, epoch)
                print(f"[{self.task.name}] epoch {epoch + 1}/{epochs} loss {train_loss:.4f} val loss "
                      f"{val['loss']:.4f} val mAP {100 * val_map['total']:.2f} ({line['seconds']:.1f}s)", flush=True)
            barrier(ctx.world)
        tb.close()

    # ---- test
    def test(self, info: Mapping[str, Any], started: float, command: Sequence[str] | None = None) -> dict:
        """Test (and validation) metrics of ``best.pt``, written to ``result.json`` with ``info``, the
        task's own entries and the seconds since ``started``; per-image logits to ``predictions.npz``; the
        run's record (with ``command``) before ``result.json``, so that every finished run has one.
        ``select`` says which rule chose the tested epoch (``schedule.select``), ``groups`` which rule and
        cuts gave head / medium / tail (:func:`recipes.engine.groups.group_rule`)."""
        ctx, out_dir = self.ctx, self.ctx.out_dir
        best = load_checkpoint(out_dir / "best.pt")
        self.model.load_state_dict(best["model"])
        self.criterion.load_state_dict(best["criterion"])  # a criterion's parameters belong to the best model
        parts = {"test": self.evaluate(self.test_loader), "val": self.evaluate(self.val_loader)}
        result = {**info, "class_names": self.class_names, "classes": self.columns,
                  "train_class_counts": self.class_counts.tolist(), "thresholds": list(self.thresholds),
                  "epochs": self.sched["epochs"], "best_epoch": best["epoch"], "select": self.sched["select"],
                  "groups": self.groups, "world_size": ctx.world,
                  "device": str(ctx.device), **self.task.result(), "seconds": time.time() - started}
        for part, res in parts.items():
            groups = group_scores(res["ap"], self.class_counts, self.groups["cuts"])
            result[part] = {"ap": nan_to_none(res["ap"]),
                            "map": {k: (None if v != v else v) for k, v in groups.items()}}
        if ctx.main:
            self._write_predictions(parts)
            rows = self.ctx.data["rows"]
            arrays = record_arrays(self.columns, {p: {**res, "rows": rows[p]} for p, res in parts.items()})
            write_record(out_dir, result, arrays, self.plain_cfg, command=command, started=started, ended=time.time())
            atomic_write_json(out_dir / "result.json", result)
        barrier(ctx.world)
        return result

    def _write_predictions(self, parts: Mapping[str, dict]) -> None:
        """Per-image logits, targets and CSV rows of the best model (pooled over folds by the evidence)."""
        arrays: dict[str, np.ndarray] = {"classes": np.asarray(self.columns)}
        for part, res in parts.items():
            arrays.update({f"{part}_logits": res["logits"], f"{part}_targets": res["targets"],
                           f"{part}_rows": self.ctx.data["rows"][part]})
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write_bytes(self.ctx.out_dir / "predictions.npz", buf.getvalue())

