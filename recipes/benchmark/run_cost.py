"""Benchmark: what an RSKD training run costs on this machine, and where the time goes.

One process, one device (CUDA when available, else CPU), four sections, each printed as a Markdown
table row and collected in one JSON object (printed, and written atomically with ``--json``):

The *reference* setting is the one the recipes train with on the device (``recipes/config.py``:
``run.amp="auto"`` is bf16 autocast on CUDA only, ``run.channels_last="auto"`` is on): bf16 +
channels_last on GPU, fp32 + channels_last on CPU.

(a) **model-only training step** on random uint8 images already on the device:
    ``recipes.data.augment.BatchAugment`` (train=True) -> ``recipes.engine.trainer.train_step`` of a BCE task (model,
    loss, backward, Adam step; fused on CUDA, foreach on CPU, as the trainer), in images/s, for fp32;
    fp32 + channels_last;
    bf16 autocast + channels_last (GPU only); and ``torch.compile`` of the model in the reference
    setting (GPU by default; ``--compile`` on CPU). The cases alternate step by step.
(b) **student step**: ``WeightedSubsetKDLoss(BCE)`` with teacher logits looked up in a
    ``TeacherLogitBank`` (rows indexed on the device, as ``recipes/train.py`` does) and with k online
    ``SubsetTeachers`` (default k = 3 and 4; the teachers are copies of the student's architecture,
    run under the student's autocast), each as a ratio to an ERM step measured in the same run,
    alternating step by step with the student steps, in the reference setting.
(c) **data pipeline alone**: a ``DataLoader`` over ``MultiLabelCSVDataset`` with
    ``uint8_transform(size)`` and N workers (pinned memory on CUDA, persistent workers, prefetch 4, as
    ``recipes/train.py``), from (c1) a cached copy at ~1.125 x size (PNG, the default of
    ``recipes.data.cache``) and (c2) full-size JPEGs; and the device-side ``BatchAugment`` alone.
    One untimed batch per worker first (start-up), then ``--loader-batches`` timed batches.
(d) **end to end**: the student epoch of ``recipes/train.py`` in bank mode with the pipeline of (c1)
    (non-blocking copies, ``keyed_uniforms`` randoms, ``BatchAugment``, bank lookup,
    ``WeightedSubsetKDLoss``, Adam), wall clock over ``--steps`` steps after ``--warmup`` + one per
    worker, as a ratio to the model-only step of (a) in the reference setting; when (a) compiled, also
    with the compiled model, as a ratio to the compiled model-only step.

The targets (``TARGET_*``) are printed beside the measured figures. A benchmark, not a test: no number
here is asserted anywhere.

Defaults (a GPU budget is sized on ResNet-50 at 256 x 256, batch 256; the paper trains at
256 x 256, Sec. 3.1): GPU: ``resnet50`` (no pretrained weights), 256 px, batch 256, 48 classes, 30
timed steps after 5 warm-up, workers = cores - 1 (at most 16), full-size 2048 px. CPU: ``small_cnn``
(width 16, batch norm, linear head), 64 px, batch 64, 16 classes, 10 timed steps after 2 warm-up, 1
worker and cores - 1 torch threads, full-size 256 px: under a minute on 2 idle cores.

Times: CUDA events around each step (synchronised) on GPU, ``time.perf_counter`` on CPU; the median
over the timed steps. The images are synthetic fundus-like images (``recipes.data.generate_synthetic``);
full-size JPEGs are rendered at ``min(full_size, 1024)`` px, upscaled (bicubic), given a mild grain
(sigma 2 grey levels, so they do not compress like a flat image) and saved at quality 95.
``--data-root DIR`` (``DIR/labels.csv`` + ``DIR/images/``) reads real images instead.

    python -m recipes.benchmark                         # the defaults of this machine's device
    python -m recipes.benchmark --json bench.json       # also write the JSON
    python -m recipes.benchmark --quick                 # tiny, seconds (what the tests run)
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import itertools
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from recipes.benchmark import trunk_cost
from recipes.data.augment import BatchAugment, keyed_uniforms
from recipes.engine.tasks import StudentTask, SupervisedTask
from recipes.engine.teacher_sources import BankTeachers, OnlineTeachers
from recipes.engine.trainer import train_step
from recipes.models.backbones import build_model
from rskd_loss import Partition, SubsetPartitioner, SubsetTeachers, TeacherLogitBank, WeightedSubsetKDLoss
from rskd_loss.fileio import atomic_write_bytes, atomic_write_text
from rskd_loss.validation import value_checks

__all__ = ["main", "parse_args", "TARGET_BANK_RATIO", "TARGET_TEACHER_SLOPE", "TARGET_E2E_RATIO",
           "TARGET_E2E_IMAGES_PER_S"]

#: target: the student step with the cached bank within 2 % of the ERM step (the bank is meant to be free)
TARGET_BANK_RATIO = 1.02
#: target: with k online teachers at most (1 + 0.3 k) x the ERM step
TARGET_TEACHER_SLOPE = 0.3
#: target: end-to-end student training at least 95 % of the model-only step's images/s on a GPU (the
#: data pipeline must keep the GPU fed)
TARGET_E2E_RATIO = 0.95
#: target: at least 4,500 images/s on an H100/H200 class GPU (ResNet-50, 256 x 256)
TARGET_E2E_IMAGES_PER_S = 4500.0

SMALL_CNN = {"name": "small_cnn", "width": 16, "norm": "batch", "head": "linear"}
CACHE_SCALE = 1.125  # 288 px for 256: recipes/data/cache.py DEFAULT_SIZE, room for the random crop
JPEG_QUALITY = 95    # recipes/data/cache.py build_cache(quality=95)
GRAIN_SIGMA = 2.0
SEED = 0


# ------------------------------------------------------------------------------------ arguments

def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an int >= {low}, got {value}")
        return value
    parse.__name__ = f"int >= {low}"
    return parse


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m recipes.benchmark", description=__doc__.splitlines()[0],
        epilog="Defaults that depend on the device are resolved after parsing and printed with the table.")
    pos, nonneg = _int_at_least(1), _int_at_least(0)
    p.add_argument("--quick", action="store_true", help="everything tiny (seconds; for the tests)")
    p.add_argument("--json", metavar="OUT.json", help="also write the JSON object here (atomically)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--model", help="resnet50 (GPU default), small_cnn (CPU default) or any torchvision model")
    p.add_argument("--width", type=pos, default=None, help="small_cnn width (default 16; 4 with --quick)")
    p.add_argument("--size", type=pos, help="training image side in px (GPU 256, CPU 64)")
    p.add_argument("--batch", type=pos, help="batch size (GPU 256, CPU 64)")
    p.add_argument("--classes", type=_int_at_least(2), help="number of classes (GPU 48, CPU 16)")
    p.add_argument("--steps", type=pos, help="timed steps per case; the median is reported (GPU 30, CPU 8)")
    p.add_argument("--warmup", type=nonneg, help="untimed steps before each case (GPU 5, CPU 2)")
    p.add_argument("--teachers", type=pos, nargs="+", help="numbers k of online teachers (default 3 4)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.compile (default: on GPU, off on CPU and with --quick)")
    p.add_argument("--threads", type=pos,
                   help="torch intra-op threads (CPU default: cores - workers, so the loader workers and the "
                        "model do not oversubscribe the cores; GPU default: torch's own)")
    p.add_argument("--workers", type=nonneg, help="DataLoader workers (GPU: cores - 1, at most 16; CPU: 1)")
    p.add_argument("--full-size", type=pos, help="side of the full-size images in px (GPU 2048, CPU 256)")
    p.add_argument("--full-batch", type=pos, help="batch of the full-size loader (GPU 32, CPU 16)")
    p.add_argument("--loader-batches", type=pos,
                   help="timed batches per loader measurement, after one untimed batch per worker "
                        "(GPU 4 x workers, CPU 8)")
    p.add_argument("--images", type=pos,
                   help="distinct images generated (cached copy; GPU 512, CPU 128); loaders draw with "
                        "replacement from them. Full-size: min(images, 32)")
    p.add_argument("--data-root", help="a folder with labels.csv and images/ to read instead of synthetic images")
    p.add_argument("--image-suffix", default="", help="appended to the CSV's image ids (with --data-root)")
    trunk_cost.add_arguments(p, pos)
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` and fill the device-dependent defaults; bad values exit via ``parser.error``."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: 'cuda' asked for but no CUDA device is available")
    cuda = a.device == "cuda" or (a.device == "auto" and torch.cuda.is_available())
    a.device = "cuda" if cuda else "cpu"
    cores = _cpu_count()
    if a.quick:
        d = dict(model="small_cnn", width=4, size=32, batch=8, classes=8, steps=3, warmup=1, teachers=[3, 4],
                 workers=min(1, cores - 1), full_size=64, full_batch=4, loader_batches=3, images=16, compile=False)
    elif cuda:
        workers = max(1, min(16, cores - 1))
        d = dict(model="resnet50", width=16, size=256, batch=256, classes=48, steps=30, warmup=5, teachers=[3, 4],
                 workers=workers, full_size=2048, full_batch=32, loader_batches=4 * workers, images=512,
                 compile=True)
    else:
        d = dict(model="small_cnn", width=16, size=64, batch=64, classes=16, steps=10, warmup=2, teachers=[3, 4],
                 workers=min(1, cores - 1), full_size=256, full_batch=16, loader_batches=8, images=128,
                 compile=False)
    for key, value in d.items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    if a.trunk_views is None:
        a.trunk_views = 2 if a.quick else 8
    if a.images < 8:
        parser.error(f"argument --images: must be at least 8 (the synthetic label generator needs them), "
                     f"got {a.images}")
    if a.size < 28 and a.model == "small_cnn":
        parser.error(f"argument --size: small_cnn halves the image four times; use --size >= 28, got {a.size}")
    bad = [k for k in a.teachers if k > a.classes]
    if bad:
        parser.error(f"argument --teachers: each k must be <= --classes ({a.classes}), got {bad}")
    if a.data_root is not None:
        root = Path(a.data_root)
        if not (root / "labels.csv").is_file() or not (root / "images").is_dir():
            parser.error(f"argument --data-root: expected a folder with labels.csv and images/, got {a.data_root!r}")
    if a.model != "small_cnn" and a.model not in torchvision.models.list_models(module=torchvision.models):
        parser.error(f"argument --model: expected small_cnn or a torchvision classification model, got {a.model!r}")
    if a.threads is None and not cuda:
        a.threads = max(1, cores - a.workers)
    a.cache_size = max(a.size, int(round(a.size * CACHE_SCALE)))
    a.cores = cores
    return a


# ------------------------------------------------------------------------------------ timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_cases(cases: dict[str, Callable[[], Any]], device: torch.device, warmup: int,
               steps: int) -> dict[str, list[float]]:
    """Seconds per call of each case; the cases alternate step by step, so a slow drift of the machine
    (other jobs on shared cores, clocks) hits every case alike. CUDA events on GPU (synchronised
    after each step), ``perf_counter`` on CPU."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(steps):
        for name, fn in cases.items():
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                out[name].append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                out[name].append(time.perf_counter() - t0)
    return out


