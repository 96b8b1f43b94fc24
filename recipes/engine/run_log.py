"""What a run reports while it trains: the rank-0 progress bar, ``metrics.jsonl`` and TensorBoard."""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from recipes.engine.checkpoints import json_default
from rskd_loss.fileio import atomic_write_text


def progress(iterable: Iterable, enabled: bool, desc: str) -> Iterable:
    """A tqdm progress bar on rank 0 when stderr is a terminal (never in logs or CI); else the iterable."""
    if not (enabled and sys.stderr.isatty()):
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


class TensorBoard:
    """Per-epoch scalars to TensorBoard when the ``tensorboard`` package is installed (rank 0 only)."""

    def __init__(self, out_dir: str | os.PathLike | None) -> None:
        self.writer = None
        if out_dir is None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # optional: metrics.jsonl always has the same numbers
            return
        self.writer = SummaryWriter(log_dir=os.path.join(out_dir, "tensorboard"))

    def log(self, line: dict, epoch: int) -> None:
        if self.writer is None:
            return
        for key in ("train_loss", "val_loss", "lr"):
            self.writer.add_scalar(key, line[key], epoch)
        for group, value in line["val_map"].items():
            if value == value:  # not NaN
                self.writer.add_scalar(f"val_map/{group}", value, epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True, default=json_default) + "\n")


def truncate_metrics(path: Path, before_epoch: int) -> None:
    """Keep the complete metrics.jsonl lines of epochs < ``before_epoch`` (a resumed run rewrites the rest)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["epoch"] < before_epoch:
                keep.append(line)
        except (ValueError, KeyError):  # a line cut by a kill
            pass
    atomic_write_text(path, "".join(x + "\n" for x in keep))
