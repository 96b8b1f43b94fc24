"""The fold's data for one run: the data set located (or generated), its splits, data sets and loaders."""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from recipes.distributed import barrier, broadcast_object
from recipes.views import Preloaded, ResumableSampler
from rskd_loss import file_sha256
from rskd_loss.baselines.resample import DistributedClassAwareSampler


def prepare_data(cfg: Mapping, rank: int, world: int) -> dict[str, Any]:
    """Locate (or generate) the data set, load the fold's splits; returns paths, names, fold rows.

    ``data.class_names`` pins the label columns (a CSV without one of them is refused, naming it);
    ``data.skip_bad_images`` decodes every image once on rank 0 and leaves out the rows whose image is
    missing or undecodable, with the count printed and kept in ``result.json`` (otherwise such a row
    is an error naming the file and CSV line).
    """
    from recipes.data import MultiLabelCSVDataset, find_bad_images, read_label_csv, splits_for_csv

    d = cfg["data"]
    root = Path(d["root"])
    csv = root / d["csv"]
    image_dir = root / d["image_dir"] if d["image_dir"] else root
    bad: list = []
    # one split file per setting, so that another data.split_seed or scheme gets its own beside it
    tag = "holdout" if d["scheme"] == "holdout" else f"kfold{d['n_folds']}"
    split_args = dict(seed=d["split_seed"], scheme=d["scheme"], n_folds=d["n_folds"],
                      path=csv.parent / f"splits_{tag}_seed{d['split_seed']}.json")
    if rank == 0:
        if d["dataset"] == "synthetic" and not csv.is_file():
            from recipes.data import generate_synthetic

            kw = {k: v for k, v in d["synthetic"].items() if v is not None}
            generate_synthetic(root, **kw)
        if d["dataset"] == "rfmid" and not csv.is_file():
            from recipes.data import write_rfmid_merged_csv

            write_rfmid_merged_csv(root, csv, variant=d["rfmid_variant"])
        splits_for_csv(csv, **split_args)
        if d["skip_bad_images"]:
            everything = MultiLabelCSVDataset(csv, image_dir, image_suffix=d["image_suffix"],
                                              class_names=d["class_names"], check_images=False,
                                              empty_classes="ignore")
            bad = find_bad_images(everything, d["num_workers"])
    bad = broadcast_object(bad, world)
    barrier(world)
    splits = splits_for_csv(csv, **split_args)
    fold = splits[d["fold"] if d["scheme"] == "kfold" else 0]
    table = read_label_csv(csv, class_names=d["class_names"])
    targets = np.asarray(table.targets)
    bad_rows = np.asarray(sorted(b.row for b in bad), dtype=np.int64)
    fold_rows = {part: np.asarray(fold.part(part), dtype=np.int64) for part in ("train", "val", "test")}
    rows = {part: r[~np.isin(r, bad_rows)] for part, r in fold_rows.items()}  # order kept
    skipped = None
    if d["skip_bad_images"]:
        skipped = {"count": len(bad), **{part: len(fold_rows[part]) - len(r) for part, r in rows.items()},
                   "files": [{"line": b.line, "path": str(b.path), "reason": b.reason} for b in bad[:50]]}
        if rank == 0 and bad:
            print(f"data.skip_bad_images: skipping {len(bad)} unreadable image(s) (train {skipped['train']}, "
                  f"val {skipped['val']}, test {skipped['test']}); first: line {bad[0].line} {bad[0].path}: "
                  f"{bad[0].reason}", file=sys.stderr, flush=True)
    csv_sha = file_sha256(csv)
    return {"csv": csv, "csv_sha": csv_sha, "image_dir": image_dir, "class_names": tuple(table.class_names),
            "rows": rows, "data_id": f"{csv_sha}:{d['scheme']}:split_seed{d['split_seed']}:fold{d['fold']}",
            "train_counts": targets[rows["train"]].sum(0).astype(np.int64),
            "train_targets": targets[rows["train"]], "num_rows": targets.shape[0], "bad_rows": bad_rows,
            "skipped": skipped}


def make_dataset(cfg: Mapping, data: Mapping, part: str):
    """The fold's ``part`` rows as uint8 (3, size, size) images; augmentation runs on the device."""
    from recipes.data import MultiLabelCSVDataset
    from recipes.data.transforms import uint8_transform

    d = cfg["data"]
    size = d["image_size"]
    rows = data["rows"][part]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without positives in a split: reported by the metrics
        ds = MultiLabelCSVDataset(data["csv"], data["image_dir"], image_suffix=d["image_suffix"],
                                  class_names=data["class_names"], indices=rows,
                                  transform=None if d["preload"] else uint8_transform(size))
    if not d["preload"]:
        return ds
    cache = Path(d["root"]) / ".cache" / f"decoded_{size}px_{data['csv_sha'][:16]}.npy"
    return Preloaded(ds, size, cache, skip_rows=data["bad_rows"], workers=d["num_workers"])


def make_loader(cfg: Mapping, ds, *, train: bool, world: int, rank: int, sampler_kind: str | None = None,
                targets: np.ndarray | None = None, seed: int = 0) -> DataLoader:
    """A loader whose training order is a pure function of (seed, epoch), shared by every world size.

    Training: each rank takes every ``world``-th position of one shared per-epoch sequence (a shuffle,
    or the class-aware draw), wrapped in :class:`ResumableSampler` so that a resumed epoch can
    start at the step where the run stopped. Evaluation: in order (one shard per rank under torchrun).
    """
    d = cfg["data"]
    sampler = None
    if train:
        if sampler_kind == "class_aware":
            sampler = DistributedClassAwareSampler(targets, num_replicas=world, rank=rank,
                                                   num_samples_cls=cfg["method"]["num_samples_cls"], seed=seed)
        else:
            sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        sampler = ResumableSampler(sampler)
    elif world > 1:
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
    workers = d["num_workers"]
    return DataLoader(ds, batch_size=d["batch_size"] if train else d["eval_batch_size"], sampler=sampler,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), generator=torch.Generator(),
                      drop_last=train and len(sampler) > d["batch_size"], persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None)
