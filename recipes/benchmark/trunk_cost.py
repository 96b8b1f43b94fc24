"""Section (e) of ``python -m recipes.benchmark --trunk-cache``: a training epoch of EfficientNet-Lite0 with
``model.freeze`` = k on today's path against the cached frozen trunk (``model.cache_trunk``), and the
one-off cost of building the cache.

For each k (``--trunk-freeze``, default 5 6 8), both paths train ERM (BCE, Adam, the trainer's
``train_step``) at the same batch size, from data already in memory as the recipes read it: today's path
from the decoded uint8 images (``data.preload``) through ``BatchAugment`` (train, keyed uniforms) and the
whole Lite0 with its first k stages frozen; the cached path from the memory-mapped float16 cache through
``TrunkViews`` (a keyed view per sample) and stages k .. 8. The two cases alternate step by step
(``run_cost.time_cases``); an epoch is ``--trunk-epoch`` images (default 7,915: the training part of one
fold of a 12,000-image set) at the median step time. The build (``build_trunk_cache``: decode, augment, the
frozen stages, float16 to disk) is timed once per k over the benchmark's images and ``--trunk-views``
views, and given per 1,000 images x views. Weights are random (the time does not depend on them).
"""
from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recipes.data.augment import BatchAugment, keyed_uniforms
from recipes.engine.tasks import SupervisedTask
from recipes.engine.trainer import train_step
from recipes.engine.trunk_cache import TrunkViews, build_trunk_cache, frozen_trunk
from recipes.models.backbones import build_model

SEED = 0
#: the default epoch: the training part of one fold of 12,000 images (the prototype's 7,915)
EPOCH_IMAGES = 7915

Timer = Callable[[dict[str, Callable[[], Any]], torch.device, int, int], dict[str, list[float]]]


def add_arguments(p: argparse.ArgumentParser, pos: Callable[[str], int]) -> None:
    p.add_argument("--trunk-cache", action="store_true",
                   help="(e): a training epoch of efficientnet_lite0 with model.freeze=k, today's path against "
                        "model.cache_trunk=True, and the cache's build time")
    p.add_argument("--trunk-freeze", type=pos, nargs="+", default=[5, 6, 8], help="the k of (e) (default 5 6 8)")
    p.add_argument("--trunk-views", type=pos, default=None, help="views cached per image in (e) (default 8; 2 "
                                                                 "with --quick)")
    p.add_argument("--trunk-epoch", type=pos, default=EPOCH_IMAGES,
                   help=f"training images of an epoch in (e) (default {EPOCH_IMAGES:,})")


def _build(a: argparse.Namespace, data: dict, rows: int, k: int, folder: Path,
           device: torch.device) -> tuple[TrunkViews, float]:
    """The cache of ``k`` frozen stages over the benchmark's ``rows`` images, and the seconds its build took."""
    csv_path, image_dir = data["cached"]
    cfg = {"data": {"trunk_views": a.trunk_views, "image_size": a.size, "split_seed": SEED, "image_suffix": "",
                    "eval_batch_size": a.batch, "num_workers": a.workers}}
    info = {"csv": csv_path, "image_dir": image_dir, "image_column": None, "class_names": None, "num_rows": rows,
            "bad_rows": np.zeros(0, dtype=np.int64)}
    trunk = frozen_trunk({"name": "efficientnet_lite0", "pretrained": False, "freeze": k})
    path = folder / f"trunk_k{k}.npy"
    t0 = time.perf_counter()
    build_trunk_cache(cfg, info, trunk, path, device)
    seconds = time.perf_counter() - t0
    return TrunkViews(np.load(path, mmap_mode="r")), seconds


