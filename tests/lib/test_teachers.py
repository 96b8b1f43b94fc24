"""SubsetTeachers (online) and TeacherLogitBank (cached)."""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from rskd_loss import Partition, SubsetTeachers, TeacherLogitBank, WeightedSubsetKDLoss

PART = Partition(subsets=((0, 3), (1,), (2, 4)), names=("a", "b", "c"), num_classes=5)
NAMES = ["c0", "c1", "c2", "c3", "c4"]


def _teachers(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, len(s))) for s in PART.subsets]


def test_scatter_into_class_columns() -> None:
    models = _teachers()
    for m in models:
        m.eval()
    x = torch.randn(7, 6)
    out = SubsetTeachers(models, PART)(x)
    assert out.shape == (7, 5)
    # class c's column holds the output of the teacher whose subset contains c, at c's position there
    for k, subset in enumerate(PART.subsets):
        z = models[k](x)
        for j, c in enumerate(subset):
            torch.testing.assert_close(out[:, c], z[:, j], rtol=0, atol=0)


def test_teachers_are_frozen() -> None:
    teachers = SubsetTeachers(_teachers(), PART)
    parent = nn.Module()
    parent.teachers = teachers
    parent.train()  # a training loop calls .train() on its parent module every epoch
    assert not teachers.training and all(not m.training for m in teachers.modules())
    assert all(not p.requires_grad for p in teachers.parameters())
    bn = teachers.teachers[0][1]
    before = bn.running_mean.clone()
    out = teachers(torch.randn(16, 6) * 5 + 3)
    assert torch.equal(bn.running_mean, before), "batch-norm statistics moved"
    assert out.grad_fn is None and not out.requires_grad


def test_teachers_under_bf16_autocast() -> None:
    teachers = SubsetTeachers(_teachers(), PART)
    x = torch.randn(4, 6)
    ref = teachers(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = teachers(x)
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), ref, rtol=5e-2, atol=5e-2)


def test_teacher_errors() -> None:
    with pytest.raises(ValueError, match=r"the partition has 3 subsets, got 2 models"):
        SubsetTeachers(_teachers()[:2], PART)
    wrong = _teachers()
    wrong[1] = nn.Linear(6, 3)
    with pytest.raises(ValueError, match=r"teacher 1 must return \(N, 1\) logits for its subset \(1,\), got \(2, 3\)"):
        SubsetTeachers(wrong, PART)(torch.randn(2, 6))
    with pytest.raises(TypeError, match=r"partition must be a rskd_loss.Partition"):
        SubsetTeachers(_teachers(), [(0, 3), (1,), (2, 4)])
    with pytest.raises(TypeError, match=r"models\[0\] must be an nn.Module, got function"):
        SubsetTeachers([lambda x: x] * 3, PART)


# ------------------------------------------------------------------------------------- bank

def test_bank_round_trip(tmp_path) -> None:
    logits = torch.randn(50, 5) * 8
    path = tmp_path / "bank.rskd"
    bank = TeacherLogitBank.write(path, logits, class_names=NAMES, partition=PART, dataset="csv:abc",
                                  teacher_hashes=["h0", "h1", "h2"])
    assert len(bank) == 50 and bank.class_names == tuple(NAMES)
    idx = torch.tensor([3, 0, 49, 3])
    want = logits.half().float()[idx]  # float16 storage: exactly the float16 rounding of the input
    torch.testing.assert_close(bank[idx], want, rtol=0, atol=0)
    torch.testing.assert_close(bank[[1, 2]], logits.half().float()[[1, 2]], rtol=0, atol=0)
    reopened = TeacherLogitBank(path, num_samples=50, class_names=NAMES, partition=PART, dataset="csv:abc",
                                teacher_hashes=["h0", "h1", "h2"])
    torch.testing.assert_close(reopened.to("cpu")[idx], want, rtol=0, atol=0)
    assert [p for p in os.listdir(tmp_path) if p != "bank.rskd"] == []  # no temporary file left


