"""RSKD's workflow for your own training loop: teacher data sets, the logit bank, Eq. 3 each epoch.

1. :func:`teacher_datasets`: one data set per subset (its view of the images, its target columns).
2. Train one model per subset on them (your loop); wrap them in :class:`SubsetTeachers`.
3. :func:`build_bank`: the teachers' logits of every training image, once (a :class:`TeacherLogitBank`).
   Cross-fitted (out-of-fold): :func:`crossfit_parts` splits the training images into K parts, set k
   of teachers trains on :func:`parts_except` ``(parts, k)``, and ``build_bank(..., parts=parts)``
   takes each image's logits from the set that did not see it.
4. :func:`teacher_average_precision`: the teachers' per-class validation AP, once.
5. Train the student with :class:`IndexedDataset` (``bank[index]`` per batch) and
   :class:`WeightedSubsetKDLoss`; after every validation, :meth:`KDWeightUpdater.step` (Eq. 3).

Batches are read through small adapters (``batch -> (inputs, indices)`` and ``batch -> (inputs,
targets)``); the defaults take tuples ``(x, y, index, ...)`` or dicts with keys ``"input"``,
``"target"`` and ``"index"``. README, "RSKD in your own training loop", has a complete example.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .kd import WeightedSubsetKDLoss
from .metrics import average_precision_per_class
from .partition import Partition, TeacherView
from .teachers import CrossFitTeachers, SubsetTeachers, TeacherLogitBank
from .validation import as_class_metric, as_multi_hot

__all__ = ["IndexedDataset", "TeacherViewDataset", "teacher_datasets", "build_bank", "teacher_average_precision",
           "KDWeightUpdater", "inputs_and_indices", "inputs_and_targets", "crossfit_parts", "parts_except"]

Batch = Any


def _field(item: Any, position: int, key: str, what: str) -> Any:
    """``item[position]`` of a tuple/list, ``item[key]`` of a dict; else a clear error."""
    if isinstance(item, Mapping):
        if key not in item:
            raise ValueError(f"{what}: a dict item needs the key {key!r}, got keys {sorted(map(str, item))}")
        return item[key]
    if isinstance(item, (tuple, list)):
        if len(item) <= position:
            raise ValueError(f"{what}: a tuple item needs at least {position + 1} elements, got {len(item)}")
        return item[position]
    raise TypeError(f"{what}: expected a tuple, list or dict, got {type(item).__name__}")


def inputs_and_indices(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Default adapter of :func:`build_bank`: ``(x, y, index, ...)`` or ``{"input", "index"}``."""
    return _field(batch, 0, "input", "batch"), _field(batch, 2, "index", "batch")


def inputs_and_targets(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Default adapter of :func:`teacher_average_precision`: ``(x, y, ...)`` or ``{"input", "target"}``."""
    return _field(batch, 0, "input", "batch"), _field(batch, 1, "target", "batch")


class IndexedDataset(torch.utils.data.Dataset):
    """A map-style data set whose items also carry their index: ``(x, y) -> (x, y, index)``.

    A tuple/list item ``(x, y, *rest)`` becomes ``(x, y, index, *rest)`` (the index is always the
    third element); a dict item becomes a new dict with the key ``"index"`` added (an item that
    already has one is refused). The index is what :meth:`TeacherLogitBank.__getitem__` takes.

    Example:
        >>> ds = IndexedDataset(torch.utils.data.TensorDataset(torch.zeros(3, 2), torch.ones(3, 4)))
        >>> x, y, i = ds[2]; i
        2
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, Mapping):
            if "index" in item:
                raise ValueError(f"item {index} already has a key 'index'; IndexedDataset adds it")
            return {**item, "index": index}
        _field(item, 1, "target", f"IndexedDataset item {index}")
        return (item[0], item[1], index, *item[2:])


def _check_view_size(view: TeacherView, batch_size: int | None, stacklevel: int) -> None:
    m = len(view.sample_indices)
    where = f"teacher view of subset {view.subset} (columns {list(view.columns)}, images={view.images!r})"
    if m == 0:
        raise ValueError(f"{where} has 0 images: this teacher cannot be trained; use images='all' or "
                         f"another partition")
    if batch_size is not None and m < batch_size:
        warnings.warn(f"{where} has {m} images, fewer than batch_size={batch_size}: one partial batch per "
                      f"epoch, and a DataLoader with drop_last=True would train 0 steps", UserWarning,
                      stacklevel=stacklevel + 1)


