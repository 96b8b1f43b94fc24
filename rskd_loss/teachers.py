"""Teacher logits for the student: online (k frozen models) or cached (a memory-mapped bank).

Both give one (N, C) tensor in the student's class order: teacher k predicts only the classes of
subset k of the partition, and its |S_k| outputs are scattered into those columns.
"""
from __future__ import annotations

import contextlib
import hashlib
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

__all__ = ["SubsetTeachers", "CrossFitTeachers", "TeacherLogitBank", "file_sha256", "part_of_samples"]


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


# ---------------------------------------------------------------------------- cross-fitted teachers

def part_of_samples(parts: Sequence[object], num_samples: int | None = None) -> np.ndarray:
    """(N,) int64: the part holding each sample index of ``parts`` (K disjoint arrays covering ``range(N)``).

    ``num_samples`` defaults to the parts' total size. ``ValueError`` names the first index that is in
    two parts, in none, or out of range, and refuses K < 2 or an empty part.
    """
    arrays = [np.asarray(p).reshape(-1) for p in parts]
    if len(arrays) < 2:
        raise ValueError(f"parts must hold K >= 2 index arrays (K = 1 leaves no teacher set an image "
                         f"it did not see), got {len(arrays)}")
    for k, a in enumerate(arrays):
        if a.size == 0:
            raise ValueError(f"parts[{k}] is empty: every part needs at least one sample")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"parts[{k}] must hold integer sample indices, got dtype {a.dtype}")
    n = sum(a.size for a in arrays) if num_samples is None else check_int(num_samples, "num_samples", minimum=1)
    part_of = np.full(n, -1, dtype=np.int64)
    for k, a in enumerate(arrays):
        if a.min() < 0 or a.max() >= n:
            bad = int(a[(a < 0) | (a >= n)][0])
            raise ValueError(f"parts[{k}] holds sample index {bad}, outside range({n})")
        taken = part_of[a] >= 0
        dup = np.unique(a, return_counts=True)
        if taken.any() or (dup[1] > 1).any():
            i = int(a[taken][0]) if taken.any() else int(dup[0][dup[1] > 1][0])
            where = f"parts[{int(part_of[i])}] and parts[{k}]" if taken.any() else f"parts[{k}] twice"
            raise ValueError(f"parts overlap: sample index {i} is in {where}; each sample must be in exactly "
                             f"one part")
        part_of[a] = k
    if (part_of < 0).any():
        missing = np.flatnonzero(part_of < 0)
        raise ValueError(f"parts do not cover the training set: {missing.size} of {n} sample indices are in no "
                         f"part (first: {int(missing[0])}); each sample must be in exactly one part")
    return part_of


def crossfit_record(part_of: np.ndarray) -> dict[str, Any]:
    """The bank metadata entry of a cross-fitted bank: K, the part of every row, and its SHA-256."""
    part_of = np.ascontiguousarray(part_of, dtype=np.int64)
    return {"k": int(part_of.max()) + 1, "part_of": part_of.tolist(),
            "sha256": hashlib.sha256(part_of.astype("<i8").tobytes()).hexdigest()}


