"""Training-loop pieces shared by the stages of ``recipes/train.py``: distributed set-up, data views,
on-device batch augmentation, prediction, checkpoints (atomic, ``weights_only``-loadable) and logs."""
from __future__ import annotations

import json
import math
import os
import sys
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from baselines.oltr import OLTROutput
from recipes.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from rskd_loss.fileio import atomic_path, atomic_write_text


# ------------------------------------------------------------------------------- distributed

def setup_distributed(device_cfg: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment; one process when it is absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_cfg == "cuda" or (device_cfg == "auto" and torch.cuda.is_available())
    if device_cfg == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run.device='cuda' but no CUDA device is available; use run.device=cpu")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world, device


def is_main(rank: int) -> bool:
    return rank == 0


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def broadcast_object(obj: Any, world: int) -> Any:
    if world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------------------------- files

def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (``rskd_loss.fileio.atomic_write_text``): never half-written."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, allow_nan=False, default=_json_default))


def _json_default(x: Any) -> Any:
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
    file loads with ``torch.load(weights_only=True)``."""
    with atomic_path(path, fsync=True) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


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
        f.write(json.dumps(obj, sort_keys=True, default=_json_default) + "\n")


# ------------------------------------------------------------------------------------ data

class Preloaded(Dataset):
    """The rows of ``base`` with their images decoded once, resized to ``size`` x ``size``, kept as uint8.

    For small data sets (the synthetic benchmark, the CPU demo): an epoch then costs no decoding. The
    decoded images of the whole CSV are cached in ``cache_file`` (a ``.npy`` written atomically), so
    every later run on the same CSV and size, in any process, skips decoding too. Items are
    ``(uint8 (3, size, size), target, index)``; augmentation runs per batch on the device
    (:class:`BatchAugment`).
    """

    def __init__(self, base: Any, size: int, cache_file: str | os.PathLike) -> None:
        images = _decoded_images(base, size, cache_file)
        rows = np.asarray(base.indices, dtype=np.int64)
        self.images = torch.from_numpy(np.ascontiguousarray(images[rows]))
        self.targets = torch.from_numpy(np.asarray(base.targets, dtype=np.float32))
        self.indices = torch.from_numpy(rows.copy())

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        return self.images[i], self.targets[i], int(self.indices[i])


def _decoded_images(base: Any, size: int, cache_file: str | os.PathLike) -> np.ndarray:
    """(num CSV rows, 3, size, size) uint8 images of every row of ``base``'s CSV, from or into the cache."""
    if os.path.isfile(cache_file):
        return np.load(cache_file, mmap_mode="r")
    from torchvision.transforms import v2

    from recipes.data import MultiLabelCSVDataset

    resize = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    everything = MultiLabelCSVDataset(base.csv_path, base.image_dir, image_suffix=base.image_suffix,
                                      transform=resize, empty_classes="ignore")
    out = np.empty((len(everything), 3, size, size), dtype=np.uint8)
    for i in range(len(everything)):
        img, _, row = everything[i]
        out[row] = np.asarray(img)
    with atomic_path(cache_file) as tmp, open(tmp, "xb") as f:
        np.save(f, out)
    return out


class View(Dataset):
    """Rows ``positions`` of ``base`` with only target ``columns`` (a teacher's view of the data)."""

    def __init__(self, base: Dataset, positions: Sequence[int] | None = None,
                 columns: Sequence[int] | None = None) -> None:
        self.base = base
        self.positions = None if positions is None else np.asarray(positions, dtype=np.int64)
        self.columns = None if columns is None else torch.as_tensor(list(columns), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.base) if self.positions is None else len(self.positions)

    def __getitem__(self, i: int):
        img, y, idx = self.base[int(i) if self.positions is None else int(self.positions[i])]
        return img, (y if self.columns is None else y[self.columns]), idx


class BatchAugment(nn.Module):
    """uint8 (B, 3, H, W) on the device -> float, augmented (train) and ImageNet-normalised.

    Training: per-sample horizontal and vertical flips (p = 0.5 each; left and right eyes are mirror
    images) and brightness / contrast jitter of +-20 % (the mild colour jitter of
    ``recipes/data/transforms.py``). Already-float inputs (the streaming path, augmented on the CPU by
    ``train_transform``) pass through unchanged.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        x = x.float().div_(255.0)
        if train:
            b = x.shape[0]
            rand = torch.rand(b, 4, device=x.device, generator=generator)
            x = torch.where((rand[:, 0] < 0.5).view(b, 1, 1, 1), x.flip(3), x)
            x = torch.where((rand[:, 1] < 0.5).view(b, 1, 1, 1), x.flip(2), x)
            brightness = (0.8 + 0.4 * rand[:, 2]).view(b, 1, 1, 1)
            contrast = (0.8 + 0.4 * rand[:, 3]).view(b, 1, 1, 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x * brightness - mean) * contrast + mean).clamp_(0.0, 1.0)
        return (x - self.mean) / self.std


# ------------------------------------------------------------------------------- prediction

def logits_of(out: torch.Tensor | OLTROutput) -> torch.Tensor:
    return out.logits if isinstance(out, OLTROutput) else out


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable, device: torch.device, augment: BatchAugment,
            amp: bool, world: int = 1, centroids: torch.Tensor | None = None,
            features: bool = False) -> dict[str, np.ndarray]:
    """Scores of ``model`` on every sample of ``loader``: {"logits", "targets", "indices"[, "features"]}.

    Under torchrun each rank predicts its own shard and the shards are gathered, so every rank gets the
    whole, identical result (sorted by sample index).
    """
    was_training = model.training
    model.eval()
    out: dict[str, list] = {"logits": [], "targets": [], "indices": [], "features": []}
    for x, y, idx in loader:
        x = augment(x.to(device, non_blocking=True), train=False)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            o = model(x, centroids=centroids) if centroids is not None else model(x)
        out["logits"].append(logits_of(o).float().cpu())
        if features:
            out["features"].append(o.features.float().cpu())
        out["targets"].append(torch.as_tensor(y).cpu())
        out["indices"].append(torch.as_tensor(idx).cpu())
    model.train(was_training)
    res = {k: torch.cat(v).numpy() for k, v in out.items() if v}
    if world > 1:
        shards: list[Any] = [None] * world
        dist.all_gather_object(shards, res)
        res = {k: np.concatenate([s[k] for s in shards]) for k in res}
        _, first = np.unique(res["indices"], return_index=True)  # a padded sampler repeats samples
        res = {k: v[first] for k, v in res.items()}
    order = np.argsort(res["indices"], kind="stable")
    return {k: v[order] for k, v in res.items()}


def bce_value(logits: np.ndarray, targets: np.ndarray) -> float:
    """Mean binary cross-entropy (the validation loss that drives the plateau schedule)."""
    z = torch.from_numpy(logits).double()
    return float(nn.functional.binary_cross_entropy_with_logits(z, torch.from_numpy(targets).double()))