def _step(model: nn.Module, opt: torch.optim.Optimizer, make_input: Callable[[np.ndarray, torch.Tensor], torch.Tensor],
          num_rows: int, num_classes: int, batch: int, device: torch.device, case: dict) -> Callable[[], None]:
    """One training step: a batch of rows drawn at random, its input (``make_input(rows, keyed uniforms)``),
    then ``train_step``; the epoch position advances each call, as the trainer's."""
    task, g, calls = SupervisedTask("erm", nn.BCEWithLogitsLoss()), np.random.default_rng(SEED), [0]
    targets = (torch.rand(num_rows, num_classes, generator=torch.Generator().manual_seed(SEED)) < 0.1).float()

    def step() -> None:
        rows = g.integers(0, num_rows, batch)
        x = make_input(rows, calls[0] * batch + np.arange(batch))
        calls[0] += 1
        if case["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(task, model, [opt], x, targets[rows].to(device), torch.from_numpy(rows), amp=case["amp"])
    return step


def _model(k: int, cached: bool, num_classes: int, size: int, device: torch.device, case: dict) -> nn.Module:
    torch.manual_seed(SEED)
    model = build_model({"name": "efficientnet_lite0", "pretrained": False, "freeze": k, "cache_trunk": cached},
                        num_classes, image_size=size).to(device)
    return model.to(memory_format=torch.channels_last) if case["channels_last"] else model


def _adam(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # as the trainer: fused Adam on CUDA, foreach on CPU; only the trainable parameters
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))


def _epoch_cases(a: argparse.Namespace, k: int, images: torch.Tensor, views: TrunkViews, device: torch.device,
                 case: dict) -> dict[str, Callable[[], None]]:
    augment, n, c = BatchAugment(a.size).to(device), len(images), a.classes
    today, cached = _model(k, False, c, a.size, device, case), _model(k, True, c, a.size, device, case)

    def image_input(rows: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        rand = keyed_uniforms(SEED, 0, positions, augment.NUM_RANDOM).to(device)
        return augment(images[torch.from_numpy(rows)].to(device, non_blocking=True), train=True, rand=rand)

    def cached_input(rows: np.ndarray, positions: np.ndarray) -> torch.Tensor:
        rand = keyed_uniforms(SEED, 0, positions, views.NUM_RANDOM)
        return views(torch.from_numpy(rows).to(device), train=True, rand=rand)

    return {"today": _step(today.train(), _adam(today, device), image_input, n, c, a.batch, device, case),
            "cached": _step(cached.train(), _adam(cached, device), cached_input, n, c, a.batch, device, case)}


def trunk_cache_section(a: argparse.Namespace, device: torch.device, data: dict, images: torch.Tensor, tmp: Path,
                        timer: Timer, case: dict) -> dict:
    """(e): per k, the epoch seconds of both paths (median step x steps per epoch), their ratio, and the
    cache's build seconds per 1,000 images x views. ``images``: the benchmark's images decoded (uint8, as
    ``data.preload`` holds them); ``timer``: ``run_cost.time_cases``; ``case``: the reference precision
    setting of this device (``run_cost.precision_cases``). Passed in: this module is imported by run_cost."""
    steps = math.ceil(a.trunk_epoch / a.batch)
    out: dict[str, Any] = {"epoch_images": a.trunk_epoch, "steps_per_epoch": steps, "views": a.trunk_views,
                           "settings": f"{case['settings']}, batch {a.batch}"}
    for k in a.trunk_freeze:
        views, build_s = _build(a, data, len(images), k, tmp, device)
        seconds = timer(_epoch_cases(a, k, images, views, device, case), device, a.warmup, a.steps)
        today, cached = (statistics.median(seconds[name]) for name in ("today", "cached"))
        out[f"k{k}"] = {"status": "measured", "today_ms_per_step": today * 1e3, "cached_ms_per_step": cached * 1e3,
                        "today_epoch_s": today * steps, "cached_epoch_s": cached * steps, "speedup": today / cached,
                        "build_s": build_s, "build_s_per_1000_image_views":
                        build_s / (len(views.features) * a.trunk_views / 1000)}
    return out
