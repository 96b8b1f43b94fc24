"""Teacher logits for the student: online (k frozen models) or cached (a memory-mapped bank).

Both give one (N, C) tensor in the student's class order: teacher k predicts only the classes of
subset k of the partition, and its |S_k| outputs are scattered into those columns.
"""
from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .fileio import atomic_path, file_sha256
from .validation import as_class_names, check_int

__all__ = ["SubsetTeachers", "TeacherLogitBank", "file_sha256"]


def _subsets_of(partition: Any) -> tuple[tuple[int, ...], ...]:
    subsets = getattr(partition, "subsets", None)
    if subsets is None or not hasattr(partition, "num_classes"):
        raise TypeError(
            f"partition must be a rskd_loss.Partition (with .subsets and .num_classes), got "
            f"{type(partition).__name__}"
        )
    return tuple(tuple(int(c) for c in s) for s in subsets)


class SubsetTeachers(nn.Module):
    r"""k frozen subset teachers that together give one (N, C) logit tensor.

    Teacher k maps an image batch to (N, |S_k|) logits for the classes of subset k, in the order of
    ``partition.subsets[k]``; :meth:`forward` scatters them into the columns of those classes. The
    teachers are frozen: parameters do not require grad, the module stays in eval mode even when a
    parent calls ``.train()`` (batch-norm statistics never move), and forward runs under
    ``torch.no_grad()``. It works under autocast (the output has the dtype the teachers produce).
    Keep it out of ``DistributedDataParallel``: it has nothing to synchronise.

    Args:
        models: k teacher models, one per subset, in the order of ``partition.subsets``.
        partition: a :class:`rskd_loss.Partition` whose subsets cover all C classes.

    Shape:
        - input: whatever the teachers take, e.g. (N, 3, H, W).
        - output: (N, C).

    Example:
        >>> from rskd_loss import Partition
        >>> part = Partition(subsets=((0, 2), (1,)), names=("a", "b"), num_classes=3)
        >>> teachers = SubsetTeachers([nn.Linear(4, 2), nn.Linear(4, 1)], part)
        >>> teachers(torch.randn(5, 4)).shape
        torch.Size([5, 3])
    """

    def __init__(self, models: Sequence[nn.Module], partition: Any) -> None:
        super().__init__()
        subsets = _subsets_of(partition)
        models = list(models)
        if not subsets:
            raise ValueError("partition must have at least one subset, got none")
        if len(models) != len(subsets):
            raise ValueError(
                f"need one teacher per subset: the partition has {len(subsets)} subsets, got {len(models)} models"
            )
        for k, m in enumerate(models):
            if not isinstance(m, nn.Module):
                raise TypeError(f"models[{k}] must be an nn.Module, got {type(m).__name__}")
        self.teachers = nn.ModuleList(models)
        self.num_classes = int(partition.num_classes)
        self.partition = partition
        for k, idx in enumerate(subsets):
            self.register_buffer(f"columns_{k}", torch.tensor(idx, dtype=torch.long), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> SubsetTeachers:
        """Teachers stay in eval mode whatever ``mode`` is asked for."""
        return super().train(False)

    def columns(self, k: int) -> torch.Tensor:
        return getattr(self, f"columns_{k}")

    @torch.no_grad()
    def forward(self, x: Any) -> torch.Tensor:
        out: torch.Tensor | None = None
        for k, teacher in enumerate(self.teachers):
            z = teacher(x)
            cols = self.columns(k)
            if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != cols.numel():
                shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(
                    f"teacher {k} must return (N, {cols.numel()}) logits for its subset "
                    f"{tuple(cols.tolist())}, got {shape}"
                )
            if out is None:
                out = z.new_empty((z.shape[0], self.num_classes))
            elif z.shape[0] != out.shape[0]:
                raise ValueError(f"teacher {k} returned {z.shape[0]} rows, teacher 0 returned {out.shape[0]}")
            out[:, cols] = z.to(out.dtype)
        return out  # type: ignore[return-value]  # >= 1 teacher, checked in __init__


# ---------------------------------------------------------------------------- cached logits

_MAGIC = b"RSKDBANK"
_VERSION = 1
_ALIGN = 64
_PREFIX = struct.Struct("<8sIQ")  # magic, format version, header length in bytes


def _partition_record(partition: Any) -> dict:
    subsets = _subsets_of(partition)
    fp = partition.fingerprint() if hasattr(partition, "fingerprint") else None
    return {"subsets": [list(s) for s in subsets], "names": list(getattr(partition, "names", ())), "fingerprint": fp}


class TeacherLogitBank:
    r"""Teacher logits computed once over a training set, stored as a memory-mapped float16 array.

    With the bank, a student step costs what an ERM step costs: no teacher forward per batch (on an
    H200, ResNet-50 at 256 px, batch 256: 1.00x ERM, against 1.90x with three online teachers, as
    measured by ``recipes/benchmark/run_cost.py``, section (b)).

    File format (one file, no pickle): ``b"RSKDBANK"``, a uint32 format version, a uint64 header
    length, a UTF-8 JSON header (num_samples, num_classes, class_names, partition subsets / names /
    fingerprint, teacher checkpoint hashes, a data-set fingerprint, free metadata), zero padding to a
    64-byte boundary, then the (N, C) float16 logits in C order. Files are written to a temporary
    file in the same folder and renamed, so a killed writer never leaves a half-written bank.

    float16 keeps logits to about 3 significant digits in [-65504, 65504]; values beyond are
    refused at build time (a teacher logit that large is a bug). At T = 10 the KD loss is
    insensitive to that rounding.

    Example:
        >>> import tempfile, os
        >>> from rskd_loss import Partition
        >>> part = Partition(subsets=((0,), (1, 2)), names=("a", "b"), num_classes=3)
        >>> path = os.path.join(tempfile.mkdtemp(), "bank.rskd")
        >>> bank = TeacherLogitBank.write(path, torch.randn(10, 3), class_names=["x", "y", "z"], partition=part)
        >>> bank[torch.tensor([0, 7])].shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        num_samples: int | None = None,
        class_names: Sequence[str] | None = None,
        partition: Any | None = None,
        dataset: str | None = None,
        teacher_hashes: Sequence[str] | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.header, offset = self._read_header(self.path)
        n, c = self.header["num_samples"], self.header["num_classes"]
        expected_size = offset + n * c * 2
        actual = os.path.getsize(self.path)
        if actual != expected_size:
            raise ValueError(
                f"{self.path}: teacher-logit bank is truncated or padded: expected {expected_size} bytes "
                f"for ({n}, {c}) float16 logits, got {actual}"
            )
        self._array = np.memmap(self.path, dtype=np.float16, mode="r", offset=offset, shape=(n, c))
        self._device_copy: torch.Tensor | None = None
        self.check(
            num_samples=num_samples, class_names=class_names, partition=partition, dataset=dataset,
            teacher_hashes=teacher_hashes,
        )

    # ---- reading
    @staticmethod
    def _read_header(path: str) -> tuple[dict, int]:
        try:
            with open(path, "rb") as f:
                prefix = f.read(_PREFIX.size)
                if len(prefix) < _PREFIX.size or prefix[:8] != _MAGIC:
                    raise ValueError(f"{path}: not a teacher-logit bank (expected the magic bytes {_MAGIC!r})")
                _, version, hlen = _PREFIX.unpack(prefix)
                if version != _VERSION:
                    raise ValueError(f"{path}: bank format version {version}, this library reads version {_VERSION}")
                raw = f.read(hlen)
        except FileNotFoundError:
            raise FileNotFoundError(f"teacher-logit bank not found: {path}") from None
        if len(raw) != hlen:
            raise ValueError(f"{path}: teacher-logit bank header is truncated")
        header = json.loads(raw.decode("utf-8"))
        offset = -(-(_PREFIX.size + hlen) // _ALIGN) * _ALIGN
        return header, offset

    @property
    def num_samples(self) -> int:
        return int(self.header["num_samples"])

    @property
    def num_classes(self) -> int:
        return int(self.header["num_classes"])

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.header["class_names"])

    def __len__(self) -> int:
        return self.num_samples

    def check(
        self,
        *,
        num_samples: int | None = None,
        class_names: Sequence[str] | None = None,
        partition: Any | None = None,
        dataset: str | None = None,
        teacher_hashes: Sequence[str] | None = None,
    ) -> None:
        """Raise ``ValueError`` if the bank was built for another data set, class list, partition or teachers."""
        h = self.header
        problems = []
        if num_samples is not None and int(num_samples) != h["num_samples"]:
            problems.append(f"num_samples: bank has {h['num_samples']}, expected {num_samples}")
        if class_names is not None and list(class_names) != h["class_names"]:
            exp = list(class_names)
            diff = [f"index {i}: bank {a!r}, expected {b!r}"
                    for i, (a, b) in enumerate(zip(h["class_names"], exp)) if a != b]
            problems.append(
                f"class_names: bank has {len(h['class_names'])} names, expected {len(exp)}"
                + (f" (first differences: {', '.join(diff[:3])})" if diff else "")
            )
        if partition is not None:
            rec = _partition_record(partition)
            if rec["subsets"] != h["partition"]["subsets"]:
                problems.append(f"partition: bank has subsets {h['partition']['subsets']}, expected {rec['subsets']}")
        if dataset is not None and dataset != h.get("dataset"):
            problems.append(f"dataset: bank was built for {h.get('dataset')!r}, expected {dataset!r}")
        if teacher_hashes is not None and list(teacher_hashes) != h.get("teacher_hashes"):
            problems.append("teacher_hashes: the bank was built from other teacher checkpoints")
        if problems:
            raise ValueError(f"{self.path}: teacher-logit bank does not match this run: " + "; ".join(problems))

    def to(self, device: torch.device | str) -> TeacherLogitBank:
        """Copy the whole bank (N*C*2 bytes, e.g. 5 MB for 56,000 x 48) to ``device`` once; returns self."""
        self._device_copy = torch.from_numpy(np.array(self._array)).to(device)
        return self

    def __getitem__(self, indices: object) -> torch.Tensor:
        """(B,) sample indices -> (B, C) float32 logits, on the device of :meth:`to` (CPU by default)."""
        if isinstance(indices, torch.Tensor):
            if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
                raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
            idx = indices
        else:
            idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(
                f"sample index out of range for a bank of {self.num_samples} samples: "
                f"got min {int(idx.min())}, max {int(idx.max())}"
            )
        if self._device_copy is not None:
            return self._device_copy[idx.to(self._device_copy.device)].float()
        rows = self._array[idx.cpu().numpy()]
        return torch.from_numpy(rows.astype(np.float32))

    def table(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The whole bank as one (N, C) float16 tensor on ``device`` (default: that of :meth:`to`, else CPU).

        For a training loop that indexes it with rows it has validated once: ``table[rows]`` needs no
        range check per step, and so no host-device synchronisation.
        """
        if self._device_copy is not None and (device is None or torch.device(device) == self._device_copy.device):
            return self._device_copy
        return torch.from_numpy(np.array(self._array)).to(device or "cpu")

    def numpy(self) -> np.ndarray:
        """The whole (N, C) float16 array (read-only memory map)."""
        return self._array

    # ---- writing
    @classmethod
    def write(
        cls,
        path: str | os.PathLike,
        logits: object,
        *,
        class_names: Sequence[str],
        partition: Any,
        teacher_hashes: Sequence[str] = (),
        dataset: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TeacherLogitBank:
        """Write (N, C) logits and their header atomically to ``path`` and open the result."""
        if isinstance(logits, torch.Tensor):
            arr = logits.detach().to("cpu", torch.float32).numpy()
        else:
            arr = np.asarray(logits)
        if arr.ndim != 2:
            raise ValueError(f"logits must be 2-D (N, C), got shape {arr.shape}")
        with _bank_writer(path, arr.shape[0], class_names=class_names, partition=partition,
                          teacher_hashes=teacher_hashes, dataset=dataset, metadata=metadata) as out:
            out[:] = cls._to_f16(arr, path)
        return cls(path)

    @staticmethod
    def _to_f16(arr: np.ndarray, path: object) -> np.ndarray:
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            r, c = np.argwhere(~np.isfinite(arr))[0]
            raise ValueError(f"{path}: teacher logits must be finite, got {arr[r, c]} at ({r}, {c})")
        big = np.abs(arr) > 65504
        if big.any():
            r, c = np.argwhere(big)[0]
            raise ValueError(f"{path}: teacher logit {arr[r, c]} at ({r}, {c}) does not fit float16 (|z| <= 65504)")
        return arr.astype(np.float16)

    @classmethod
    @torch.no_grad()
    def from_teachers(
        cls,
        path: str | os.PathLike,
        teachers: nn.Module,
        loader: Iterable,
        num_samples: int,
        *,
        class_names: Sequence[str],
        partition: Any,
        device: torch.device | str = "cpu",
        teacher_hashes: Sequence[str] = (),
        dataset: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> TeacherLogitBank:
        """Run ``teachers`` (e.g. :class:`SubsetTeachers`) over ``loader`` once and write the bank.

        ``loader`` yields ``(images, targets, indices)`` batches (the data sets of ``recipes/data``);
        each row is stored at its sample index. Every index in ``range(num_samples)`` must be seen
        exactly once (a ``ValueError`` names the first missing or repeated one), so a shuffled or
        class-aware-sampled loader is refused instead of silently leaving rows empty.
        """
        seen = np.zeros(num_samples, dtype=np.int64)
        device = torch.device(device)
        with _bank_writer(path, num_samples, class_names=class_names, partition=partition,
                          teacher_hashes=teacher_hashes, dataset=dataset, metadata=metadata) as out:
            for batch in loader:
                if not isinstance(batch, (tuple, list)) or len(batch) < 3:
                    raise ValueError("loader must yield (images, targets, indices) batches")
                images, _, idx = batch[0], batch[1], batch[2]
                idx = torch.as_tensor(idx).long().cpu().numpy()
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    z = teachers(images.to(device, non_blocking=True))
                out[idx] = cls._to_f16(z.float().cpu().numpy(), path)
                np.add.at(seen, idx, 1)
            if (seen != 1).any():
                bad = int(np.flatnonzero(seen != 1)[0])
                raise ValueError(
                    f"every sample index in range({num_samples}) must be seen exactly once; index {bad} "
                    f"was seen {int(seen[bad])} times (use an unshuffled loader without a sampler)"
                )
        return cls(path)


@contextlib.contextmanager
def _bank_writer(path, num_samples, *, class_names, partition, teacher_hashes=(), dataset=None, metadata=None):
    """Yield a writable (N, C) float16 memory map in a temporary file, renamed onto ``path`` on success."""
    names = as_class_names(class_names)
    rec = _partition_record(partition)
    if int(partition.num_classes) != len(names):
        raise ValueError(f"partition covers {partition.num_classes} classes, class_names has {len(names)}")
    shape = (check_int(num_samples, "num_samples", minimum=1), len(names))
    header = json.dumps({
        "num_samples": shape[0], "num_classes": shape[1], "class_names": list(names), "partition": rec,
        "teacher_hashes": [str(h) for h in teacher_hashes], "dataset": dataset, "metadata": dict(metadata or {}),
    }, sort_keys=True).encode("utf-8")
    prefix = _PREFIX.pack(_MAGIC, _VERSION, len(header))
    offset = -(-(len(prefix) + len(header)) // _ALIGN) * _ALIGN
    with atomic_path(path, fsync=True) as tmp:
        with open(tmp, "xb") as f:
            f.write(prefix + header + b"\0" * (offset - len(prefix) - len(header)))
            f.truncate(offset + shape[0] * shape[1] * 2)
        out = np.memmap(tmp, dtype=np.float16, mode="r+", offset=offset, shape=shape)
        yield out
        out.flush()
        del out  # close the memory map before the rename
