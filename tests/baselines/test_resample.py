"""Tests of the class-aware samplers (baselines/resample.py): the official cycle scheme, determinism,
the distributed split, and the input checks."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from rskd_loss.baselines.resample import (
    DB_NUM_SAMPLES_CLS,
    OLTR_NUM_SAMPLES_CLS,
    ClassAwareSampler,
    DistributedClassAwareSampler,
)


def _long_tailed_targets(n: int = 60, c: int = 6, seed: int = 0) -> torch.Tensor:
    """Multi-label targets, class frequencies ~ 0.6, 0.35, 0.2, 0.1, 0.05, 0.03, every class present."""
    g = torch.Generator().manual_seed(seed)
    freq = torch.tensor([0.6, 0.35, 0.2, 0.1, 0.05, 0.03])[:c]
    y = (torch.rand(n, c, generator=g) < freq).to(torch.int64)
    for k in range(c):  # make sure each class has a positive (class k's first one at row k)
        y[k, k] = 1
    return y


@pytest.fixture
def targets() -> torch.Tensor:
    return _long_tailed_targets()


def test_official_defaults() -> None:
    # DB: ClassAwareSampler(num_samples_cls=3); OLTR stage-2 configs: num_samples_cls = 4.
    assert DB_NUM_SAMPLES_CLS == 3 and OLTR_NUM_SAMPLES_CLS == 4
    s = ClassAwareSampler(_long_tailed_targets())
    assert s.num_samples_cls == 3
    assert len(s) == 60 and len(list(s)) == 60  # default epoch length: the data set size


def test_each_class_picked_equally_often_and_in_cycles(targets: torch.Tensor) -> None:
    s = ClassAwareSampler(targets, num_samples_cls=3, num_samples=3000, seed=1)
    seq = s.class_sequence()
    assert len(seq) == 1000
    counts = np.bincount(seq, minlength=6)
    # 1000 picks over 6 classes: every class 166 or 167 times (the class cycle visits each once per pass)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 1000
    # stronger, the exact official scheme: each aligned block of 6 picks is a permutation of the classes
    for start in range(0, 996, 6):
        assert sorted(seq[start : start + 6].tolist()) == list(range(6))
    # the image frequency is not class-balanced, the pick frequency is: class 5 has ~3% of images but
    # is picked 1/6 of the time
    assert counts[5] >= 166


def test_first_pass_is_shuffled_too(targets: torch.Tensor) -> None:
    # the official cursor starts at the end of the list, so even the first pass is a shuffle: over
    # five seeds the first 6 picks are not always the classes in index order (a sorted first pass
    # has probability 1/720 per seed)
    firsts = [ClassAwareSampler(targets, num_samples_cls=1, num_samples=6, seed=s).class_sequence().tolist()
              for s in range(5)]
    assert any(f != list(range(6)) for f in firsts)
    assert all(sorted(f) == list(range(6)) for f in firsts)


def test_every_index_is_positive_for_its_picked_class(targets: torch.Tensor) -> None:
    s = ClassAwareSampler(targets, num_samples_cls=4, num_samples=1001, seed=3)
    d = s.draw()
    assert d.indices.shape == d.classes.shape == (1001,)
    assert bool((targets[torch.from_numpy(d.indices), torch.from_numpy(d.classes)] == 1).all())


def test_consecutive_images_per_pick_and_per_class_cycles(targets: torch.Tensor) -> None:
    k = 4
    s = ClassAwareSampler(targets, num_samples_cls=k, num_samples=4002, seed=5)
    d = s.draw()
    # 4002 = 1000 full picks of 4 + one pick cut to 2: positions 4p..4p+3 share the picked class
    full = d.classes[:4000].reshape(1000, k)
    assert bool((full == full[:, :1]).all())
    assert d.classes[4000] == d.classes[4001]
    assert np.array_equal(s.class_sequence(), d.classes[::k])
    # per class, the images drawn for it walk a random cycle: every aligned block of n_c draws is a
    # permutation of the class's positive images
    for c in range(targets.shape[1]):
        pool = sorted(torch.nonzero(targets[:, c]).flatten().tolist())
        drawn = d.indices[d.classes == c][: (int((d.classes == c).sum()) // len(pool)) * len(pool)]
        assert len(drawn) >= len(pool)
        for start in range(0, len(drawn), len(pool)):
            assert sorted(drawn[start : start + len(pool)].tolist()) == pool


def test_deterministic_for_seed_and_epoch(targets: torch.Tensor) -> None:
    a = ClassAwareSampler(targets, num_samples=500, seed=7)
    b = ClassAwareSampler(targets.numpy(), num_samples=500, seed=7)  # numpy input, same draw
    first = list(a)
    assert first == list(b) == a.draw(0).indices.tolist()
    assert list(ClassAwareSampler(targets, num_samples=500, seed=8)) != first
    a.set_epoch(1)
    second = list(a)
    assert second != first
    assert second == a.draw(1).indices.tolist()
    a.set_epoch(0)
    assert list(a) == first


def test_prefix_property(targets: torch.Tensor) -> None:
    # drawing more positions only continues the stream (used by the distributed padding)
    short = ClassAwareSampler(targets, num_samples=97, seed=2).draw().indices
    long = ClassAwareSampler(targets, num_samples=300, seed=2).draw().indices
    assert np.array_equal(long[:97], short)


def test_works_with_dataloader(targets: torch.Tensor) -> None:
    s = ClassAwareSampler(targets, num_samples=40, seed=4)
    loader = DataLoader(TensorDataset(torch.arange(len(targets))), batch_size=8, sampler=s)
    got = torch.cat([b[0] for b in loader]).tolist()
    assert got == s.draw().indices.tolist()


def test_caller_targets_unchanged(targets: torch.Tensor) -> None:
    before = targets.clone()
    arr = targets.numpy().astype(np.float32)
    arr_before = arr.copy()
    list(ClassAwareSampler(targets, num_samples=50))
    list(ClassAwareSampler(arr, num_samples=50))
    assert torch.equal(targets, before) and np.array_equal(arr, arr_before)


def test_class_without_positive_is_skipped_with_one_warning() -> None:
    y = torch.tensor([[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0], [1, 0, 0, 0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = ClassAwareSampler(y, num_samples_cls=1, num_samples=40)
        list(s)
        list(s)
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "[1, 3]" in msgs[0]
    seq = s.class_sequence()
    assert set(seq.tolist()) == {0, 2}
    assert np.bincount(seq, minlength=4).tolist() == [20, 0, 20, 0]


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (torch.zeros(5, 3), ValueError, "at least one positive"),
        (torch.ones(5), ValueError, "2-D"),
        (torch.ones(5, 3, 1), ValueError, "2-D"),
        (torch.zeros(0, 3), ValueError, "at least one image"),
        (torch.tensor([[1, 2], [0, 1]]), ValueError, r"multi-hot.*index \(0, 1\)"),
        (torch.tensor([[1.0, float("nan")]]), ValueError, "multi-hot"),
        ([[1, 0], [0, 1]], TypeError, "numpy array or a torch.Tensor"),
        (np.array([["a", "b"]]), TypeError, "numeric or bool"),
    ],
)
def test_bad_targets(bad: object, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        ClassAwareSampler(bad)  # type: ignore[arg-type]


def test_bad_arguments(targets: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="num_samples_cls must be >= 1, got 0"):
        ClassAwareSampler(targets, num_samples_cls=0)
    with pytest.raises(TypeError, match="num_samples_cls must be an int, got bool"):
        ClassAwareSampler(targets, num_samples_cls=True)
    with pytest.raises(ValueError, match="num_samples must be >= 1, got 0"):
        ClassAwareSampler(targets, num_samples=0)
    with pytest.raises(TypeError, match="num_samples must be an int, got float"):
        ClassAwareSampler(targets, num_samples=10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        ClassAwareSampler(targets, seed=-1)
    s = ClassAwareSampler(targets)
    with pytest.raises(ValueError, match="epoch must be >= 0, got -2"):
        s.set_epoch(-2)


# ------------------------------------------------------------------------------------------------
# distributed
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_replicas", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_distributed_split_matches_single_process(
    targets: torch.Tensor, num_replicas: int, drop_last: bool
) -> None:
    n = 50  # not divisible by 3, 4 or 7
    ranks = [
        DistributedClassAwareSampler(
            targets, num_replicas=num_replicas, rank=r, num_samples=n, seed=11, drop_last=drop_last
        )
        for r in range(num_replicas)
    ]
    total = (n // num_replicas) * num_replicas if drop_last else math.ceil(n / num_replicas) * num_replicas
    lengths = {len(s) for s in ranks}
    assert lengths == {total // num_replicas}
    assert {len(list(s)) for s in ranks} == lengths
    # positions: disjoint and together exactly 0..total-1
    positions = np.concatenate([s.positions() for s in ranks])
    assert len(positions) == total and len(np.unique(positions)) == total
    assert set(positions.tolist()) == set(range(total))
    # read in position order, the ranks' indices are the single-process sequence of `total` positions
    merged = np.empty(total, dtype=np.int64)
    for s in ranks:
        merged[s.positions()] = np.array(list(s))
    single_total = ClassAwareSampler(targets, num_samples=total, seed=11).draw().indices
    assert np.array_equal(merged, single_total)
    # ... whose first min(n, total) positions are the single-process epoch of n
    single_n = ClassAwareSampler(targets, num_samples=n, seed=11).draw().indices
    m = min(n, total)
    assert np.array_equal(merged[:m], single_n[:m])
    for s in ranks:  # each rank's images are positive for their picked class
        d = s.draw()
        assert bool((targets[torch.from_numpy(d.indices), torch.from_numpy(d.classes)] == 1).all())


def test_distributed_epochs(targets: torch.Tensor) -> None:
    ranks = [DistributedClassAwareSampler(targets, num_replicas=2, rank=r, seed=0) for r in range(2)]
    e0 = [list(s) for s in ranks]
    for s in ranks:
        s.set_epoch(3)
    e3 = [list(s) for s in ranks]
    assert e0 != e3
    merged = [None] * 60
    for r, seq in enumerate(e3):
        merged[r::2] = seq
    assert merged == ClassAwareSampler(targets, seed=0).draw(3).indices.tolist()
    assert ranks[0].epoch == 3


def test_distributed_bad_inputs(targets: torch.Tensor) -> None:
    assert not torch.distributed.is_initialized()
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        DistributedClassAwareSampler(targets)
    with pytest.raises(ValueError, match="torch.distributed is not initialised"):
        DistributedClassAwareSampler(targets, num_replicas=2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 1\] \(num_replicas=2\), got 2"):
        DistributedClassAwareSampler(targets, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match="rank must be >= 0, got -1"):
        DistributedClassAwareSampler(targets, num_replicas=2, rank=-1)
    with pytest.raises(ValueError, match="num_replicas must be >= 1, got 0"):
        DistributedClassAwareSampler(targets, num_replicas=0, rank=0)
    with pytest.raises(TypeError, match="drop_last must be a bool"):
        DistributedClassAwareSampler(targets, num_replicas=2, rank=0, drop_last=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"num_samples \(3\) must be >= num_replicas \(4\)"):
        DistributedClassAwareSampler(targets, num_replicas=4, rank=0, num_samples=3, drop_last=True)
    with pytest.raises(ValueError, match="at least one positive"):
        DistributedClassAwareSampler(torch.zeros(4, 2), num_replicas=2, rank=0)
