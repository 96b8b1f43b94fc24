"""The fold's data for one run: the data set located (or generated), its splits, data sets and loaders."""
from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from recipes.data.views import Preloaded, ResumableSampler, TrunkRows
from recipes.distributed import barrier, broadcast_object
from rskd_loss import file_sha256
from rskd_loss.baselines.resample import DistributedClassAwareSampler

if TYPE_CHECKING:
    from recipes.data.csv_dataset import LabelTable


def prepare_data(cfg: Mapping, rank: int, world: int) -> dict[str, Any]:
    """Locate (or generate) the data set, load the fold's splits; returns paths, names, fold rows.

    The label columns are those named by ``data.class_names`` (a CSV without one of them, or with a
    value other than 0/1 in one, is refused naming file, line and column), else every column of
    0/1 values besides the image column (``data.image_column``, default the first): the others, such
    as a patient's age, are skipped, and rank 0 prints which columns it took and which it skipped
    (:func:`_note_label_columns`: once per CSV in a process, not for the synthetic generator's own).
    A synthetic data set already in ``data.root`` is reused only if ``data.synthetic`` matches the
    options it was generated with (:func:`_check_synthetic_options`).
    ``data.skip_bad_images`` decodes every image once on rank 0 and leaves out the rows whose image is
    missing or undecodable, with the count printed and kept in ``result.json`` (otherwise such a row
    is an error naming the file and CSV line).
    """
    from recipes.data import read_label_csv

    d = cfg["data"]
    csv = Path(d["root"]) / d["csv"]
    image_dir = Path(d["root"]) / d["image_dir"] if d["image_dir"] else Path(d["root"])
    columns = dict(class_names=d["class_names"], image_column=d["image_column"])
    split_args = dict(seed=d["split_seed"], scheme=d["scheme"], n_folds=d["n_folds"], **columns)
    bad: list = []
    if rank == 0:
        _write_missing_data(d, csv)
        _splits(csv, split_args)
        bad = _bad_images(d, csv, image_dir) if d["skip_bad_images"] else []
    bad = broadcast_object(bad, world)
    barrier(world)
    fold = _splits(csv, split_args)[d["fold"] if d["scheme"] == "kfold" else 0]
    table = read_label_csv(csv, **columns)
    csv_sha = file_sha256(csv)
    if rank == 0:
        _note_label_columns(table, csv_sha)
    targets = np.asarray(table.targets)
    bad_rows = np.asarray(sorted(b.row for b in bad), dtype=np.int64)
    fold_rows = {part: np.asarray(fold.part(part), dtype=np.int64) for part in ("train", "val", "test")}
    rows = {part: r[~np.isin(r, bad_rows)] for part, r in fold_rows.items()}  # order kept
    skipped = _skipped_summary(bad, fold_rows, rows, rank) if d["skip_bad_images"] else None
    return {"csv": csv, "csv_sha": csv_sha, "image_dir": image_dir, "class_names": tuple(table.class_names),
            "image_column": table.image_column, "rows": rows,
            "data_id": f"{csv_sha}:{d['scheme']}:split_seed{d['split_seed']}:fold{d['fold']}",
            "train_counts": targets[rows["train"]].sum(0).astype(np.int64),
            "train_targets": targets[rows["train"]], "num_rows": targets.shape[0], "bad_rows": bad_rows,
            "skipped": skipped}


def _splits(csv: Path, split_args: Mapping) -> Any:
    """The CSV's splits (made on first use); a split that cannot be made is a data error naming the CSV."""
    from recipes.data import CSVDataError, splits_for_csv
    from recipes.data.splits import SplitsMismatchError

    try:
        return splits_for_csv(csv, **split_args)
    except SplitsMismatchError:
        raise
    except ValueError as exc:
        raise CSVDataError(f"cannot split {csv}: {exc}") from exc


#: (CSV, its SHA-256, the note) of the label-column notes printed by this process: a sweep prepares
#: the same data set for each of its runs, and the note is about the data set, not the run
_NOTED: set[tuple[str, str, str]] = set()


