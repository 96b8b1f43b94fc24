"""Cross-fitted (out-of-fold) teacher logits: the splitter, CrossFitTeachers and build_bank(..., parts=).

The check that matters is made with teachers that memorise: a lookup table of the labels they trained
on (+10 / -10 for a seen image, 0 for an unseen one). In-sample, the bank then repeats the labels;
cross-fitted, no row may come from a teacher that saw its image, so every row is 0.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rskd_loss import (
    CrossFitTeachers,
    IndexedDataset,
    Partition,
    SubsetTeachers,
    TeacherLogitBank,
    build_bank,
    crossfit_parts,
    parts_except,
    teacher_average_precision,
)

README = Path(__file__).resolve().parents[2] / "README.md"
PART = Partition([[0, 3], [1], [2, 4]], names=["a", "b", "c"], num_classes=5)
N = 40


def _targets(n: int = N, c: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < np.linspace(0.5, 0.1, c)).astype(np.int64)
    y[0] = 1  # every class has a positive
    return y


class Memoriser(nn.Module):
    """A teacher that has learnt its training images by heart: input = the image's id (a float)."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray, num_samples: int) -> None:
        super().__init__()
        table = torch.zeros(num_samples, labels.shape[1])
        table[torch.as_tensor(rows)] = torch.as_tensor(labels[rows], dtype=torch.float32) * 20 - 10
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def _memorising_set(rows: np.ndarray, y: np.ndarray) -> SubsetTeachers:
    """One teacher per subset of PART, each memorising its subset's columns of ``rows``."""
    return SubsetTeachers([Memoriser(rows, y[:, list(s)], len(y)) for s in PART.subsets], PART)


def _loader(n: int = N) -> DataLoader:
    x = torch.arange(n, dtype=torch.float32)[:, None]
    return DataLoader(IndexedDataset(TensorDataset(x, torch.zeros(n, 5))), batch_size=7)


# ---------------------------------------------------------------------------- the splitter

@pytest.mark.parametrize("k", [2, 3, 5])
def test_parts_are_disjoint_covering_and_stratified(k: int) -> None:
    y = _targets(200, 8, seed=k)
    parts = crossfit_parts(y, k, seed=3)
    assert len(parts) == k and all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))  # disjoint and covering
    positives = np.stack([y[p].sum(0) for p in parts])  # (K, C)
    assert (positives.max(0) - positives.min(0)).max() <= 1, positives  # each class within +-1
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_rare_class_positives_are_spread_over_the_parts() -> None:
    y = np.zeros((30, 3), dtype=np.int64)
    y[:20, 0] = 1
    y[[2, 7, 11, 25], 2] = 1  # a tail class of 4 positives, one sharing its image with class 0
    parts = crossfit_parts(y, 4)
    assert [int(y[p, 2].sum()) for p in parts] == [1, 1, 1, 1]
    assert [int(y[p, 0].sum()) for p in parts] == [5, 5, 5, 5]


def test_parts_are_deterministic_given_a_seed() -> None:
    y = _targets(100)
    a, b = crossfit_parts(y, 3, seed=7), crossfit_parts(torch.as_tensor(y), 3, seed=7)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    others = [crossfit_parts(y, 3, seed=s) for s in range(1, 6)]
    assert any(not np.array_equal(a[0], o[0]) for o in others)  # the seed breaks the ties


@pytest.mark.parametrize("k", [1, 0, 41, 2.0, True])
def test_bad_number_of_parts_is_refused(k: object) -> None:
    with pytest.raises(ValueError, match=rf"num_parts must be an int in \[2, N=40\].*got {re.escape(repr(k))}"):
        crossfit_parts(_targets(), k)  # type: ignore[arg-type]


def test_every_part_is_used_even_at_k_equal_n() -> None:
    parts = crossfit_parts(np.ones((4, 2)), 4)
    assert sorted(int(p[0]) for p in parts) == [0, 1, 2, 3] and all(len(p) == 1 for p in parts)