def test_bank_refuses_other_runs(tmp_path) -> None:
    path = tmp_path / "bank.rskd"
    TeacherLogitBank.write(path, torch.zeros(10, 5), class_names=NAMES, partition=PART, dataset="csv:abc")
    with pytest.raises(ValueError, match=r"num_samples: bank has 10, expected 11"):
        TeacherLogitBank(path, num_samples=11)
    with pytest.raises(ValueError, match=r"class_names: bank has 5 names, expected 5 \(first differences: index 2: bank 'c2', expected 'X'\)"):
        TeacherLogitBank(path, class_names=["c0", "c1", "X", "c3", "c4"])
    other = Partition(subsets=((0, 1), (2, 3, 4)), names=("a", "b"), num_classes=5)
    with pytest.raises(ValueError, match=r"partition: bank has subsets \[\[0, 3\], \[1\], \[2, 4\]\]"):
        TeacherLogitBank(path, partition=other)
    with pytest.raises(ValueError, match=r"dataset: bank was built for 'csv:abc', expected 'csv:xyz'"):
        TeacherLogitBank(path, dataset="csv:xyz")
    bank = TeacherLogitBank(path)
    with pytest.raises(IndexError, match=r"out of range for a bank of 10 samples: got min 0, max 10"):
        bank[torch.tensor([0, 10])]
    with pytest.raises(TypeError, match=r"indices must be an integer tensor, got torch.float32"):
        bank[torch.tensor([0.0])]


def test_bank_refuses_broken_files(tmp_path) -> None:
    path = tmp_path / "bank.rskd"
    TeacherLogitBank.write(path, torch.zeros(10, 5), class_names=NAMES, partition=PART)
    data = path.read_bytes()
    (tmp_path / "cut.rskd").write_bytes(data[:-7])
    with pytest.raises(ValueError, match=r"truncated or padded: expected \d+ bytes .*\(10, 5\)"):
        TeacherLogitBank(tmp_path / "cut.rskd")
    (tmp_path / "junk.rskd").write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match=r"not a teacher-logit bank"):
        TeacherLogitBank(tmp_path / "junk.rskd")
    with pytest.raises(FileNotFoundError, match=r"teacher-logit bank not found"):
        TeacherLogitBank(tmp_path / "nope.rskd")


def test_bank_write_failure_leaves_nothing(tmp_path) -> None:
    bad = torch.zeros(4, 5)
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"teacher logits must be finite, got inf at \(2, 1\)"):
        TeacherLogitBank.write(tmp_path / "b.rskd", bad, class_names=NAMES, partition=PART)
    with pytest.raises(ValueError, match=r"does not fit float16"):
        TeacherLogitBank.write(tmp_path / "b.rskd", torch.full((4, 5), 1e5), class_names=NAMES, partition=PART)
    with pytest.raises(ValueError, match=r"partition covers 5 classes, class_names has 4"):
        TeacherLogitBank.write(tmp_path / "b.rskd", torch.zeros(4, 5), class_names=NAMES[:4], partition=PART)
    assert os.listdir(tmp_path) == []


def test_bank_from_teachers_matches_online(tmp_path) -> None:
    teachers = SubsetTeachers(_teachers(seed=3), PART)
    x = torch.randn(40, 6)
    y = (torch.rand(40, 5) < 0.3).float()
    ds = TensorDataset(x, y, torch.arange(40))
    loader = DataLoader(ds, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    bank = TeacherLogitBank.from_teachers(tmp_path / "t.rskd", teachers, loader, 40, class_names=NAMES,
                                          partition=PART)
    online = teachers(x)
    torch.testing.assert_close(bank[torch.arange(40)], online.half().float(), rtol=0, atol=0)
    # the student loss with the bank equals the loss with online teachers up to float16 rounding
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)
    student = torch.randn(40, 5)
    torch.testing.assert_close(crit(student, y, bank[torch.arange(40)]), crit(student, y, online),
                               rtol=1e-3, atol=1e-5)


def test_bank_from_teachers_refuses_repeated_index(tmp_path) -> None:
    teachers = SubsetTeachers(_teachers(), PART)
    ds = TensorDataset(torch.randn(10, 6), torch.zeros(10, 5), torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 8]))
    with pytest.raises(ValueError, match=r"index 8 was seen 2 times"):
        TeacherLogitBank.from_teachers(tmp_path / "t.rskd", teachers, DataLoader(ds, batch_size=4), 10,
                                       class_names=NAMES, partition=PART)
    assert os.listdir(tmp_path) == []