def _row(seconds: Sequence[float], batch: int, **extra: Any) -> dict:
    sec = statistics.median(seconds)
    return {"status": "measured", "ms_per_step": sec * 1e3, "images_per_s": batch / sec, **extra}


# ------------------------------------------------------------------------------------ model steps

def _model(a: argparse.Namespace, num_classes: int, device: torch.device, channels_last: bool) -> nn.Module:
    cfg = dict(SMALL_CNN, width=a.width) if a.model == "small_cnn" else {"name": a.model, "pretrained": False}
    torch.manual_seed(SEED)
    model = build_model(cfg, num_classes, image_size=a.size).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _adam(model: nn.Module, device: torch.device) -> torch.optim.Optimizer:
    # as recipes/train.py: fused Adam on CUDA, foreach on CPU
    return torch.optim.Adam(model.parameters(), lr=1e-4,
                            **({"fused": True} if device.type == "cuda" else {"foreach": True}))


def make_step(model: nn.Module, opt: torch.optim.Optimizer, augment: BatchAugment, images: torch.Tensor,
              targets: torch.Tensor, *, amp: bool, channels_last: bool, task: Any,
              rows: Callable[[], torch.Tensor] | None = None) -> Callable[[], None]:
    """One training step on device-resident uint8 ``images``: augment, then the trainer's
    :func:`recipes.engine.trainer.train_step` of ``task`` (sample indices from ``rows``, for a bank)."""
    index = torch.arange(len(images))

    def step() -> None:
        x = augment(images, train=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        train_step(task, model, [opt], x, targets, rows() if rows is not None else index, amp=amp)
    return step


def _erm() -> SupervisedTask:
    return SupervisedTask("erm", nn.BCEWithLogitsLoss())


def _student(num_classes: int, teacher_logits: Callable) -> StudentTask:
    bce = nn.BCEWithLogitsLoss()
    return StudentTask(SupervisedTask("student", bce), WeightedSubsetKDLoss(bce, num_classes),
                       teacher_logits=teacher_logits)


def _random_batch(a: argparse.Namespace, device: torch.device, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(SEED)
    images = torch.randint(0, 256, (a.batch, 3, a.size, a.size), generator=g, dtype=torch.uint8).to(device)
    targets = (torch.rand(a.batch, num_classes, generator=g) < 0.1).float().to(device)
    return images, targets


def precision_cases(device: torch.device) -> dict[str, dict]:
    """The eager settings of (a); ``reference`` is the one the recipes train with on this device
    (recipes/config.py: run.amp 'auto' = bf16 on CUDA only, run.channels_last 'auto' = on)."""
    return {
        "fp32": {"amp": False, "channels_last": False, "settings": "fp32, contiguous"},
        "channels_last_fp32": {"amp": False, "channels_last": True, "settings": "fp32, channels_last"},
        "bf16_channels_last": {"amp": True, "channels_last": True, "settings": "bf16 autocast, channels_last"},
    }


def reference_case(device: torch.device) -> str:
    return "bf16_channels_last" if device.type == "cuda" else "channels_last_fp32"


def model_step_section(a: argparse.Namespace, device: torch.device, num_classes: int,
                       state: dict) -> dict:
    """(a): images/s of the model-only step per precision; keeps the compiled model in ``state``."""
    images, targets = _random_batch(a, device, num_classes)
    augment = BatchAugment(a.size).to(device)
    out: dict[str, dict] = {}
    steps: dict[str, Callable[[], None]] = {}
    ref = reference_case(device)
    for name, case in precision_cases(device).items():
        if case["amp"] and device.type != "cuda":
            out[name] = {"status": "n/a on CPU", "settings": case["settings"]}
            continue
        model = _model(a, num_classes, device, case["channels_last"])
        steps[name] = make_step(model, _adam(model, device), augment, images, targets, amp=case["amp"],
                                channels_last=case["channels_last"], task=_erm())
    settings = "torch.compile of " + precision_cases(device)[ref]["settings"]
    compile_s = None
    with value_checks(False):
        if not a.compile:
            out["compiled"] = {"status": "skipped", "settings": settings + " (--compile to time it)"}
        else:
            case = precision_cases(device)[ref]
            model = _model(a, num_classes, device, case["channels_last"])
            compiled = torch.compile(model)
            steps["compiled"] = make_step(compiled, _adam(model, device), augment, images, targets,
                                          amp=case["amp"], channels_last=case["channels_last"], task=_erm())
            t0 = time.perf_counter()
            steps["compiled"]()  # compiles
            _sync(device)
            compile_s = time.perf_counter() - t0
            state["compiled"] = (model, compiled)
        times = time_cases(steps, device, a.warmup, a.steps)
    for name in steps:
        s = settings if name == "compiled" else precision_cases(device)[name]["settings"]
        out[name] = _row(times[name], a.batch, settings=s)
    if compile_s is not None:
        out["compiled"]["first_step_s"] = compile_s
    del steps
    _free(device)
    out["reference"] = ref
    return out


def _workers(n: int) -> str:
    return f"{n} worker" + ("" if n == 1 else "s")


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------ student step

def long_tailed_counts(num_classes: int, seed: int = SEED) -> torch.Tensor:
    """Random long-tailed class counts: 10,000 * 150^(-c/(C-1)) times log-normal noise, sorted, >= 3."""
    g = torch.Generator().manual_seed(seed)
    base = 1e4 * 150.0 ** (-torch.arange(num_classes, dtype=torch.float64) / max(num_classes - 1, 1))
    noisy = base * torch.exp(0.2 * torch.randn(num_classes, generator=g, dtype=torch.float64))
    return noisy.round().clamp(min=3).sort(descending=True).values


def teacher_partition(k: int, counts: torch.Tensor) -> Partition:
    """k = 3: the shot partition (head / medium / tail, quantile thresholds) of ``counts``; other k:
    a feature partition (agglomerative clustering of random class embeddings), since the shot rule
    gives at most three subsets."""
    c = len(counts)
    if k == 3 and c >= 3:
        part = SubsetPartitioner("shot", mode="quantile", on_empty="raise").partition(class_counts=counts)
    else:
        emb = torch.randn(c, 8, generator=torch.Generator().manual_seed(SEED + k))
        part = SubsetPartitioner("feature", num_subsets=k).partition(embeddings=emb, class_counts=counts)
    if part.num_subsets != k:
        raise RuntimeError(f"asked for {k} teachers, the partition has {part.num_subsets} subsets")
    return part


def student_step_section(a: argparse.Namespace, device: torch.device, num_classes: int, tmp: Path) -> dict:
    """(b): ERM, bank student and k-online-teacher students, interleaved, at the reference precision."""
    ref = reference_case(device)
    case = precision_cases(device)[ref]
    amp, cl = case["amp"], case["channels_last"]
    images, targets = _random_batch(a, device, num_classes)
    augment = BatchAugment(a.size).to(device)
    counts = long_tailed_counts(num_classes)
    names = [f"class_{i:02d}" for i in range(num_classes)]
    shot = teacher_partition(3, counts) if num_classes >= 3 else teacher_partition(1, counts)
    num_rows = 56_000 if device.type == "cuda" else 4_000  # a paper-scale training set: 56,000 images
    g = torch.Generator().manual_seed(SEED)
    bank = TeacherLogitBank.write(tmp / "bank.rskd", torch.randn(num_rows, num_classes, generator=g),
                                  class_names=names, partition=shot)
    table = bank.table(device)
    lookup = torch.randperm(num_rows, generator=g).to(device)  # data-set row -> bank row, as train.py
    index_batches = [torch.randint(0, num_rows, (a.batch,), generator=g) for _ in range(8)]
    if device.type == "cuda":
        index_batches = [i.pin_memory() for i in index_batches]
    next_rows = itertools.cycle(index_batches).__next__

    model = _model(a, num_classes, device, cl)
    opt = _adam(model, device)
    bank_task = _student(num_classes, BankTeachers(table, lookup))

    cases: dict[str, Callable[[], None]] = {
        "erm": make_step(model, opt, augment, images, targets, amp=amp, channels_last=cl, task=_erm()),
        "bank": make_step(model, opt, augment, images, targets, amp=amp, channels_last=cl, task=bank_task,
                          rows=next_rows),
    }
    teacher_sets = []
    for k in a.teachers:
        part = teacher_partition(k, counts)
        teachers = SubsetTeachers([_model(a, len(s), device, cl) for s in part.subsets], part).to(device)
        teacher_sets.append(teachers)
        cases[f"online_{k}"] = make_step(model, opt, augment, images, targets, amp=amp, channels_last=cl,
                                         task=_student(num_classes, OnlineTeachers(teachers, amp)))
    with value_checks(False):
        times = time_cases(cases, device, a.warmup, a.steps)
    erm = _row(times["erm"], a.batch, settings=f"{case['settings']}, BCE")
    out: dict[str, Any] = {"reference": ref, "erm": erm}
    out["bank"] = _row(times["bank"], a.batch, settings=f"{case['settings']}, bank of {num_rows} rows on the device")
    for k in a.teachers:
        row = _row(times[f"online_{k}"], a.batch, k=k, settings=f"{case['settings']}, {k} online teachers")
        out[f"online_{k}"] = row
    for name in ["bank"] + [f"online_{k}" for k in a.teachers]:
        out[name]["ratio_to_erm"] = out[name]["ms_per_step"] / erm["ms_per_step"]
    del cases, teacher_sets, model, opt
    _free(device)
    return out


# ------------------------------------------------------------------------------------ data

def _write_labels(path: Path, image_ids: Sequence[str], num_classes: int, seed: int = SEED) -> list[str]:
    """A labels CSV with ``num_classes`` random long-tailed multi-hot columns (at least one label per
    image); returns the class names."""
    rng = np.random.default_rng([seed, 7])
    p = 0.25 * 50.0 ** (-np.arange(num_classes) / max(num_classes - 1, 1))
    y = (rng.random((len(image_ids), num_classes)) < p).astype(np.uint8)
    y[np.arange(len(image_ids)), rng.integers(0, num_classes, len(image_ids))] = 1
    names = [f"class_{i:02d}" for i in range(num_classes)]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image"] + names)
    for image_id, row in zip(image_ids, y):
        w.writerow([image_id] + row.tolist())
    atomic_write_text(path, buf.getvalue())
    return names


def _to_jpeg(src: Path, dst: Path, size: int, seed: int) -> None:
    from PIL import Image

    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BICUBIC)
        arr = np.asarray(im, dtype=np.float32)
    rng = np.random.default_rng([seed, 11])
    arr = np.clip(arr + rng.normal(0.0, GRAIN_SIGMA, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=JPEG_QUALITY)
    atomic_write_bytes(dst, buf.getvalue())


def prepare_data(a: argparse.Namespace, tmp: Path) -> dict:
    """The cached copy (c1) and the full-size images (c2): {"cached": (csv, dir), "full": (csv, dir),
    "num_classes", "source", "seconds"}."""
    t0 = time.perf_counter()
    if a.data_root is not None:
        return _prepare_real(a, tmp, t0)
    from recipes.data import generate_synthetic

    n_full = min(a.images, 32)
    cached = generate_synthetic(tmp / "cached", image_size=a.cache_size, num_images=a.images, num_classes=8,
                                imbalance_ratio=3.0, workers=a.cores, seed=SEED)
    cached_csv = tmp / "cached" / "bench_labels.csv"
    ids = [p.name for p in sorted(cached.image_dir.iterdir())]
    _write_labels(cached_csv, ids, a.classes)
    render = min(a.full_size, 1024)  # generate_synthetic draws at most 1024 px
    src = generate_synthetic(tmp / "full_src", image_size=render, num_images=n_full, num_classes=8,
                             imbalance_ratio=3.0, workers=a.cores, seed=SEED + 1)
    full_dir = tmp / "full" / "images"
    full_dir.mkdir(parents=True)
    pngs = sorted(src.image_dir.iterdir())
    with ThreadPoolExecutor(max_workers=a.cores) as pool:
        list(pool.map(lambda j: _to_jpeg(pngs[j], full_dir / (pngs[j].stem + ".jpg"), a.full_size, j),
                      range(len(pngs))))
    full_csv = tmp / "full" / "bench_labels.csv"
    _write_labels(full_csv, [p.stem + ".jpg" for p in pngs], a.classes)
    return {"cached": (cached_csv, cached.image_dir), "full": (full_csv, full_dir), "num_classes": a.classes,
            "source": (f"synthetic: {a.images} PNGs at {a.cache_size} px, {n_full} JPEGs at {a.full_size} px "
                       f"(q{JPEG_QUALITY})"),
            "seconds": time.perf_counter() - t0}


def _prepare_real(a: argparse.Namespace, tmp: Path, t0: float) -> dict:
    from recipes.data.cache import build_cache

    root = Path(a.data_root)
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [r for r in rows[1:] if r and any(c.strip() for c in r)][: a.images]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header] + body)
    subset = tmp / "subset" / "labels.csv"
    atomic_write_text(subset, buf.getvalue())
    build_cache(root / "images", subset, tmp / "cache", size=a.cache_size, image_suffix=a.image_suffix,
                workers=a.cores, progress=False)
    return {"cached": (tmp / "cache" / "labels.csv", tmp / "cache"), "full": (subset, root / "images"),
            "num_classes": len(header) - 1,
            "source": f"{a.data_root}: first {len(body)} images, cached at {a.cache_size} px (PNG)",
            "seconds": time.perf_counter() - t0}