class TeacherViewDataset(torch.utils.data.Dataset):
    """The images of one :class:`TeacherView` with targets restricted to its subset's columns.

    Item ``j`` is ``(x, y_k)``: ``x`` the input of ``dataset[view.sample_indices[j]]`` (its first
    element, or ``item[input_key]`` of a dict) and ``y_k`` = ``targets[row, view.columns]`` as a
    float32 tensor (|S_k|,), read from ``targets`` (never from the data set's own items).

    Raises ``ValueError`` if the view has no image; warns if it has fewer than ``batch_size``
    (with ``drop_last=True`` a loader would then train 0 steps).
    """

    def __init__(self, dataset: Any, view: TeacherView, targets: object, *, batch_size: int | None = None,
                 input_key: str = "input") -> None:
        t = as_multi_hot(targets, "targets")
        if len(dataset) != t.shape[0]:
            raise ValueError(f"targets must have one row per item of dataset ({len(dataset)}), got {t.shape[0]}")
        _check_view_size(view, batch_size, stacklevel=3)
        self.dataset, self.view, self.input_key = dataset, view, input_key
        self.columns = view.columns
        self.targets = torch.from_numpy(t[np.ix_(view.sample_indices, view.columns)].astype(np.float32))

    def __len__(self) -> int:
        return len(self.view.sample_indices)

    def __getitem__(self, j: int) -> tuple[Any, torch.Tensor]:
        row = int(self.view.sample_indices[j])
        return _field(self.dataset[row], 0, self.input_key, f"dataset item {row}"), self.targets[j]


def teacher_datasets(dataset: Any, partition: Partition, targets: object, *, images: str = "positive",
                     seed: int = 0, batch_size: int | None = None, input_key: str = "input"
                     ) -> list[TeacherViewDataset]:
    """One :class:`TeacherViewDataset` per subset of ``partition``, in subset order.

    Args:
        dataset: map-style training data set (N items; only the inputs are read).
        partition: the :class:`Partition`.
        targets: (N, C) multi-hot training targets (numpy or torch), rows in ``dataset`` order.
        images, seed: passed to :meth:`Partition.teacher_view` (``"positive"`` is the library's default).
        batch_size: warn for a view with fewer images (see :class:`TeacherViewDataset`).

    Example:
        >>> part = Partition([[0], [1, 2]], names=["a", "b"], num_classes=3)
        >>> y = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 0, 1]])
        >>> ds = teacher_datasets(torch.utils.data.TensorDataset(torch.randn(3, 5), y), part, y)
        >>> [len(d) for d in ds], ds[1][1][1].tolist()
        ([2, 2], [0.0, 1.0])
    """
    out = []
    for k in range(partition.num_subsets):
        view = partition.teacher_view(k, targets, images=images, seed=seed)
        _check_view_size(view, batch_size, stacklevel=2)
        out.append(TeacherViewDataset(dataset, view, targets, input_key=input_key))
    return out


# ---------------------------------------------------------------------------- cross-fitting

