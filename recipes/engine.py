"""Training-loop pieces shared by the stages of ``recipes/train.py``: distributed set-up, data views,
on-device batch augmentation, prediction, checkpoints (atomic, ``weights_only``-loadable) and logs."""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import sys
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from rskd_loss.baselines.oltr import OLTROutput
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


def mean_over_ranks(t: torch.Tensor, world: int) -> torch.Tensor:
    """``t`` averaged over the ranks, in place (unchanged with one process)."""
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


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
    checkpoint written to its temporary file, not yet renamed). Without the variable this does nothing."""
    spec = os.environ.get("RSKD_FAULT")
    if not spec:
        return
    target, _, count = spec.partition(":")
    if target != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(count):
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


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
    """The rows of ``base`` read from a cache of decoded uint8 images (``data.preload``): no decoding.

    The images of the whole CSV are decoded once, resized and centre-cropped to ``size`` x ``size``
    (``uint8_transform``), by ``workers`` loader processes, into ``cache_file``: a ``.npy`` array
    (N, 3, size, size) written in place through a memory map to a temporary file, then renamed (never
    half-written). Every later run on the same CSV and size, in any process, reads it memory-mapped:
    an item is a copy of 3 x size x size bytes, so a loader worker delivers tens of thousands of
    images per second, and the runs that a sweep packs on one node share one copy in the page cache
    (80,000 images at 256 px: 15.7 GB on disk, read once). Items are
    ``(uint8 (3, size, size), target, index)``; augmentation runs per batch on the device
    (:class:`BatchAugment`).
    """

    def __init__(self, base: Any, size: int, cache_file: str | os.PathLike, skip_rows: Sequence[int] = (),
                 workers: int = 0) -> None:
        self.images = _decoded_images(base, size, cache_file, skip_rows, workers)
        self.rows = np.asarray(base.indices, dtype=np.int64)
        self.targets = torch.from_numpy(np.asarray(base.targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        return torch.from_numpy(np.array(self.images[row])), self.targets[i], row


def _decoded_images(base: Any, size: int, cache_file: str | os.PathLike, skip_rows: Sequence[int] = (),
                    workers: int = 0) -> np.ndarray:
    """(num CSV rows, 3, size, size) uint8 images of every row of ``base``'s CSV, memory-mapped from the cache.

    Rows in ``skip_rows`` (unreadable images the run skips, ``data.skip_bad_images``) stay black; a
    cache written with skipped rows is named after them, so it never serves another set of rows.
    """
    skip = sorted(int(r) for r in skip_rows)
    if skip:
        tag = hashlib.sha256(",".join(map(str, skip)).encode()).hexdigest()[:12]
        cache_file = os.fspath(cache_file).replace(".npy", f"_skip{len(skip)}_{tag}.npy")
    if not os.path.isfile(cache_file):
        from torch.utils.data import DataLoader, Subset

        from recipes.data import MultiLabelCSVDataset
        from recipes.data.transforms import uint8_transform

        everything = MultiLabelCSVDataset(base.csv_path, base.image_dir, image_suffix=base.image_suffix,
                                          transform=uint8_transform(size), empty_classes="ignore",
                                          check_images=not skip)
        keep = np.setdiff1d(np.arange(len(everything)), skip)
        loader = DataLoader(Subset(everything, keep.tolist()), batch_size=64, num_workers=workers,
                            generator=torch.Generator())  # leaves the global RNG (model init) alone
        with atomic_path(cache_file, fsync=True) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(everything), 3, size, size))
            out[skip] = 0
            for images, _, rows in loader:
                out[rows.numpy()] = images.numpy()
            out.flush()
            del out
    return np.load(cache_file, mmap_mode="r")


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


_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser (Steele, Lea & Flood 2014) on uint64 arrays: a well-mixed 64-bit hash."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, positions: Sequence[int] | np.ndarray | torch.Tensor,
                   n: int) -> torch.Tensor:
    """(B, n) float32 uniforms in [0, 1), a pure function of (seed, epoch, position, column).

    The random choices of the training augmentation are drawn from here, keyed by the sample's position
    in the epoch's global sample sequence, instead of from a random-number stream: an interrupted and
    resumed run, a run on 1 process and on 8, and a run with 0 or 16 loader workers all augment every
    sample identically.
    """
    with np.errstate(over="ignore"):
        pos = np.asarray(positions, dtype=np.int64).astype(np.uint64).reshape(-1, 1)
        key = _splitmix64(np.uint64(seed) * _SPLITMIX_GAMMA + np.uint64(epoch))
        z = _splitmix64(key ^ _splitmix64(pos * np.uint64(n) + np.arange(n, dtype=np.uint64) + _SPLITMIX_GAMMA))
    return torch.from_numpy(((z >> np.uint64(40)).astype(np.float64) / 2.0 ** 24).astype(np.float32))


class ResumableSampler(torch.utils.data.Sampler):
    """Wraps a per-epoch deterministic sampler (``set_epoch``) so an epoch can start at a position.

    ``set_epoch(epoch, start)`` selects the epoch and drops its first ``start`` indices (this rank's
    share), i.e. the batches a resumed run has already trained on; the next epoch starts at 0 again.
    """

    def __init__(self, sampler: Any) -> None:
        self.sampler, self.start = sampler, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if start < 0 or start > len(self.sampler):
            raise ValueError(f"start must be in [0, {len(self.sampler)}], got {start}")
        self.sampler.set_epoch(epoch)
        self.start = start

    def __iter__(self):
        it = iter(self.sampler)
        for _ in range(self.start):
            next(it)
        return it

    def __len__(self) -> int:
        return len(self.sampler) - self.start


class BatchAugment(nn.Module):
    """uint8 (B, 3, H, W) images on the device -> float (B, 3, size, size), augmented (train) and normalised.

    The whole training augmentation runs batched on the device, so the CPU only decodes and resizes
    (issue 7: CPU augmentation starves a GPU). Per sample, with the uniforms ``rand`` (B, 10):

    * random resized crop: area fraction ``s ~ U(scale)``, aspect ``r ~ logU(ratio)``, crop of
      ``w = sqrt(s r)`` x ``h = sqrt(s / r)`` of the image (clipped to 1) at a uniform position;
    * horizontal and vertical flips (p = 0.5 each; left and right eyes are mirror images);
    * rotation by ``U(-degrees, degrees)``, black fill (the background of a fundus photograph);
    * brightness, contrast and saturation factors ``U(1 - b, 1 + b)`` (torchvision's ``ColorJitter``
      formulas: scale; blend with the image's mean grey; blend with the per-pixel grey), composed
      into one colour matrix per sample and clamped to [0, 1] once at the end (torchvision clamps
      after each of the three: they differ only where a pixel passes 0 or 1 half-way).

    Crop, flips and rotation are one affine map per sample, sampled bilinearly (``grid_sample``): output pixel ``p`` (normalised to [-1, 1]) reads the input at
    ``R(theta) diag(w f_x, h f_y) p + c``. Defaults: the CPU pipeline of ``recipes/data/transforms.py``
    (``train_transform``), hue jitter left out. Evaluation (``train=False``) only converts and
    normalises (the loader already resized and centre-cropped). ``rand=None`` draws from torch's
    generator (not reproducible across world sizes; the recipes pass :func:`keyed_uniforms`).
    """

    NUM_RANDOM = 10

    def __init__(self, size: int, scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (0.9, 1.1),
                 degrees: float = 15.0, brightness: float = 0.2, contrast: float = 0.2,
                 saturation: float = 0.1) -> None:
        super().__init__()
        if not 0.0 < scale[0] <= scale[1] <= 1.0:
            raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi <= 1, got {scale}")
        if not 0.0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must be (lo, hi) with 0 < lo <= hi, got {ratio}")
        self.size, self.scale, self.degrees = int(size), scale, float(degrees)
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.jitter = (float(brightness), float(contrast), float(saturation))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("grey", torch.tensor((0.299, 0.587, 0.114)).view(1, 3, 1, 1), persistent=False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, train: bool, rand: torch.Tensor | None = None) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise TypeError(f"BatchAugment expects uint8 images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")
        if not train:
            if x.shape[-2:] != (self.size, self.size):
                raise ValueError(f"evaluation images must be {self.size} x {self.size}, got {tuple(x.shape[-2:])}")
            return x.float().div_(255.0).sub_(self.mean).div_(self.std)
        b = x.shape[0]
        if rand is None:
            rand = torch.rand(b, self.NUM_RANDOM, device=x.device)
        if rand.shape != (b, self.NUM_RANDOM):
            raise ValueError(f"rand must have shape ({b}, {self.NUM_RANDOM}), got {tuple(rand.shape)}")
        u = rand.to(x.device, torch.float32).unbind(1)
        # crop, flips, rotation: one affine map per sample
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        aspect = torch.exp(self.log_ratio[0] + (self.log_ratio[1] - self.log_ratio[0]) * u[1])
        w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)
        cx, cy = (2 * u[2] - 1) * (1 - w), (2 * u[3] - 1) * (1 - h)
        fx, fy = torch.where(u[4] < 0.5, -1.0, 1.0), torch.where(u[5] < 0.5, -1.0, 1.0)
        angle = math.radians(self.degrees) * (2 * u[6] - 1)
        cos, sin = angle.cos(), angle.sin()
        x = nn.functional.grid_sample(x.float(), self._grid(w * fx * cos, -h * fy * sin, cx, w * fx * sin,
                                                            h * fy * cos, cy), mode="bilinear",
                                      padding_mode="zeros", align_corners=False)
        # colour: brightness b, contrast c (around the mean grey level L of the brightened image),
        # saturation s (around each pixel's grey g = w.x) are affine in x: y = c b S x + (1 - c) L with
        # S = s I + (1 - s) 1 w^T (S 1 = 1, as w sums to 1); one 3x3 matrix per sample, then one clamp
        bri, con, sat = self.jitter
        fb, fc, fs = (1 - bri + 2 * bri * u[7]), (1 - con + 2 * con * u[8]), (1 - sat + 2 * sat * u[9])
        eye = torch.eye(3, device=x.device)
        S = fs.view(b, 1, 1) * eye + (1 - fs).view(b, 1, 1) * self.grey.view(1, 1, 3)
        level = fb * (x.mean((2, 3)) @ self.grey.view(3, 1)).view(b) / 255.0
        matrix = (fc * fb / 255.0).view(b, 1, 1) * S
        y = torch.bmm(matrix, x.view(b, 3, -1)).view_as(x)
        y.add_(((1 - fc) * level).view(b, 1, 1, 1)).clamp_(0.0, 1.0)
        return y.sub_(self.mean).div_(self.std)

    def _grid(self, a: torch.Tensor, b_: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor,
              f: torch.Tensor) -> torch.Tensor:
        """``affine_grid`` for the maps [[a, b, c], [d, e, f]] (B,) each, by broadcasting (no batched matmul)."""
        n = self.size
        lin = (torch.arange(n, device=a.device, dtype=torch.float32) * 2 + 1) / n - 1  # pixel centres
        gx, gy = lin.view(1, 1, n), lin.view(1, n, 1)
        v = lambda t: t.view(-1, 1, 1)  # noqa: E731
        return torch.stack([v(a) * gx + v(b_) * gy + v(c), v(d) * gx + v(e) * gy + v(f)], -1)


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