def _note_label_columns(table: LabelTable, csv_sha: str) -> None:
    """Print which columns ``table`` took as labels (and skipped), once per CSV and process.

    Nothing for a synthetic generation's own classes (detected columns equal to those its
    ``meta.json`` lists): the package chose them, so there is nothing for the user to check or set.
    """
    from recipes.data import label_columns_message
    from recipes.data.synthetic import generation_meta

    meta = generation_meta(table.path.parent)
    if (table.detected and not table.skipped_columns and meta is not None
            and list(meta.get("class_counts", ())) == list(table.class_names)):
        return
    message = label_columns_message(table)
    key = (str(table.path.resolve()), csv_sha, message)
    if key not in _NOTED:
        _NOTED.add(key)
        print(f"data: {message}", flush=True)


def _write_missing_data(d: Mapping, csv: Path) -> None:
    """Generate the synthetic benchmark, or write RFMiD's merged CSV, when the CSV is not there yet;
    check that a synthetic one already there was generated with ``data.synthetic``."""
    if d["dataset"] == "synthetic" and csv.is_file():
        _check_synthetic_options(d)
    elif d["dataset"] == "synthetic":
        from recipes.data import generate_synthetic

        generate_synthetic(d["root"], **{k: v for k, v in d["synthetic"].items() if v is not None})
    if d["dataset"] == "rfmid" and not csv.is_file():
        from recipes.data import write_rfmid_merged_csv

        write_rfmid_merged_csv(d["root"], csv, variant=d["rfmid_variant"])


def _check_synthetic_options(d: Mapping) -> None:
    """Refuse ``data.synthetic`` options that differ from those of the generation in ``data.root`` (its
    ``meta.json``): reusing it would train on a data set other than the config says. A folder without
    a ``meta.json`` of the generator (a CSV of the user's own) has nothing to compare and is used."""
    from recipes.config import ConfigError
    from recipes.data.synthetic import generation_differences, generation_meta

    meta = generation_meta(d["root"])
    differences = generation_differences(meta, d["synthetic"]) if meta is not None else []
    if differences:
        said = "; ".join(f"{key} {there!r} in its meta.json, {asked!r} in data.synthetic"
                         for key, there, asked in differences)
        raise ConfigError(f"data.root {str(d['root'])!r} holds a synthetic data set generated with other "
                          f"options: {said}; choose another data.root, or delete {str(d['root'])!r} to have "
                          f"it generated anew with these")


def _bad_images(d: Mapping, csv: Path, image_dir: Path) -> list:
    from recipes.data import MultiLabelCSVDataset, find_bad_images

    everything = MultiLabelCSVDataset(csv, image_dir, image_column=d["image_column"], image_suffix=d["image_suffix"],
                                      class_names=d["class_names"], check_images=False, empty_classes="ignore")
    return find_bad_images(everything, d["num_workers"])


def _skipped_summary(bad: list, fold_rows: Mapping, rows: Mapping, rank: int) -> dict:
    """What ``data.skip_bad_images`` left out (count per part, the first files), printed on rank 0."""
    skipped = {"count": len(bad), **{part: len(fold_rows[part]) - len(r) for part, r in rows.items()},
               "files": [{"line": b.line, "path": str(b.path), "reason": b.reason} for b in bad[:50]]}
    if rank == 0 and bad:
        print(f"data.skip_bad_images: skipping {len(bad)} unreadable image(s) (train {skipped['train']}, "
              f"val {skipped['val']}, test {skipped['test']}); first: line {bad[0].line} {bad[0].path}: "
              f"{bad[0].reason}", file=sys.stderr, flush=True)
    return skipped


def make_dataset(cfg: Mapping, data: Mapping, part: str):
    """The fold's ``part`` rows as uint8 (3, size, size) images; augmentation runs on the device. With
    ``model.cache_trunk`` the rows themselves (:class:`TrunkRows`): their features are read on the device."""
    from recipes.data import MultiLabelCSVDataset
    from recipes.data.transforms import uint8_transform

    d = cfg["data"]
    size = d["image_size"]
    rows = data["rows"][part]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes without positives in a split: reported by the metrics
        ds = MultiLabelCSVDataset(data["csv"], data["image_dir"], image_column=data["image_column"],
                                  image_suffix=d["image_suffix"],
                                  class_names=data["class_names"], indices=rows,
                                  transform=None if d["preload"] else uint8_transform(size))
    if cfg["model"].get("cache_trunk"):
        return TrunkRows(ds)
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