def crossfit_parts(targets: object, num_parts: int, *, seed: int = 0) -> list[np.ndarray]:
    """Split the N training samples into ``num_parts`` disjoint parts, stratified on multi-label targets.

    Iterative stratification (Sechidis, Tsoumakas & Vlahavas, "On the stratification of multi-label
    data", ECML PKDD 2011, Algorithm 1), written with numpy: the label with the fewest samples left is
    dealt out first, each of its samples to the part that still wants most of that label (ties: the
    part that wants most of the sample's labels together, then most samples, then a seeded draw);
    samples with no positive go to the parts that want most samples. The first tie-break is not in
    Algorithm 1: without it the frequent classes, dealt out last, ended up to 12 positives apart
    between parts on 500 random 12-class samples; with it every class was within one (80 draws,
    K = 2..5), and the part sizes too. Rare classes are dealt first, so a tail class's few positives
    are spread evenly. Deterministic given ``seed``.

    Args:
        targets: (N, C) multi-hot training targets (numpy or torch).
        num_parts: K, an int in [2, N].
        seed: the draw that breaks ties.

    Returns:
        K sorted int64 arrays of sample indices, disjoint, covering ``range(N)``, none empty.

    Example:
        >>> y = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1], [0, 0]])
        >>> [p.tolist() for p in crossfit_parts(y, 2)]
        [[0, 1, 3], [2, 4, 5]]
    """
    y = as_multi_hot(targets, "targets")
    n = y.shape[0]
    if isinstance(num_parts, bool) or not isinstance(num_parts, (int, np.integer)) or not 2 <= num_parts <= n:
        raise ValueError(f"num_parts must be an int in [2, N={n}] (K = 1 leaves no set an image it did not see; "
                         f"K > N leaves a part empty), got {num_parts!r}")
    rng = np.random.default_rng(seed)
    part_of = _iterative_stratification(y, int(num_parts), rng)
    for k in np.flatnonzero(np.bincount(part_of, minlength=num_parts) == 0):  # rare: only with tiny N
        largest = int(np.argmax(np.bincount(part_of, minlength=num_parts)))
        part_of[np.flatnonzero(part_of == largest)[-1]] = k
    return [np.flatnonzero(part_of == k) for k in range(num_parts)]


