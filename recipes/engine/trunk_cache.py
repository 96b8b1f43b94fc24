"""The cached frozen trunk (``model.cache_trunk``): EfficientNet-Lite0's frozen stages run once per data set
and view, their output stored, and every run trains only the stages after them.

With ``model.freeze`` = k the stages ``0 .. k-1`` are frozen (weights and BatchNorm statistics), so they give
every run and every teacher the same features for the same input. :func:`trunk_views` computes them once
per data set into ``<data.root>/.cache/`` (:func:`build_trunk_cache`): float16, for every row of the CSV,
for ``data.trunk_views`` = V views: view 0 is the evaluation input (no augmentation, what evaluation feeds
the uncached model), views 1 .. V-1 the training augmentation (:class:`BatchAugment`, ``train=True``) with
the uniforms ``keyed_uniforms(data.split_seed, view, CSV row)``: a pure function of the data, shared by
every run (a paired design). The file's name carries what it depends on (k, image size, V, the seed, the
CSV's SHA-256, the trunk's weights, the augmentation's settings and the skipped rows); it is written
through a temporary file and renamed (never half there), and checked against the expected shape on use.

On this path a data set's item is its CSV row (:class:`recipes.data.views.TrunkRows`) and
:class:`TrunkViews` stands where :class:`BatchAugment` stands: it reads the features of the batch's rows
from the memory-mapped file, view 0 for evaluation and prediction (validation, test, teacher banks), for
training the view ``1 + floor(u (V - 1))`` with ``u`` the trainer's keyed uniform of the sample (run seed,
epoch, position in the epoch's sequence): resumed runs and any world size see the same views. The model
is stages k .. 8 (:class:`recipes.models.timm_backbones.Lite0Tail`), pooling and the head.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recipes.config import ConfigError
from recipes.data.augment import BatchAugment, keyed_uniforms
from recipes.data.transforms import AUGMENTATION
from recipes.distributed import barrier
from rskd_loss.errors import RSKDError
from rskd_loss.fileio import atomic_path, reserve_space


class TrunkCacheError(RSKDError, ValueError):
    """A trunk cache file does not hold what its name says (the message names it and what to do)."""


#: the seed of the frozen trunk's random weights (``model.pretrained=False`` without ``model.weights_path``):
#: fixed, so that every run shares one cache as with pretrained weights
TRUNK_INIT_SEED = 0


def frozen_trunk(model_cfg: Mapping) -> nn.Module:
    """The frozen stages ``0 .. model.freeze - 1`` of the configured EfficientNet-Lite0 (its weights), eval mode."""
    from recipes.models.timm_backbones import Lite0Trunk, efficientnet_lite0  # timm: seconds to import

    with torch.random.fork_rng(devices=[]):  # the run's random stream stays as it was
        torch.manual_seed(TRUNK_INIT_SEED)
        full = efficientnet_lite0(pretrained=bool(model_cfg.get("pretrained")),
                                  weights_path=model_cfg.get("weights_path"), freeze=model_cfg["freeze"])
    return Lite0Trunk(full, model_cfg["freeze"])


def _feature_shape(trunk: nn.Module, size: int) -> tuple[int, ...]:
    """(C, h, w) of ``trunk``'s output for ``size`` x ``size`` images."""
    with torch.no_grad():
        return tuple(trunk(torch.zeros(1, 3, size, size, device=trunk.in_scale.device)).shape[1:])


def trunk_cache_file(cfg: Mapping, data: Mapping, trunk: nn.Module) -> Path:
    """``<data.root>/.cache/trunk_lite0_k<k>_<size>px_v<V>_seed<s>_<csv sha>_w<weights>_a<settings>.npy``.

    ``a<settings>``: a hash of the augmentation's settings and of the skipped rows (``data.skip_bad_images``),
    the remaining inputs of the features."""
    d = cfg["data"]
    settings = json.dumps({"augmentation": {k: list(v) if isinstance(v, tuple) else v
                                            for k, v in sorted(AUGMENTATION.items())},
                           "skipped": [int(r) for r in data["bad_rows"]]}, sort_keys=True)
    tag = hashlib.sha256(settings.encode()).hexdigest()[:8]
    name = (f"trunk_lite0_k{trunk.k}_{d['image_size']}px_v{d['trunk_views']}_seed{d['split_seed']}_"
            f"{data['csv_sha'][:16]}_w{trunk.weights_sha256()[:12]}_a{tag}.npy")
    return Path(d["root"]) / ".cache" / name


def _all_rows_loader(cfg: Mapping, data: Mapping) -> Any:
    """Every readable row of the CSV as (uint8 (3, size, size) images, targets, CSV rows), in order."""
    from torch.utils.data import DataLoader, Subset

    from recipes.data import MultiLabelCSVDataset
    from recipes.data.transforms import uint8_transform

    d = cfg["data"]
    everything = MultiLabelCSVDataset(data["csv"], data["image_dir"], image_column=data["image_column"],
                                      class_names=data["class_names"], image_suffix=d["image_suffix"],
                                      transform=uint8_transform(d["image_size"]), empty_classes="ignore",
                                      check_images=not len(data["bad_rows"]))
    keep = np.setdiff1d(np.arange(data["num_rows"]), data["bad_rows"])
    return DataLoader(Subset(everything, keep.tolist()), batch_size=d["eval_batch_size"],
                      num_workers=d["num_workers"], generator=torch.Generator())


