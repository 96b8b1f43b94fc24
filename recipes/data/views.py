"""Data views and samplers of the training loop: the decoded-image cache (``data.preload``), the rows of
the cached-trunk path (``model.cache_trunk``), a teacher's view (rows and label columns), and a sampler
that can start an epoch part-way (resume)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rskd_loss.fileio import atomic_path, reserve_space


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


class TrunkRows(Dataset):
    """The rows of ``base`` for the cached-trunk path (``model.cache_trunk``): an item is its CSV row as the
    "image" (a 0-d int64 tensor), its target and the row; ``recipes.engine.trunk_cache.TrunkViews`` turns a
    batch of rows into their cached features on the device. Nothing is decoded."""

    def __init__(self, base: Any) -> None:
        self.rows = np.asarray(base.indices, dtype=np.int64)
        self.targets = torch.from_numpy(np.asarray(base.targets, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        row = int(self.rows[i])
        return torch.tensor(row, dtype=torch.int64), self.targets[i], row


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

        everything = MultiLabelCSVDataset(base.csv_path, base.image_dir, image_column=base.image_column,
                                          class_names=base.class_names, image_suffix=base.image_suffix,
                                          transform=uint8_transform(size), empty_classes="ignore",
                                          check_images=not skip)
        keep = np.setdiff1d(np.arange(len(everything)), skip)
        loader = DataLoader(Subset(everything, keep.tolist()), batch_size=64, num_workers=workers,
                            generator=torch.Generator())  # leaves the global RNG (model init) alone
        with atomic_path(cache_file, fsync=True) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(everything), 3, size, size))
            reserve_space(tmp)  # a full disk: an error here, not a SIGBUS at a later page write
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