def _dataset(csv_path: Path, image_dir: Path, size: int, suffix: str = ""):
    from recipes.data import MultiLabelCSVDataset
    from recipes.data.transforms import uint8_transform

    return MultiLabelCSVDataset(csv_path, image_dir, transform=uint8_transform(size), image_suffix=suffix,
                                empty_classes="ignore")


def _loader(ds, batch: int, num_batches: int, workers: int, device: torch.device, seed: int = SEED) -> DataLoader:
    """As recipes/train.py make_loader: pinned memory on CUDA, persistent workers, prefetch 4; samples
    drawn with replacement, so a small image set feeds any number of batches."""
    sampler = RandomSampler(ds, replacement=True, num_samples=batch * num_batches,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(ds, batch_size=batch, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=True, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)


def loader_throughput(ds, batch: int, a: argparse.Namespace, device: torch.device) -> dict:
    """Images/s of the loader alone: one untimed batch per worker (start-up), then ``loader_batches``."""
    skip = max(1, a.workers)
    loader = _loader(ds, batch, skip + a.loader_batches, a.workers, device)
    it = iter(loader)
    for _ in range(skip):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for x, _, _ in it:
        n += x.shape[0]
    sec = time.perf_counter() - t0
    del it, loader
    return {"status": "measured", "ms_per_step": sec / a.loader_batches * 1e3, "images_per_s": n / sec}


def pipeline_section(a: argparse.Namespace, device: torch.device, data: dict) -> dict:
    """(c): device augmentation alone, loader from the cached copy (c1), loader from full size (c2)."""
    augment = BatchAugment(a.size).to(device)
    images, _ = _random_batch(a, device, 2)
    times = time_cases({"augment": lambda: augment(images, train=True)}, device, a.warmup, a.steps)["augment"]
    out: dict[str, Any] = {"workers": a.workers}
    out["device_augment"] = _row(times, a.batch, settings=f"BatchAugment({a.size}) train=True, batch {a.batch}")
    suffix = a.image_suffix if a.data_root else ""
    cached = _dataset(*data["cached"], a.size)
    out["cached"] = loader_throughput(cached, a.batch, a, device)
    out["cached"]["settings"] = (f"{a.cache_size} px PNG -> uint8 {a.size} px, {_workers(a.workers)}, batch {a.batch}")
    full = _dataset(*data["full"], a.size, suffix)
    out["full_size"] = loader_throughput(full, a.full_batch, a, device)
    ext = "" if a.data_root else "JPEG "
    side = "originals" if a.data_root else f"{a.full_size} px"
    out["full_size"]["settings"] = (f"{side} {ext}-> uint8 {a.size} px, {_workers(a.workers)}, batch {a.full_batch}")
    out["decoded"] = loader_throughput(_decoded(cached, a, data), a.batch, a, device)
    out["decoded"]["settings"] = (f"memory-mapped uint8 {a.size} px cache (data.preload), {_workers(a.workers)}, "
                                  f"batch {a.batch}")
    return out


def _decoded(ds, a: argparse.Namespace, data: dict):
    """The recipes' ``data.preload`` path: (c1) decoded once into a memory-mapped uint8 cache (c3)."""
    from recipes.data.views import Preloaded

    return Preloaded(ds, a.size, Path(data["cached"][0]).parent / f"decoded_{a.size}px.npy", workers=a.workers)


# ------------------------------------------------------------------------------------ end to end

def end_to_end(a: argparse.Namespace, device: torch.device, data: dict, tmp: Path, model: nn.Module,
               train_model: nn.Module, amp: bool, channels_last: bool) -> dict:
    """(d): the trainer's student epoch (bank mode, ``train_step``) on the loader of (c3); images/s."""
    ds = _decoded(_dataset(*data["cached"], a.size), a, data)
    c = ds.targets.shape[1]
    names = [f"class{i}" for i in range(c)]
    part = Partition([list(range(c))], names=["all"], num_classes=c)
    g = torch.Generator().manual_seed(SEED)
    bank = TeacherLogitBank.write(tmp / "e2e_bank.rskd", torch.randn(len(ds), c, generator=g),
                                  class_names=names, partition=part)
    table = bank.table(device)
    lookup = torch.arange(len(ds), device=device)  # data-set row -> bank row
    augment = BatchAugment(a.size).to(device)
    task = _student(c, BankTeachers(table, lookup))
    opt = _adam(model, device)
    warm = a.warmup + max(1, a.workers)  # start-up: every worker's first batch arrives at once
    loader = _loader(ds, a.batch, warm + a.steps, a.workers, device, seed=SEED + 1)
    t0 = 0.0
    with value_checks(False):
        for step, (x, y, idx) in enumerate(loader):
            if step == warm:
                _sync(device)
                t0 = time.perf_counter()
            positions = step * a.batch + np.arange(len(idx))
            rand = keyed_uniforms(SEED, 0, positions, augment.NUM_RANDOM)
            x = augment(x.to(device, non_blocking=True), train=True, rand=rand.to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            train_step(task, train_model, [opt], x, y.to(device, non_blocking=True), idx, amp=amp)
        _sync(device)
    sec = time.perf_counter() - t0
    del loader
    return {"status": "measured", "ms_per_step": sec / a.steps * 1e3, "images_per_s": a.steps * a.batch / sec}


def end_to_end_section(a: argparse.Namespace, device: torch.device, data: dict, tmp: Path,
                       model_steps: dict, state: dict) -> dict:
    ref = reference_case(device)
    case = precision_cases(device)[ref]
    c = data["num_classes"]
    model = _model(a, c, device, case["channels_last"])
    row = end_to_end(a, device, data, tmp, model, model, case["amp"], case["channels_last"])
    del model
    _free(device)
    ref_row = model_steps[ref]
    row.update(reference=ref, reference_images_per_s=ref_row["images_per_s"],
               settings=(f"{case['settings']}, bank, {_workers(a.workers)}, decoded cache (c3)"))
    row["ratio_to_model_step"] = row["images_per_s"] / ref_row["images_per_s"]
    out: dict[str, Any] = {"eager": row}
    if "compiled" in state and c == a.classes:
        model, compiled = state["compiled"]
        crow = end_to_end(a, device, data, tmp, model, compiled, case["amp"], case["channels_last"])
        crow.update(reference="compiled", reference_images_per_s=model_steps["compiled"]["images_per_s"],
                    settings=f"torch.compile, {row['settings']}")
        crow["ratio_to_model_step"] = crow["images_per_s"] / crow["reference_images_per_s"]
        out["compiled"] = crow
    else:
        out["compiled"] = {"status": "skipped", "settings": "torch.compile (--compile to time it)"}
    return out


# ------------------------------------------------------------------------------------ report

def targets(result: dict) -> list[dict]:
    """The targets next to the measured figures: {what, measured, target, met}."""
    s, e = result["student_step"], result["end_to_end"]
    gpu = result["settings"]["device_type"] == "cuda"
    rows = [{"what": "student + bank / ERM step", "measured": s["bank"]["ratio_to_erm"],
             "target": f"<= {TARGET_BANK_RATIO:.2f}", "met": s["bank"]["ratio_to_erm"] <= TARGET_BANK_RATIO}]
    for key, row in s.items():
        if key.startswith("online_"):
            k = row["k"]
            limit = 1 + TARGET_TEACHER_SLOPE * k
            rows.append({"what": f"student + {k} online teachers / ERM step", "measured": row["ratio_to_erm"],
                         "target": f"<= {limit:.2f}", "met": row["ratio_to_erm"] <= limit})
    for key in ("eager", "compiled"):
        if e[key]["status"] == "measured":
            r = e[key]["ratio_to_model_step"]
            rows.append({"what": f"end-to-end / model-only step ({key})", "measured": r,
                         "target": f">= {TARGET_E2E_RATIO:.2f} (GPU)", "met": (r >= TARGET_E2E_RATIO) if gpu else None})
    best = max(e[k]["images_per_s"] for k in ("eager", "compiled") if e[k]["status"] == "measured")
    h_class = gpu and any(tag in result["settings"]["device"] for tag in ("H100", "H200"))
    rows.append({"what": "end-to-end images/s, best setting", "measured": best,
                 "target": f">= {TARGET_E2E_IMAGES_PER_S:,.0f} (H100/H200, resnet50, 256 px)",
                 "met": (best >= TARGET_E2E_IMAGES_PER_S) if h_class and result["settings"]["model"] == "resnet50"
                 and result["settings"]["size"] == 256 else None})
    return rows


def _fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return ""
    return f"{x:,.{digits}f}"


def render_table(result: dict) -> str:
    st = result["settings"]
    lines = [
        f"Device: {st['device']}; torch {st['torch']}, torchvision {st['torchvision']}; {st['model']}, "
        f"{st['size']} px, batch {st['batch']}, {st['classes']} classes; median of {st['steps']} steps after "
        f"{st['warmup']} warm-up ({st['timer']}); data: {st['data']}",
        "",
        "| section | case | ms/step | images/s | ratio | settings |",
        "|---|---|---:|---:|---:|---|",
    ]

    def add(section: str, case: str, row: dict, ratio_key: str | None = None, ratio_label: str = "") -> None:
        if row.get("status") != "measured":
            lines.append(f"| {section} | {case} | | {row['status']} | | {row.get('settings', '')} |")
            return
        ratio = f"{row[ratio_key]:.3f} {ratio_label}" if ratio_key else ""
        lines.append(f"| {section} | {case} | {_fmt(row['ms_per_step'], 2)} | {_fmt(row['images_per_s'], 0)} | "
                     f"{ratio} | {row.get('settings', '')} |")

    m = result["model_step"]
    for case in ("fp32", "channels_last_fp32", "bf16_channels_last", "compiled"):
        add("(a) model-only step", case, m[case])
    s = result["student_step"]
    add("(b) student step", "ERM", s["erm"])
    add("(b) student step", "bank", s["bank"], "ratio_to_erm", "x ERM")
    for key, row in s.items():
        if key.startswith("online_"):
            add("(b) student step", f"{row['k']} online teachers", row, "ratio_to_erm", "x ERM")
    p = result["pipeline"]
    add("(c) pipeline", "device augmentation", p["device_augment"])
    add("(c) pipeline", "loader, cached copy (c1)", p["cached"])
    add("(c) pipeline", "loader, full size (c2)", p["full_size"])
    add("(c) pipeline", "loader, decoded cache (c3)", p["decoded"])
    e = result["end_to_end"]
    add("(d) end to end", "student epoch, eager", e["eager"], "ratio_to_model_step", "x model-only")
    add("(d) end to end", "student epoch, compiled", e["compiled"], "ratio_to_model_step", "x model-only")
    if "trunk_cache" in result:
        lines += trunk_rows(result["trunk_cache"])
    lines += ["", "| target | measured | target | met |", "|---|---:|---|---|"]
    for t in result["targets"]:
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "no")
        digits = 0 if "images/s" in t["what"] else 3
        lines.append(f"| {t['what']} | {_fmt(t['measured'], digits)} | {t['target']} | {met} |")
    lines.append("")
    lines.append(f"Total {result['seconds']:.1f} s (data preparation {result['data_seconds']:.1f} s).")
    return "\n".join(lines)


def trunk_rows(t: dict) -> list[str]:
    """(e) as a table of its own: per k, today's and the cached epoch, the speed-up and the build."""
    lines = ["", f"(e) efficientnet_lite0, one epoch of {t['epoch_images']:,} images ({t['steps_per_epoch']} steps, "
             f"median step), {t['settings']}; cache of {t['views']} views",
             "", "| freeze k | today ms/step | cached ms/step | today epoch s | cached epoch s | speed-up | "
             "build s per 1,000 images x views |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for key, row in t.items():
        if key.startswith("k") and isinstance(row, dict):
            lines.append(f"| {key[1:]} | {_fmt(row['today_ms_per_step'], 1)} | {_fmt(row['cached_ms_per_step'], 1)} | "
                         f"{_fmt(row['today_epoch_s'], 1)} | {_fmt(row['cached_epoch_s'], 1)} | "
                         f"{_fmt(row['speedup'], 1)} x | {_fmt(row['build_s_per_1000_image_views'], 2)} |")
    return lines


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    name = name or platform.processor() or platform.machine()
    return f"CPU {name}, {_cpu_count()} cores, {torch.get_num_threads()} torch threads"


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; print the table and the JSON; return the JSON object as a dict."""
    started = time.perf_counter()
    a = parse_args(argv)
    device = torch.device(a.device)
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.manual_seed(SEED)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    state: dict = {}
    with tempfile.TemporaryDirectory(prefix="rskd_bench_") as tmp_name:
        tmp = Path(tmp_name)
        data = prepare_data(a, tmp)
        a.classes = data["num_classes"] if a.data_root else a.classes
        bad = [k for k in a.teachers if k > a.classes]
        if bad:
            raise ValueError(f"--teachers: each k must be <= the data's {a.classes} classes, got {bad}")
        settings = {
            "device": _device_name(device), "device_type": device.type, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "python": platform.python_version(), "cores": a.cores,
            "model": a.model, "width": a.width if a.model == "small_cnn" else None, "size": a.size,
            "batch": a.batch, "classes": a.classes, "steps": a.steps, "warmup": a.warmup, "teachers": a.teachers,
            "workers": a.workers, "cache_size": a.cache_size, "full_size": a.full_size, "full_batch": a.full_batch,
            "loader_batches": a.loader_batches, "compile": a.compile, "quick": a.quick, "data": data["source"],
            "timer": "CUDA events" if device.type == "cuda" else "time.perf_counter",
        }
        print(f"benchmark on {settings['device']}: {_workers(a.workers)} per loader, reference setting "
              f"{reference_case(device)}", flush=True)
        result: dict[str, Any] = {"settings": settings, "data_seconds": data["seconds"]}
        result["model_step"] = model_step_section(a, device, a.classes, state)
        result["student_step"] = student_step_section(a, device, a.classes, tmp)
        result["pipeline"] = pipeline_section(a, device, data)
        result["end_to_end"] = end_to_end_section(a, device, data, tmp, result["model_step"], state)
        state.clear()
        if a.trunk_cache:
            images = torch.from_numpy(np.array(_decoded(_dataset(*data["cached"], a.size), a, data).images))
            result["trunk_cache"] = trunk_cost.trunk_cache_section(
                a, device, data, images, tmp, time_cases, precision_cases(device)[reference_case(device)])
    result["targets"] = targets(result)
    result["seconds"] = time.perf_counter() - started
    text = json.dumps(result, indent=1, allow_nan=False)
    print(render_table(result))
    print(text)
    if a.json:
        atomic_write_text(a.json, text + "\n")
    return result


if __name__ == "__main__":
    main()