def test_parts_except() -> None:
    parts = [np.array([0, 3]), np.array([1, 4]), np.array([2])]
    assert parts_except(parts, 1).tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match=r"k must be a part index in \[0, 2\], got 3"):
        parts_except(parts, 3)


# ---------------------------------------------------------------------------- the bank

def test_in_sample_logits_repeat_the_labels_out_of_fold_ones_do_not(tmp_path: Path) -> None:
    y = _targets()
    in_sample = build_bank(tmp_path / "in.rskd", _memorising_set(np.arange(N), y), _loader(), N)
    assert np.array_equal(in_sample.numpy().astype(np.float32), y * 20.0 - 10)
    assert in_sample.crossfit_parts() is None

    parts = crossfit_parts(y, 3)
    sets = [_memorising_set(parts_except(parts, k), y) for k in range(3)]
    bank = build_bank(tmp_path / "xf.rskd", sets, _loader(), N, parts=parts)
    assert not np.any(bank.numpy())  # every row from a set that never saw its image
    # and from the recorded parts alone: row i's set left out exactly the part holding i
    recorded = bank.crossfit_parts()
    assert len(recorded) == 3 and all(np.array_equal(p, q) for p, q in zip(recorded, parts))
    for k, part in enumerate(recorded):
        assert not np.isin(part, parts_except(parts, k)).any()
    meta = bank.header["metadata"]["crossfit"]
    assert meta["k"] == 3 and len(meta["part_of"]) == N and len(meta["sha256"]) == 64


def test_rows_come_from_the_set_that_left_them_out(tmp_path: Path) -> None:
    y = _targets()
    parts = crossfit_parts(y, 2)
    torch.manual_seed(0)
    sets = [SubsetTeachers([nn.Linear(1, len(s)) for s in PART.subsets], PART) for _ in parts]
    xf = CrossFitTeachers(sets, parts)
    bank = build_bank(tmp_path / "b.rskd", xf, _loader(), N)  # a CrossFitTeachers needs no parts=
    x = torch.arange(N, dtype=torch.float32)[:, None]
    for k, part in enumerate(parts):
        want = sets[k](x[part]).half().float()
        assert torch.equal(bank[torch.as_tensor(part)], want)
        assert not torch.equal(bank[torch.as_tensor(part)], sets[1 - k](x[part]).half().float())
    # validation images: the mean of the sets' logits (Eq. 3's teacher metric is measured on it)
    torch.testing.assert_close(xf(x[:5]), (sets[0](x[:5]) + sets[1](x[:5])) / 2)
    val = DataLoader(TensorDataset(x, torch.as_tensor(y, dtype=torch.float32)), batch_size=16)
    assert teacher_average_precision(xf, val).shape == (5,)


def test_the_record_round_trips_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    parts = [np.arange(0, N, 2), np.arange(1, N, 2)]
    sets = [_memorising_set(p, _targets()) for p in parts]
    bank = build_bank(tmp_path / "b.rskd", sets, _loader(), N, parts=parts, metadata={"note": "x"})
    reopened = TeacherLogitBank(tmp_path / "b.rskd", num_samples=N, partition=PART)
    assert [p.tolist() for p in reopened.crossfit_parts()] == [p.tolist() for p in parts]
    assert reopened.header["metadata"]["note"] == "x"
    rec = dict(bank.header["metadata"]["crossfit"])
    for change, message in ((dict(sha256="0" * 64), "its SHA-256 does not match"),
                            (dict(part_of=rec["part_of"][:-1]), f"it names the part of {N - 1} rows, the bank has {N}"),
                            (dict(part_of=[0] * N), r"it needs parts 0..1, each with a row, got parts \[0\]")):
        bad = TeacherLogitBank.write(tmp_path / "bad.rskd", bank.numpy(), class_names=list("01234"),
                                     partition=PART, metadata={"crossfit": {**rec, **change}})
        with pytest.raises(ValueError, match=f"cross-fitting record is invalid: {message}"):
            bad.crossfit_parts()