def _iterative_stratification(y: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """(N,) part of each sample by Sechidis et al.'s Algorithm 1 (equal shares 1/K)."""
    n = y.shape[0]
    want = np.full(k, n / k)                                        # samples each part still wants
    want_label = np.tile(y.sum(0) / k, (k, 1)).astype(np.float64)   # (K, C) positives each part still wants
    part_of = np.full(n, -1, dtype=np.int64)
    left = y.copy()                                                 # the positives of unassigned samples
    while True:
        per_label = left.sum(0)
        if not per_label.any():
            break
        rarest = np.flatnonzero(per_label == per_label[per_label > 0].min())
        label = int(rarest[0] if rarest.size == 1 else rng.choice(rarest))
        for i in np.flatnonzero(left[:, label]):
            best = np.flatnonzero(want_label[:, label] == want_label[:, label].max())
            other = want_label[best] @ y[i]                         # the sample's other labels
            best = best[other == other.max()]
            best = best[want[best] == want[best].max()]
            j = int(best[0] if best.size == 1 else rng.choice(best))
            part_of[i] = j
            want_label[j] -= y[i]
            want[j] -= 1
            left[i] = False
    for i in np.flatnonzero(part_of < 0):                           # samples without a positive
        best = np.flatnonzero(want == want.max())
        j = int(best[0] if best.size == 1 else rng.choice(best))
        part_of[i] = j
        want[j] -= 1
    return part_of


def parts_except(parts: Sequence[object], k: int) -> np.ndarray:
    """The sorted sample indices teacher set ``k`` trains on: every part of ``parts`` but ``parts[k]``."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < len(parts):
        raise ValueError(f"k must be a part index in [0, {len(parts) - 1}], got {k!r}")
    return np.sort(np.concatenate([np.asarray(p, dtype=np.int64).reshape(-1)
                                   for j, p in enumerate(parts) if j != k]))


def _crossfit_teachers(teachers: Any, parts: Sequence[object] | None, partition: Partition | None,
                       num_samples: int) -> SubsetTeachers | CrossFitTeachers:
    """The teachers :func:`build_bank` runs: one set, or K sets routed by ``parts``."""
    if parts is None:
        return teachers if isinstance(teachers, CrossFitTeachers) else _as_teachers(teachers, partition)
    if not isinstance(teachers, (Sequence, nn.ModuleList)) or isinstance(teachers, SubsetTeachers):
        raise TypeError(f"with parts=, teachers must be a list of K teacher sets (one per part), got "
                        f"{type(teachers).__name__}")
    if len(teachers) != len(parts):
        raise ValueError(f"need one teacher set per part: parts has {len(parts)} parts, teachers has "
                         f"{len(teachers)} sets")
    sets = []
    for k, t in enumerate(teachers):
        if not isinstance(t, (SubsetTeachers, Sequence, nn.ModuleList)):
            raise TypeError(f"with parts=, teachers[{k}] must be a teacher set (a SubsetTeachers or a list of "
                            f"one model per subset), got {type(t).__name__}")
        sets.append(_as_teachers(t, partition))
    return CrossFitTeachers(sets, parts, num_samples)


def _device_of(teachers: nn.Module, device: torch.device | str | None) -> torch.device:
    """``device``, or where the teachers are; ``ValueError`` if the teachers are elsewhere."""
    here = {p.device for p in list(teachers.parameters()) + list(teachers.buffers())}
    if device is None:
        return next(iter(here)) if len(here) == 1 else torch.device("cpu")
    device = torch.device(device)
    away = [d for d in here if d.type != device.type or (device.index is not None and d.index != device.index)]
    if away:
        raise ValueError(f"teachers are on {away[0]}, device={device}; move them with teachers.to(device)")
    return device


def _as_teachers(teachers: SubsetTeachers | Sequence[nn.Module], partition: Partition | None) -> SubsetTeachers:
    if isinstance(teachers, SubsetTeachers):
        if partition is not None and tuple(partition.subsets) != tuple(teachers.partition.subsets):
            raise ValueError(f"partition has subsets {partition.subsets}, the teachers were built for "
                             f"{teachers.partition.subsets}")
        return teachers
    if partition is None:
        raise ValueError("teachers given as a list of models need partition= (one model per subset)")
    return SubsetTeachers(teachers, partition)


def build_bank(path: str | os.PathLike, teachers: SubsetTeachers | CrossFitTeachers | Sequence[Any],
               loader: Iterable, num_samples: int, *, partition: Partition | None = None,
               class_names: Sequence[str] | None = None,
               batch: Callable[[Batch], tuple[torch.Tensor, Any]] = inputs_and_indices,
               device: torch.device | str | None = None, autocast_dtype: torch.dtype | None = None,
               parts: Sequence[object] | None = None, **bank_kwargs: Any) -> TeacherLogitBank:
    """Write the teachers' (N, C) logits of every training sample to a :class:`TeacherLogitBank` at ``path``.

    ``teachers`` is a :class:`SubsetTeachers`, or one model per subset plus ``partition=`` (wrapped in
    a :class:`SubsetTeachers`, which freezes them). ``loader`` must visit every index in
    ``range(num_samples)`` exactly once (unshuffled, e.g. over an :class:`IndexedDataset`);
    ``batch`` turns a batch into ``(inputs, indices)`` (a tensor and (B,) sample indices).
    ``device``: where inputs go (default: where the teachers are); ``autocast_dtype`` e.g.
    ``torch.bfloat16`` runs the teachers under autocast. ``class_names`` default to the partition's,
    else ``"0" .. "C-1"``; ``bank_kwargs`` (``teacher_hashes``, ``dataset``, ``metadata``) pass to
    :meth:`TeacherLogitBank.from_teachers`, which writes the file.

    Cross-fitted: ``parts`` (K disjoint index arrays covering ``range(num_samples)``, e.g. from
    :func:`crossfit_parts`) and ``teachers`` one set per part (each a :class:`SubsetTeachers` or a
    list of one model per subset plus ``partition=``), set k trained on :func:`parts_except`
    ``(parts, k)``; or a :class:`CrossFitTeachers`. Each row then comes from the set that did not see
    that sample; the file format is unchanged, and its metadata records K and the part of each row
    (:meth:`TeacherLogitBank.crossfit_parts`). Parts that overlap or leave a sample out are refused.
    For Eq. 3's teacher metric, pass the :class:`CrossFitTeachers` (``bank``'s sets: build one with
    ``CrossFitTeachers(sets, parts)``) to :func:`teacher_average_precision`: on validation images it
    gives the mean of the K sets' logits.

    Example:
        >>> part = Partition([[0], [1, 2]], names=["a", "b"], num_classes=3)
        >>> ds = IndexedDataset(torch.utils.data.TensorDataset(torch.randn(6, 4), torch.zeros(6, 3)))
        >>> import tempfile; path = os.path.join(tempfile.mkdtemp(), "bank.rskd")
        >>> build_bank(path, [nn.Linear(4, 1), nn.Linear(4, 2)], torch.utils.data.DataLoader(ds, batch_size=4),
        ...            6, partition=part).numpy().shape
        (6, 3)
    """
    teachers = _crossfit_teachers(teachers, parts, partition, num_samples)
    part = partition if partition is not None else teachers.partition
    if class_names is None:
        class_names = getattr(part, "class_names", None) or [str(i) for i in range(teachers.num_classes)]

    def rows() -> Iterable[tuple[torch.Tensor, None, Any]]:
        for b in loader:
            inputs, indices = batch(b)
            if not isinstance(inputs, torch.Tensor):
                raise TypeError(f"the batch adapter must return (inputs tensor, indices), got {type(inputs).__name__}")
            yield inputs, None, indices

    return TeacherLogitBank.from_teachers(path, teachers, rows(), num_samples, class_names=class_names,
                                          partition=part, device=_device_of(teachers, device),
                                          autocast_dtype=autocast_dtype, **bank_kwargs)


@torch.no_grad()
def teacher_average_precision(teachers: nn.Module, loader: Iterable, *,
                              batch: Callable[[Batch], tuple[torch.Tensor, Any]] = inputs_and_targets,
                              device: torch.device | str | None = None,
                              autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """Per-class AP (C,) of ``teachers`` (e.g. :class:`SubsetTeachers`) on a validation loader.

    ``batch`` turns a batch into ``(inputs, targets)``, targets (B, C) multi-hot in the student's
    class order. Returns a float64 numpy array as :func:`average_precision_per_class` does (NaN for a
    class without a validation positive): the ``teacher_metric`` of Eq. 3 (:class:`KDWeightUpdater`).
    """
    device = _device_of(teachers, device)
    logits, targets = [], []
    for b in loader:
        x, y = batch(b)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            logits.append(teachers(x.to(device)).float().cpu())
        targets.append(torch.as_tensor(y).cpu())
    if not logits:
        raise ValueError("loader yielded no batch")
    return average_precision_per_class(torch.cat(logits), torch.cat(targets))


class KDWeightUpdater:
    """Eq. 3 after every validation: holds the criterion and the teachers' fixed per-class metric.

    ``step(student_metric)`` (or ``step(logits=, targets=)``: the student's validation logits and
    multi-hot targets, turned into per-class AP) sets the criterion's weights and returns them (C,);
    ``calls`` counts the steps. :meth:`state_dict` holds ``calls``, the teacher metric and the weights.

    Example:
        >>> crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=2)
        >>> updater = KDWeightUpdater(crit, teacher_metric=[0.8, 0.8])
        >>> updater.step([0.68, 0.9]), updater.calls
        (tensor([0.3750, 0.0000]), 1)
    """

    def __init__(self, criterion: WeightedSubsetKDLoss, teacher_metric: object) -> None:
        if not isinstance(criterion, WeightedSubsetKDLoss):
            raise TypeError(f"criterion must be a WeightedSubsetKDLoss, got {type(criterion).__name__}")
        self.criterion = criterion
        self.teacher_metric = self._check(teacher_metric)
        self.calls = 0

    def _check(self, metric: object) -> torch.Tensor:
        t = as_class_metric(metric, "teacher_metric")
        if t.numel() != self.criterion.num_classes:
            raise ValueError(f"teacher_metric must have {self.criterion.num_classes} entries (one per class), "
                             f"got {t.numel()}")
        return t

    def step(self, student_metric: object = None, *, logits: object = None, targets: object = None) -> torch.Tensor:
        """Eq. 3 from the student's per-class metric (C,), or from its (N, C) logits and targets; returns (C,)."""
        if (student_metric is None) == (logits is None) or (logits is None) != (targets is None):
            raise TypeError("step takes either student_metric (C,) or both logits= and targets= (N, C)")
        if logits is not None:
            student_metric = average_precision_per_class(logits, targets)
        weights = self.criterion.update_weights(student_metric=student_metric, teacher_metric=self.teacher_metric)
        self.calls += 1
        return weights

    def state_dict(self) -> dict[str, Any]:
        return {"calls": self.calls, "teacher_metric": self.teacher_metric.clone(),
                "weights": self.criterion.weights.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the teacher metric, the call count and the criterion's weights."""
        missing = {"calls", "teacher_metric", "weights"} - set(state)
        if missing:
            raise ValueError(f"state is missing key(s) {sorted(missing)}")
        self.teacher_metric = self._check(state["teacher_metric"])
        self.criterion.set_weights(state["weights"])
        self.calls = int(state["calls"])