class CrossFitTeachers(nn.Module):
    r"""K teacher sets for out-of-fold logits: set k was trained on every training sample except part k.

    RSKD's bank holds the teachers' logits of the training images. A teacher's logits on the images
    it trained on mostly repeat their labels, so the student distils little beyond the hard labels.
    Cross-fitting (out-of-fold prediction, as in stacking) gives each training image the logits of
    the one set that did not see it.

    - ``forward(x, indices)``: ``indices`` (B,) are training-sample indices; row i comes from set
      ``part_of[indices[i]]``. :meth:`TeacherLogitBank.from_teachers` calls it this way and records
      the parts in the bank's metadata (:meth:`TeacherLogitBank.crossfit_parts` reads them back).
    - ``forward(x)``: images outside the training set (validation): the mean of the K sets' logits.
      No set saw a validation image, so each set's logits there are out of sample and none is
      preferred; their mean is the K-set ensemble. It is what Eq. 3's teacher metric is measured on
      (:func:`rskd_loss.workflow.teacher_average_precision`). A training row's logits come from one
      set, so this metric is, if anything, slightly above that of the logits the student distils.

    Args:
        sets: K :class:`SubsetTeachers`, one per part, of the same partition (frozen, like them).
        parts: K disjoint arrays of training-sample indices covering ``range(N)`` (e.g.
            :func:`rskd_loss.workflow.crossfit_parts`); set k trained on every part but ``parts[k]``.
        num_samples: N (default: the parts' total size).

    Example:
        >>> from rskd_loss import Partition
        >>> part = Partition(subsets=((0,), (1,)), names=("a", "b"), num_classes=2)
        >>> sets = [SubsetTeachers([nn.Linear(3, 1), nn.Linear(3, 1)], part) for _ in range(2)]
        >>> xf = CrossFitTeachers(sets, [[0, 2], [1, 3]])
        >>> xf(torch.randn(2, 3), torch.tensor([3, 0])).shape, xf.part_of.tolist()
        (torch.Size([2, 2]), [0, 1, 0, 1])
    """

    def __init__(self, sets: Sequence[SubsetTeachers], parts: Sequence[object], num_samples: int | None = None) -> None:
        super().__init__()
        sets = list(sets)
        for k, s in enumerate(sets):
            if not isinstance(s, SubsetTeachers):
                raise TypeError(f"sets[{k}] must be a SubsetTeachers (one teacher set), got {type(s).__name__}")
            if _subsets_of(s.partition) != _subsets_of(sets[0].partition):
                raise ValueError(f"sets[{k}] was built for subsets {_subsets_of(s.partition)}, sets[0] for "
                                 f"{_subsets_of(sets[0].partition)}: every set needs the same partition")
        part_of = part_of_samples(parts, num_samples)
        if len(sets) != int(part_of.max()) + 1:
            raise ValueError(f"need one teacher set per part: {int(part_of.max()) + 1} parts, got {len(sets)} sets")
        self.sets = nn.ModuleList(sets)
        self.partition, self.num_classes = sets[0].partition, sets[0].num_classes
        self.register_buffer("part_of", torch.from_numpy(part_of), persistent=False)
        self.requires_grad_(False)
        super().train(False)

    @property
    def num_parts(self) -> int:
        return len(self.sets)

    @property
    def num_samples(self) -> int:
        return int(self.part_of.numel())

    def train(self, mode: bool = True) -> CrossFitTeachers:
        """The sets stay in eval mode whatever ``mode`` is asked for."""
        return super().train(False)

    def record(self) -> dict[str, Any]:
        """The ``"crossfit"`` metadata entry of a bank built from these sets."""
        return crossfit_record(self.part_of.cpu().numpy())

    @torch.no_grad()
    def forward(self, x: Any, indices: object = None) -> torch.Tensor:
        if indices is None:
            outs = [s(x) for s in self.sets]
            return torch.stack([z.float() for z in outs]).mean(0).to(outs[0].dtype)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"routing rows by indices needs a tensor batch, got {type(x).__name__}")
        idx = torch.as_tensor(indices).reshape(-1).long().to(self.part_of.device)
        if idx.numel() != x.shape[0]:
            raise ValueError(f"indices must hold one sample index per row: {x.shape[0]} rows, got {idx.numel()}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise IndexError(f"sample index out of range({self.num_samples}): got min {int(idx.min())}, "
                             f"max {int(idx.max())}")
        part = self.part_of[idx]
        out: torch.Tensor | None = None
        for k in torch.unique(part).tolist():
            rows = torch.nonzero(part == k).squeeze(1)
            z = self.sets[k](x[rows.to(x.device)])
            if out is None:
                out = z.new_empty((x.shape[0], z.shape[1]))
            out[rows.to(out.device)] = z.to(out.dtype)
        return out if out is not None else x.new_empty((0, self.num_classes))


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

    def crossfit_parts(self) -> list[np.ndarray] | None:
        """The K parts of a cross-fitted bank (row i's logits came from the set that left out its part), in
        part order; ``None`` for a bank of in-sample logits. ``ValueError`` for a record that does not fit
        the bank (another row count, a part out of range or empty, a hash that does not match)."""
        rec = (self.header.get("metadata") or {}).get("crossfit")
        if rec is None:
            return None
        part_of = np.asarray(rec.get("part_of", []), dtype=np.int64)
        k = int(rec.get("k", 0))
        problem = None
        if part_of.shape != (self.num_samples,):
            problem = f"it names the part of {part_of.size} rows, the bank has {self.num_samples}"
        elif k < 2 or part_of.min() < 0 or part_of.max() >= k or np.unique(part_of).size != k:
            problem = f"it needs parts 0..{k - 1}, each with a row, got parts {np.unique(part_of).tolist()[:10]}"
        elif crossfit_record(part_of)["sha256"] != rec.get("sha256"):
            problem = "its SHA-256 does not match the parts it lists"
        if problem:
            raise ValueError(f"{self.path}: the bank's cross-fitting record is invalid: {problem}")
        return [np.flatnonzero(part_of == j) for j in range(k)]

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

        With :class:`CrossFitTeachers`, each row comes from the set that left its sample out, and the
        parts are recorded in the metadata under ``"crossfit"`` (:meth:`crossfit_parts`).

        ``loader`` yields ``(images, targets, indices)`` batches (the data sets of ``recipes/data``);
        each row is stored at its sample index. Every index in ``range(num_samples)`` must be seen
        exactly once (a ``ValueError`` names the first missing or repeated one), so a shuffled or
        class-aware-sampled loader is refused instead of silently leaving rows empty.
        """
        seen = np.zeros(num_samples, dtype=np.int64)
        device = torch.device(device)
        crossfit = isinstance(teachers, CrossFitTeachers)
        if crossfit:
            metadata = _with_crossfit(metadata, teachers, num_samples)
        with _bank_writer(path, num_samples, class_names=class_names, partition=partition,
                          teacher_hashes=teacher_hashes, dataset=dataset, metadata=metadata) as out:
            for batch in loader:
                if not isinstance(batch, (tuple, list)) or len(batch) < 3:
                    raise ValueError("loader must yield (images, targets, indices) batches")
                images, _, idx = batch[0], batch[1], batch[2]
                idx = torch.as_tensor(idx).long().cpu().numpy()
                with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                    enabled=autocast_dtype is not None):
                    x = images.to(device, non_blocking=True)
                    z = teachers(x, torch.from_numpy(idx)) if crossfit else teachers(x)
                out[idx] = cls._to_f16(z.float().cpu().numpy(), path)
                np.add.at(seen, idx, 1)
            if (seen != 1).any():
                bad = int(np.flatnonzero(seen != 1)[0])
                raise ValueError(
                    f"every sample index in range({num_samples}) must be seen exactly once; index {bad} "
                    f"was seen {int(seen[bad])} times (use an unshuffled loader without a sampler)"
                )
        return cls(path)


def _with_crossfit(metadata: Mapping[str, Any] | None, teachers: CrossFitTeachers, num_samples: int) -> dict:
    """``metadata`` plus the ``"crossfit"`` record of ``teachers`` (whose parts must cover the bank's rows)."""
    if teachers.num_samples != num_samples:
        raise ValueError(f"the cross-fitted teachers' parts cover {teachers.num_samples} samples, the bank has "
                         f"num_samples={num_samples}")
    if metadata and "crossfit" in metadata:
        raise ValueError("metadata key 'crossfit' is reserved: the bank records the teachers' parts under it")
    return {**(metadata or {}), "crossfit": teachers.record()}


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