@pytest.mark.parametrize("parts, message", [
    ([[0, 1, 2], [2, 3] + list(range(4, N))], r"parts overlap: sample index 2 is in parts\[0\] and parts\[1\]"),
    ([[0, 0, 1], list(range(2, N))], r"parts overlap: sample index 0 is in parts\[0\] twice"),
    ([[0, 1], list(range(3, N))], r"parts do not cover the training set: 1 of 40 .* \(first: 2\)"),
    ([[0, 1], list(range(2, N + 1))], r"parts\[1\] holds sample index 40, outside range\(40\)"),
    ([list(range(N))], r"parts must hold K >= 2 index arrays .* got 1"),
    ([[], list(range(N))], r"parts\[0\] is empty"),
])
def test_bad_parts_are_refused(tmp_path: Path, parts: list, message: str) -> None:
    y = _targets()
    sets = [_memorising_set(np.arange(N), y) for _ in parts]
    with pytest.raises(ValueError, match=message):
        build_bank(tmp_path / "b.rskd", sets, _loader(), N, parts=parts)
    assert not (tmp_path / "b.rskd").exists()


def test_teachers_must_be_one_set_per_part(tmp_path: Path) -> None:
    parts = [np.arange(0, N, 2), np.arange(1, N, 2)]
    one_set = _memorising_set(np.arange(N), _targets())
    with pytest.raises(TypeError, match=r"teachers must be a list of K teacher sets .* got SubsetTeachers"):
        build_bank(tmp_path / "b.rskd", one_set, _loader(), N, parts=parts)
    with pytest.raises(ValueError, match=r"parts has 2 parts, teachers has 3 sets"):
        build_bank(tmp_path / "b.rskd", [one_set] * 3, _loader(), N, parts=parts)
    with pytest.raises(TypeError, match=r"teachers\[0\] must be a teacher set .* got Linear"):
        build_bank(tmp_path / "b.rskd", [nn.Linear(1, 2), nn.Linear(1, 3)], _loader(), N, parts=parts,
                   partition=PART)
    with pytest.raises(ValueError, match=r"parts do not cover the training set: 1 of 41 .* \(first: 40\)"):
        build_bank(tmp_path / "b.rskd", [one_set, one_set], _loader(41), 41, parts=parts)
    with pytest.raises(ValueError, match=r"parts cover 40 samples, the bank has num_samples=41"):
        build_bank(tmp_path / "b.rskd", CrossFitTeachers([one_set, one_set], parts), _loader(41), 41)
    with pytest.raises(ValueError, match=r"metadata key 'crossfit' is reserved"):
        build_bank(tmp_path / "b.rskd", [one_set, one_set], _loader(), N, parts=parts, metadata={"crossfit": 1})


def test_plain_model_lists_are_wrapped_per_set(tmp_path: Path) -> None:
    parts = [np.arange(0, N, 2), np.arange(1, N, 2)]
    torch.manual_seed(0)
    sets = [[nn.Linear(1, len(s)) for s in PART.subsets] for _ in parts]
    bank = build_bank(tmp_path / "b.rskd", sets, _loader(), N, parts=parts, partition=PART)
    x = torch.tensor([[3.0]])
    torch.testing.assert_close(bank[[3]], SubsetTeachers(sets[1], PART)(x).half().float())


# ---------------------------------------------------------------------------- README example

def test_readme_crossfit_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    section = README.read_text(encoding="utf-8").split("## RSKD in your own training loop", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert "crossfit_parts" in blocks[1], "README's second block of the section is no longer the cross-fit one"
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme_example"}
    for code in blocks[:2]:  # the whole method, then the cross-fitted bank from its teacher loop
        exec(compile(code, str(README), "exec"), ns)
    bank, sets, parts, x = ns["bank"], ns["sets"], ns["parts"], ns["x"]
    assert bank.header["metadata"]["crossfit"]["k"] == 2 and len(sets) == 2
    for k, part in enumerate(bank.crossfit_parts()):
        assert np.array_equal(part, parts[k])
        rows = torch.as_tensor(part)
        torch.testing.assert_close(bank[rows], sets[k](x[rows]).half().float(), rtol=0, atol=0)
    assert ns["ap_teachers"].shape == (ns["C"],)
