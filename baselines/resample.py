r"""Class-aware re-sampling (RS), multi-label, single-process and distributed.

The "RS [10]" row of Table 3 (Ju et al., MICCAI 2021): class-aware sampling (Shen et al., "Relay
backpropagation", ECCV 2016) as implemented by the two official code bases this package follows,
and the sampler of OLTR's second stage (:mod:`baselines.oltr`).

Scheme (identical in both official implementations, checked line by line; no code copied):

- ``zhmiao/OpenLongTailRecognition-OLTR`` ``data/ClassAwareSampler.py`` (``RandomCycleIter``,
  ``class_aware_sample_generator``, ``ClassAwareSampler``), single-label;
- ``wutong16/DistributionBalancedLoss`` ``mllt/datasets/loader/sampler.py`` (same three pieces; the DB
  authors say they adopted OLTR's implementation, DistributionBalancedLoss issue #17), multi-label:
  the per-class image lists come from ``mllt/datasets/custom.py`` ``get_index_dic``, which files an
  image under EVERY class it is positive for.

1. A *random cycle* over a list: the list is shuffled, walked to its end, reshuffled, walked again,
   ... (the first pass is shuffled too: the official cursor starts at the end of the list).
2. One random cycle over the classes, one random cycle per class over the images positive for it.
3. Each *pick* takes the next class of the class cycle, then the next ``num_samples_cls`` images of
   that class's cycle (consecutive items of the same cycle, which may straddle a reshuffle), and
   yields them one after the other. Picks repeat until ``num_samples`` indices were yielded; the last
   pick may be cut short.

So over any stretch of picks every class is picked equally often (to within one: a class cycle pass
picks each class exactly once), and every yielded image is positive for the class that picked it.

Differences from the official code, each deliberate:

- Randomness: the official samplers use the global ``random`` module (DB also calls
  ``random.seed(0)`` in ``__init__``) and keep their cycles running across epochs; ``set_epoch`` is a
  no-op there. Here every epoch is drawn from its own generator,
  ``numpy.random.default_rng(SeedSequence([seed, epoch]))``, with fresh cycles: the draw is a pure
  function of ``(targets, num_samples_cls, num_samples, seed, epoch)``, identical on every rank and
  every restart, and ``set_epoch`` changes it (torch ``DistributedSampler`` semantics). Within an
  epoch the scheme is exactly the official one.
- Classes with no positive image are left out of the class cycle with one ``UserWarning`` naming
  them; the official code crashes on them (``IndexError`` from the empty cycle) or, for OLTR's
  single-label ``np.unique`` class count, never sees them. No positive at all: ``ValueError``.
- Epoch length ``num_samples`` defaults to the data set size N. The official nominal lengths are
  ``max_k n_k * C`` (OLTR ``data/ClassAwareSampler.py``), but OLTR's ``run_networks.py`` stops each
  epoch after ``int(N / batch_size)`` steps ("calculate training steps for each epoch based on actual
  number of training data instead of oversampled data number"), i.e. an effective epoch of N images,
  which is the default here. DB uses ``int(max_k n_k * C / reduce)`` with ``reduce=4``
  (``mllt/datasets/loader/sampler.py``; ``reduce`` default 4 in the DB ``build_dataloader``); pass
  ``num_samples`` to reproduce it.

``num_samples_cls`` (images per pick) defaults to 3, the DB value (``ClassAwareSampler.__init__``
default in ``mllt/datasets/loader/sampler.py``, which the DB data loader never overrides): DB is the
multi-label reference implementation of this baseline. OLTR's class default is 1 but both its
stage-2 configs (``config/ImageNet_LT/stage_2_meta_embedding.py``,
``config/Places_LT/stage_2_meta_embedding.py``) set 4: use :data:`OLTR_NUM_SAMPLES_CLS` for OLTR.

Distributed training: the official DB code has no class-aware sampler under DDP. Its
``mllt/apis/train.py`` ``_dist_train`` calls ``build_dataloader(..., dist=True)`` without the
configured sampler, and the ``dist=True`` branch of ``build_dataloader``
(``mllt/datasets/loader/build_loader.py``, read in the fork ``MarkLai0317/DistributionBalancedLoss``
because the upstream copy was not available to us) always builds a ``DistributedGroupSampler``
(random order, no class balance) -- so a ``sampler='ClassAware'`` config
silently trains without re-sampling (the stored ``train_classifier`` even raises
``NotImplementedError`` for ``distributed=True``). :class:`DistributedClassAwareSampler` fills that
gap: every rank draws the same sequence and keeps the positions ``rank::num_replicas``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

from rskd_loss.validation import as_multi_hot, check_int

__all__ = [
    "DB_NUM_SAMPLES_CLS",
    "OLTR_NUM_SAMPLES_CLS",
    "ClassAwareDraw",
    "ClassAwareSampler",
    "DistributedClassAwareSampler",
]

#: Images per class pick in the DB code (``mllt/datasets/loader/sampler.py``, ``ClassAwareSampler``).
DB_NUM_SAMPLES_CLS = 3
#: Images per class pick in OLTR stage 2 (``config/*/stage_2_meta_embedding.py``, ``num_samples_cls``).
OLTR_NUM_SAMPLES_CLS = 4


class ClassAwareDraw(NamedTuple):
    """One epoch's draw: ``indices[p]`` is the image at position ``p``, ``classes[p]`` the class whose
    pick produced it (the image is positive for that class). Both int64 arrays of equal length."""

    indices: np.ndarray
    classes: np.ndarray


def _as_multi_hot(targets: object, name: str = "targets") -> np.ndarray:
    """Check an (N, C) multi-hot tensor / array (at least one image and one class) as a new bool array."""
    arr = as_multi_hot(targets, name)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one image and one class, got shape {tuple(arr.shape)}")
    return arr


class _RandomCycle:
    """Endless walk over ``items``: shuffle, walk to the end, reshuffle, ... (first pass shuffled)."""

    def __init__(self, items: np.ndarray, rng: np.random.Generator) -> None:
        self._items = items
        self._rng = rng
        self._order = items
        self._pos = len(items)  # at the end: the first request shuffles, as the official cursor does

    def take(self, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            if self._pos == len(self._order):
                self._order = self._rng.permutation(self._items)
                self._pos = 0
            step = min(count - filled, len(self._order) - self._pos)
            out[filled : filled + step] = self._order[self._pos : self._pos + step]
            filled += step
            self._pos += step
        return out


def _class_aware_draw(
    class_pools: list[np.ndarray],
    present: np.ndarray,
    num_samples_cls: int,
    total: int,
    seed: int,
    epoch: int,
) -> ClassAwareDraw:
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch]))
    class_cycle = _RandomCycle(present, rng)
    image_cycles = {int(k): _RandomCycle(class_pools[int(k)], rng) for k in present}
    num_picks = math.ceil(total / num_samples_cls)
    indices = np.empty(num_picks * num_samples_cls, dtype=np.int64)
    classes = np.empty(num_picks * num_samples_cls, dtype=np.int64)
    for p in range(num_picks):
        k = int(class_cycle.take(1)[0])
        lo = p * num_samples_cls
        indices[lo : lo + num_samples_cls] = image_cycles[k].take(num_samples_cls)
        classes[lo : lo + num_samples_cls] = k
    return ClassAwareDraw(indices[:total], classes[:total])


class ClassAwareSampler(Sampler[int]):
    r"""Multi-label class-aware sampler: pick a class uniformly (random cycle), then images that have it.

    Per pick, with :math:`\mathcal{K}` the classes having at least one positive image and
    :math:`\mathcal{I}_k = \{i : y_{ik} = 1\}`:

    .. math::

        k_t = \text{next}(\text{cycle}(\mathcal{K})), \qquad
        (i_{t,1}, \dots, i_{t,m}) = \text{next}_m(\text{cycle}(\mathcal{I}_{k_t})),
        \qquad m = \texttt{num\_samples\_cls}

    where ``cycle`` is the official random cycle (shuffle, walk through, reshuffle when exhausted), so
    each class is the picked class :math:`\lfloor T/|\mathcal{K}| \rfloor` or
    :math:`\lceil T/|\mathcal{K}| \rceil` times in T picks; an image positive for several classes can be
    reached through each of them. See the module docstring for the sources and every deviation.

    Args:
        targets: (N, C) multi-hot labels of the training set, a ``torch.Tensor`` or ``numpy.ndarray``
            (bool, int or float with values in {0, 1}); copied, never modified.
        num_samples_cls: consecutive images per class pick. Default 3 (:data:`DB_NUM_SAMPLES_CLS`, the
            DB code's value); OLTR stage 2 uses 4 (:data:`OLTR_NUM_SAMPLES_CLS`).
        num_samples: indices per epoch. Default ``None``: N, the data set size (OLTR's effective epoch,
            see the module docstring).
        seed: base seed (int >= 0); with the epoch it fully determines the draw. Default 0.

    Shape:
        - targets: (N, C).
        - iteration: ``num_samples`` ints in ``[0, N)``.

    Example:
        >>> import torch
        >>> y = torch.tensor([[1, 0], [1, 0], [1, 0], [1, 1], [0, 1]])
        >>> s = ClassAwareSampler(y, num_samples_cls=2, num_samples=8, seed=0)
        >>> len(list(s)), len(s)
        (8, 8)
        >>> d = s.draw()
        >>> bool(all(y[i, k] == 1 for i, k in zip(d.indices, d.classes)))
        True
        >>> sorted(set(s.class_sequence().tolist()))
        [0, 1]
    """

    def __init__(
        self,
        targets: torch.Tensor | np.ndarray,
        num_samples_cls: int = DB_NUM_SAMPLES_CLS,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        labels = _as_multi_hot(targets)
        self.num_samples_cls = check_int(num_samples_cls, "num_samples_cls", minimum=1)
        self.num_samples = (
            labels.shape[0] if num_samples is None else check_int(num_samples, "num_samples", minimum=1)
        )
        self.seed = check_int(seed, "seed", minimum=0)
        self.epoch = 0
        self.num_images, self.num_classes = labels.shape
        counts = labels.sum(axis=0)
        if int(counts.sum()) == 0:
            raise ValueError(
                f"targets must have at least one positive label for class-aware sampling, got an all-zero "
                f"({self.num_images}, {self.num_classes}) label matrix"
            )
        self.present_classes = np.flatnonzero(counts > 0).astype(np.int64)
        self.missing_classes = np.flatnonzero(counts == 0).astype(np.int64)
        if self.missing_classes.size:
            warnings.warn(
                f"ClassAwareSampler: {self.missing_classes.size} of {self.num_classes} classes have no "
                f"positive image and are never picked: {self.missing_classes.tolist()}",
                UserWarning,
                stacklevel=2,
            )
        self._class_pools = [np.flatnonzero(labels[:, k]).astype(np.int64) for k in range(self.num_classes)]
        self._cache: tuple[int, int, ClassAwareDraw] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draw ``__iter__`` yields (call before each epoch, as with DDP)."""
        self.epoch = check_int(epoch, "epoch", minimum=0)

    def _draw_total(self, total: int, epoch: int | None) -> ClassAwareDraw:
        epoch = self.epoch if epoch is None else check_int(epoch, "epoch", minimum=0)
        if self._cache is not None and self._cache[0] == epoch and self._cache[1] == total:
            return self._cache[2]
        result = _class_aware_draw(
            self._class_pools, self.present_classes, self.num_samples_cls, total, self.seed, epoch
        )
        self._cache = (epoch, total, result)
        return result

    def draw(self, epoch: int | None = None) -> ClassAwareDraw:
        """The epoch's ``(indices, classes)`` (default: the epoch set by :meth:`set_epoch`)."""
        return self._draw_total(self.num_samples, epoch)

    def class_sequence(self, epoch: int | None = None) -> np.ndarray:
        """The picked class of each pick, in order: ``ceil(num_samples / num_samples_cls)`` ints."""
        return self.draw(epoch).classes[:: self.num_samples_cls].copy()

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw().indices.tolist())

    def __len__(self) -> int:
        return self.num_samples


