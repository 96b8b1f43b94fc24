"""Run-folder files: checkpoints (atomic, ``weights_only``-loadable), JSON results, the resume rules,
and the fault points the reliability tests kill a run at."""
from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch

from recipes.config import DEFAULTS
from rskd_loss.fileio import atomic_path, atomic_write_text

CHECKPOINT_VERSION = 1


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (``rskd_loss.fileio.atomic_write_text``): never half-written."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, default=json_default))


def json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return x.tolist()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def nan_to_none(values: Iterable[float]) -> list[float | None]:
    return [None if (v is None or not math.isfinite(float(v))) else float(v) for v in values]


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file, fsync, rename. Only tensors and plain values go in, so the
    file loads with ``torch.load(weights_only=True)``. A process killed while writing leaves the old
    file intact and at most a hidden ``.NAME.*.tmp`` beside it (:func:`remove_stale_temporaries`)."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)
        fault_point("save")  # tests: a kill after writing, before the rename (the target is untouched until then)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[str]:
    """Delete the hidden ``.*.tmp`` files a killed writer left in ``folder``; returns their names."""
    if not os.path.isdir(folder):
        return []
    stale = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(".tmp")]
    for name in stale:
        os.unlink(os.path.join(folder, name))
    return stale


_FAULT_COUNTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Fault injection for the reliability tests: ``RSKD_FAULT=NAME:N`` SIGKILLs this process at the
    N-th time (1-based) it passes the point ``NAME`` ("step": before a training step; "save": a
    checkpoint written to its temporary file, not yet renamed); ``RSKD_FAULT=NAME:N:stop`` SIGSTOPs
    it there instead (alive, holding its run folder, until a SIGCONT). Without the variable this does
    nothing."""
    spec = os.environ.get("RSKD_FAULT")
    if not spec:
        return
    target, count, *action = spec.split(":")
    if target != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(count):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGSTOP if action == ["stop"] else signal.SIGKILL)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def plain_config(cfg: Mapping) -> dict:
    """The config as a checkpoint stores it (tuples as lists), for comparing a resumed run's."""
    return json.loads(json.dumps(cfg, default=list))


# keys that may change between a run and its --resume: they do not change what is computed
RESUME_FREE_KEYS = ("run.out_dir", "schedule.epochs", "data.num_workers", "data.eval_batch_size", "data.root",
                    "run.log_every", "run.checkpoint_every", "data.skip_bad_images")


def config_differences(saved: Mapping, current: Mapping, prefix: str = "") -> list[str]:
    """``key (saved X, now Y)`` for every leaf that differs between two configs, except RESUME_FREE_KEYS.

    A key the saved config lacks, whose value now is its default (a key added to ``recipes.config``
    after the checkpoint was written, e.g. ``method.crossfit_k``), is no difference: the run computes
    what it computed before. ``schedule.epochs`` is free only for the plateau schedule: a cosine spans
    the run's epochs, so more of them would change the rates of the steps already taken.
    """
    free = RESUME_FREE_KEYS
    if not prefix and current.get("schedule", {}).get("kind") == "cosine":
        free = tuple(k for k in RESUME_FREE_KEYS if k != "schedule.epochs")
    return _differences(saved, current, prefix, free)


def _differences(saved: Mapping, current: Mapping, prefix: str, free: tuple[str, ...]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(current)):
        where, a, b = f"{prefix}{key}", saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _differences(a, b, where + ".", free)
        elif where not in free and a != b and not (key not in saved and _is_default(where, b)):
            out.append(f"{where} (saved {a!r}, now {b!r})")
    return out


def _is_default(where: str, value: Any) -> bool:
    """Whether ``value`` is the default of the dotted key ``where`` in ``recipes.config.DEFAULTS``."""
    node: Any = DEFAULTS
    for part in where.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return plain_config({"v": node})["v"] == value