@torch.no_grad()
def build_trunk_cache(cfg: Mapping, data: Mapping, trunk: nn.Module, path: Path, device: torch.device) -> None:
    """Write the (CSV rows, V, C, h, w) float16 features of ``trunk`` for every row and view to ``path``.

    View 0 is the evaluation input; view v >= 1 the training augmentation with ``keyed_uniforms(data.split_seed,
    v, row)``. Skipped rows stay zero. Written in place through a memory map to a temporary file, then
    renamed: an interrupted build leaves no file under ``path``."""
    d = cfg["data"]
    views, size, seed = d["trunk_views"], d["image_size"], d["split_seed"]
    started = time.time()
    trunk, augment = trunk.to(device).eval(), BatchAugment(size).to(device)
    shape = (data["num_rows"], views, *_feature_shape(trunk, size))
    with atomic_path(path, fsync=True) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        reserve_space(tmp)  # a full disk: an error here, not a SIGBUS at a later page write
        out[data["bad_rows"]] = 0
        for images, _, rows in _all_rows_loader(cfg, data):
            x = images.to(device, non_blocking=True)
            for view in range(views):
                rand = keyed_uniforms(seed, view, rows.numpy(), BatchAugment.NUM_RANDOM).to(device)
                features = trunk(augment(x, train=view > 0, rand=rand if view else None)).half()
                if not torch.isfinite(features).all():  # beyond float16's range (65504), or NaN
                    raise TrunkCacheError(f"the frozen trunk's features do not fit float16 at CSV rows "
                                          f"{rows[:4].tolist()} (view {view}): check model.weights_path")
                out[rows.numpy(), view] = features.cpu().numpy()
        out.flush()
        del out
    print(f"built trunk cache {path}: {shape[0]} rows x {views} views of {tuple(shape[2:])} features in "
          f"{time.time() - started:.1f}s", flush=True)


def open_trunk_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The cache at ``path`` memory-mapped, after checking its header (dtype float16, ``shape``)."""
    features = np.load(path, mmap_mode="r")
    if features.dtype != np.float16 or features.shape != shape:
        raise TrunkCacheError(f"trunk cache {path} holds {features.dtype} {features.shape}, expected float16 "
                              f"{shape}; it was not written by this code: delete it to have it rebuilt")
    return features


class TrunkViews(nn.Module):
    """Where :class:`BatchAugment` stands on the cached path: CSV rows (B,) -> their cached features (B, C, h, w).

    ``train=False``: view 0 (the evaluation input). ``train=True``: per sample the view ``1 + floor(u (V-1))``
    of its keyed uniform ``u = rand[:, 0]`` (view 0 when V = 1). ``NUM_RANDOM``: the uniforms it reads."""

    NUM_RANDOM = 1

    def __init__(self, features: np.ndarray) -> None:
        super().__init__()
        self.features, self.num_views = features, int(features.shape[1])

    def choose_views(self, rand: torch.Tensor) -> np.ndarray:
        """The view of each sample for its keyed uniforms ``rand`` (B, 1)."""
        u = rand[:, 0].detach().cpu().double().numpy()
        if self.num_views == 1:
            return np.zeros(len(u), dtype=np.int64)
        return 1 + np.minimum((u * (self.num_views - 1)).astype(np.int64), self.num_views - 2)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, train: bool, rand: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() != 1 or x.dtype != torch.int64:
            raise TypeError(f"TrunkViews expects (B,) int64 CSV rows, got {x.dtype} {tuple(x.shape)}")
        rows = x.cpu().numpy()
        if train and rand is None:
            rand = torch.rand(len(rows), self.NUM_RANDOM)
        views = self.choose_views(rand) if train else np.zeros(len(rows), dtype=np.int64)
        chunk = torch.from_numpy(np.ascontiguousarray(self.features[rows, views]))
        return chunk.to(x.device, non_blocking=True).float()


@contextlib.contextmanager
def _build_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``<path>.lock`` (``fcntl.flock``, released when the process dies): of the runs a
    sweep starts at once (``--jobs N``), one builds the cache, the others wait for it and then read it."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def trunk_views(cfg: Mapping, data: Mapping, rank: int, world: int, device: torch.device) -> TrunkViews:
    """The run's :class:`TrunkViews`: the cache file of this config found, or built by rank 0 (the other ranks
    wait, and so do other runs that need the same file), then memory-mapped and checked."""
    trunk = frozen_trunk(cfg["model"])
    path = trunk_cache_file(cfg, data, trunk)
    if rank == 0 and not path.is_file():
        with _build_lock(path):
            if not path.is_file():  # another run may have built it while this one waited
                build_trunk_cache(cfg, data, trunk, path, device)
    barrier(world)
    shape = (data["num_rows"], cfg["data"]["trunk_views"], *_feature_shape(trunk.cpu(), cfg["data"]["image_size"]))
    return TrunkViews(open_trunk_cache(path, shape))


def trunk_key(model_cfg: Mapping) -> str:
    """What a model of ``model_cfg`` takes as input, in words: images, or the cached output of k frozen stages."""
    if model_cfg.get("cache_trunk"):
        return f"model.cache_trunk=True with model.freeze={model_cfg.get('freeze')}"
    return "images (model.cache_trunk=False)"


def check_same_trunk(ckpt: os.PathLike | str, state: Mapping, ours: Mapping, what: str) -> None:
    """Refuse a checkpoint (``state``, as loaded) whose model takes other inputs than this run's (``ours``: the
    config's model section): cached features of another k, or images against cached features."""
    theirs = state.get("config", {}).get("model", {})  # a checkpoint without its config: an uncached model
    if trunk_key(theirs) != trunk_key(ours):
        raise ConfigError(f"{ckpt} was trained on {trunk_key(theirs)}, this run on {trunk_key(ours)}; {what} "
                          f"must be cached the same way (same model.cache_trunk and model.freeze)")