class DistributedClassAwareSampler(Sampler[int]):
    r"""Class-aware sampler for DDP / torchrun: each rank takes every ``num_replicas``-th position of one
    shared draw.

    All ranks compute the same :class:`ClassAwareSampler` draw (same targets, seed and epoch) of
    ``total_size`` positions and rank ``r`` keeps positions :math:`r, r+R, r+2R, \dots`
    (:math:`R` = ``num_replicas``). The ranks' shares are disjoint as positions, equally long, and read
    in position order they are exactly the single-process sequence of ``total_size`` indices.

    Equal length: ``num_samples`` (default N) is the epoch length over all ranks. With
    ``drop_last=False`` (default) ``total_size = ceil(num_samples / R) * R``: the few missing positions
    are filled by *continuing the same draw* (more picks of the class cycle), not by repeating its
    first indices as ``torch.utils.data.DistributedSampler`` does, so the padding stays class-balanced
    and the first ``num_samples`` positions equal the single-process draw of ``num_samples``. With
    ``drop_last=True`` the sequence is cut to ``floor(num_samples / R) * R`` positions.

    ``num_replicas`` / ``rank`` default to ``torch.distributed``'s world size and rank; if either is not
    given and no process group is initialised, ``ValueError``. Call :meth:`set_epoch` every epoch.

    Args:
        targets, num_samples_cls, num_samples, seed: as in :class:`ClassAwareSampler`.
        num_replicas: number of ranks (>= 1).
        rank: this rank, ``0 <= rank < num_replicas``.
        drop_last: cut instead of pad (see above). Default ``False``.

    Shape:
        - iteration: ``total_size // num_replicas`` ints in ``[0, N)`` per rank.

    Example:
        >>> import torch
        >>> y = torch.tensor([[1, 0], [1, 0], [0, 1], [1, 1], [1, 0]])
        >>> ranks = [DistributedClassAwareSampler(y, num_replicas=2, rank=r) for r in range(2)]
        >>> [len(s) for s in ranks]
        [3, 3]
    """

    def __init__(
        self,
        targets: torch.Tensor | np.ndarray,
        num_replicas: int | None = None,
        rank: int | None = None,
        num_samples_cls: int = DB_NUM_SAMPLES_CLS,
        num_samples: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_replicas is None or rank is None:
            dist = torch.distributed
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError(
                    "num_replicas and rank must be given when torch.distributed is not initialised, got "
                    f"num_replicas={num_replicas!r}, rank={rank!r}"
                )
            if num_replicas is None:
                num_replicas = dist.get_world_size()
            if rank is None:
                rank = dist.get_rank()
        self.num_replicas = check_int(num_replicas, "num_replicas", minimum=1)
        self.rank = check_int(rank, "rank", minimum=0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"rank must be in [0, {self.num_replicas - 1}] (num_replicas={self.num_replicas}), "
                f"got {self.rank}"
            )
        if not isinstance(drop_last, bool):
            raise TypeError(f"drop_last must be a bool, got {type(drop_last).__name__}")
        self.drop_last = drop_last
        self.sampler = ClassAwareSampler(
            targets, num_samples_cls=num_samples_cls, num_samples=num_samples, seed=seed
        )
        n, r = self.sampler.num_samples, self.num_replicas
        self.total_size = (n // r) * r if drop_last else math.ceil(n / r) * r
        if self.total_size == 0:
            raise ValueError(
                f"num_samples ({n}) must be >= num_replicas ({r}) with drop_last=True, or every rank is empty"
            )

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the same on every rank) whose draw ``__iter__`` yields."""
        self.sampler.set_epoch(epoch)

    def positions(self) -> np.ndarray:
        """This rank's positions in the shared sequence: ``rank, rank + R, ...`` (< ``total_size``)."""
        return np.arange(self.rank, self.total_size, self.num_replicas, dtype=np.int64)

    def full_draw(self, epoch: int | None = None) -> ClassAwareDraw:
        """The shared sequence of ``total_size`` positions that all ranks slice."""
        return self.sampler._draw_total(self.total_size, epoch)

    def draw(self, epoch: int | None = None) -> ClassAwareDraw:
        """This rank's ``(indices, classes)``, in position order."""
        full = self.full_draw(epoch)
        pos = self.positions()
        return ClassAwareDraw(full.indices[pos], full.classes[pos])

    def __iter__(self) -> Iterator[int]:
        return iter(self.draw().indices.tolist())

    def __len__(self) -> int:
        return self.total_size // self.num_replicas
