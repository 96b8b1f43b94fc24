"""The optimiser and learning-rate schedule of a run (``schedule.optimizer``, ``schedule.kind``).

* ``plateau`` (default, the paper's Section 3.1): ``torch.optim.lr_scheduler.ReduceLROnPlateau`` on the
  validation loss, stepped once per epoch. The loss is the run's own BCE of its validation logits, so
  two methods whose logits differ in scale (a DB or focal criterion) get their drops at different epochs.
* ``cosine``: :class:`HalfCosineLR`, stepped once per optimisation step, a function of the step index
  alone: every method of a benchmark trains at the same rate at every step, whatever its validation says.

Both wrap into :class:`RunSchedule`, which the trainer calls after each step and after each epoch; its
``state_dict`` goes into ``last.pt`` (the plateau's exactly as before), so that a resumed run continues
on the same rates.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from recipes.config import ConfigError

__all__ = ["cosine_lr", "HalfCosineLR", "RunSchedule", "make_optimizer", "make_schedule"]


def cosine_lr(step: int, total_steps: int, lr: float, min_lr: float) -> float:
    r"""The learning rate of optimisation step ``step`` (0-based) of ``total_steps``: a half cosine.

    .. math::

        \eta_s = \eta_{min} + (\eta - \eta_{min}) \, \frac{1 + \cos(\pi s / (S - 1))}{2},
        \quad s = 0, \dots, S - 1

    with :math:`\eta` = ``lr``, :math:`\eta_{min}` = ``min_lr``, :math:`S` = ``total_steps``: ``lr`` at
    the first step, ``min_lr`` at the last, no warm-up. This is SGDR's annealing (Loshchilov & Hutter,
    ICLR 2017, Eq. 5; ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max = S - 1``) in closed
    form, computed as :math:`w \eta + (1 - w) \eta_{min}` with :math:`w = (1 + \cos)/2`, so that the first
    rate is exactly ``lr`` and the last exactly ``min_lr`` (``cos(pi)`` is exactly -1 in floating point).
    A step past the last keeps ``min_lr``; a run of one step (or none) keeps ``lr``.
    """
    if total_steps <= 1:
        return lr
    w = (1.0 + math.cos(math.pi * min(step, total_steps - 1) / (total_steps - 1))) / 2.0
    return w * lr + (1.0 - w) * min_lr


class HalfCosineLR:
    """Sets the optimiser's learning rate to :func:`cosine_lr` of the number of steps taken.

    ``step()`` after each optimisation step; the rate of the next step is then in the optimiser's
    ``param_groups``. The state (steps taken, and the total they run to) is two ints.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, lr: float, min_lr: float) -> None:
        self.optimizer, self.total_steps, self.lr, self.min_lr = optimizer, total_steps, lr, min_lr
        self.steps_done = 0
        self._apply()

    def _apply(self) -> None:
        rate = cosine_lr(self.steps_done, self.total_steps, self.lr, self.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = rate

    def step(self) -> None:
        self.steps_done += 1
        self._apply()

    def state_dict(self) -> dict[str, int]:
        return {"steps_done": self.steps_done, "total_steps": self.total_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue after ``state["steps_done"]`` steps; refused if the run now has another number of
        steps (another world size or batch size would bend the curve in the middle of the run)."""
        if int(state["total_steps"]) != self.total_steps:
            raise ConfigError(f"--resume: the cosine schedule was saved for {int(state['total_steps'])} steps "
                              f"(schedule.epochs x steps per epoch), this run has {self.total_steps}; resume with "
                              f"the same epochs, batch size, step cap and number of processes")
        self.steps_done = int(state["steps_done"])
        self._apply()


class RunSchedule:
    """The trainer's one handle on either schedule: :meth:`after_step`, :meth:`after_epoch`, state."""

    def __init__(self, kind: str, scheduler: Any) -> None:
        self.kind, self.scheduler = kind, scheduler

    def after_step(self) -> None:
        if self.kind == "cosine":
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.kind == "plateau":
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


def make_optimizer(params: Iterable[torch.nn.Parameter], sched: Mapping[str, Any],
                   device: torch.device) -> torch.optim.Optimizer:
    """Adam (default; the paper's) or SGD with ``schedule.momentum``, both with ``schedule.weight_decay``
    (PyTorch's L2 form: added to the gradient); fused kernels on CUDA, ``foreach`` on CPU."""
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if sched["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=sched["lr"], momentum=sched["momentum"],
                               weight_decay=sched["weight_decay"], **fast)
    return torch.optim.Adam(params, lr=sched["lr"], weight_decay=sched["weight_decay"], **fast)


def make_schedule(optimizer: torch.optim.Optimizer, sched: Mapping[str, Any], steps_per_epoch: int) -> RunSchedule:
    """``schedule.kind`` on ``optimizer``; the cosine spans ``schedule.epochs x steps_per_epoch`` steps."""
    if sched["kind"] == "cosine":
        total = sched["epochs"] * steps_per_epoch
        return RunSchedule("cosine", HalfCosineLR(optimizer, total, sched["lr"], sched["min_lr"]))
    return RunSchedule("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=sched["plateau_factor"], patience=sched["plateau_patience"],
        min_lr=sched["min_lr"]))
