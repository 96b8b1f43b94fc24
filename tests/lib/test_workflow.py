"""rskd_loss.workflow (RSKD in a loop of one's own) and the inputs such a loop produces."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from rskd_loss import (
    IndexedDataset,
    KDWeightUpdater,
    Partition,
    SubsetTeachers,
    WeightedSubsetKDLoss,
    binary_kd_loss,
    build_bank,
    kd_weights,
    teacher_average_precision,
    teacher_datasets,
)
from rskd_loss.metrics import average_precision_per_class

README = Path(__file__).resolve().parents[2] / "README.md"
PART = Partition([[0, 3], [1], [2, 4]], names=["a", "b", "c"], num_classes=5)


class DictDataset(Dataset):
    """Items as dicts with custom keys, as many image libraries return them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, keys: tuple[str, str] = ("img", "label")) -> None:
        self.x, self.y, self.keys = x, y, keys

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {self.keys[0]: self.x[i], self.keys[1]: self.y[i]}


def _data(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = (torch.rand(n, 5, generator=g) < 0.4).float()
    y[0] = 1.0  # every class has a positive
    return x, y


def _models(seed: int = 1) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Linear(4, len(s)) for s in PART.subsets]


def _scatter(models: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """The teachers' (N, C) logits by hand, without SubsetTeachers."""
    out = torch.zeros(len(x), PART.num_classes)
    with torch.no_grad():
        for m, cols in zip(models, PART.subsets):
            out[:, list(cols)] = m(x)
    return out


# ---------------------------------------------------------------------------- README example

def test_readme_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## RSKD in your own training loop", 1)
    assert len(section) == 2, "README has no section 'RSKD in your own training loop'"
    code = re.search(r"```python\n(.*?)```", section[1], re.S)
    assert code is not None
    monkeypatch.chdir(tmp_path)
    ns: dict = {"__name__": "readme_example"}
    exec(compile(code.group(1), str(README), "exec"), ns)
    assert ns["epoch"] == 1  # range(2): two epochs ran
    assert ns["updater"].calls == 2
    weights = ns["weights"]
    n, c = ns["N"], ns["C"]
    assert weights.shape == (c,) and bool((weights < 1).any())
    torch.testing.assert_close(weights, ns["criterion"].weights)
    assert ns["bank"].numpy().shape == (n, c)
    # the bank holds the teachers' logits of the training images, by sample index (float16)
    direct = ns["teachers"](ns["x"]).float()
    torch.testing.assert_close(ns["bank"][torch.arange(n)], direct.half().float(), rtol=0, atol=0)


# ---------------------------------------------------------------------------- IndexedDataset

def test_indexed_dataset() -> None:
    x, y = _data()
    ds = IndexedDataset(TensorDataset(x, y))
    assert len(ds) == len(x)
    xi, yi, i = ds[5]
    assert i == 5 and torch.equal(xi, x[5]) and torch.equal(yi, y[5])
    w = torch.arange(12.0)
    assert IndexedDataset(TensorDataset(x, y, w))[3][2:] == (3, w[3])  # extras follow the index
    xb, yb, ib = next(iter(DataLoader(ds, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))))
    assert ib.dtype == torch.int64 and torch.equal(xb, x[ib]) and torch.equal(yb, y[ib])

    base = DictDataset(x, y)
    item = IndexedDataset(base)[7]
    assert set(item) == {"img", "label", "index"} and item["index"] == 7 and torch.equal(item["img"], x[7])

    with pytest.raises(ValueError, match=r"already has a key 'index'"):
        IndexedDataset([{"index": 3}])[0]
    with pytest.raises(ValueError, match=r"at least 2 elements, got 1"):
        IndexedDataset([(x[0],)])[0]
    with pytest.raises(TypeError, match=r"expected a tuple, list or dict, got Tensor"):
        IndexedDataset(x)[0]


# ---------------------------------------------------------------------------- teacher datasets

@pytest.mark.parametrize("images", ["positive", "all"])
def test_teacher_datasets_remap_targets(images: str) -> None:
    x, y = _data()
    y_np = y.numpy().copy()
    sets = teacher_datasets(TensorDataset(x, y), PART, y_np, images=images)
    assert len(sets) == 3
    for cols, ds in zip(([0, 3], [1], [2, 4]), sets):
        rows = np.arange(len(y)) if images == "all" else np.flatnonzero(y_np[:, cols].any(axis=1))
        assert list(ds.columns) == cols and len(ds) == len(rows)
        for j, row in enumerate(rows):
            xj, yj = ds[j]
            assert torch.equal(xj, x[row])
            assert yj.dtype == torch.float32 and yj.tolist() == y_np[row, cols].tolist()
    assert np.array_equal(y_np, y.numpy())  # the caller's targets are untouched


def test_teacher_datasets_dict_items_read_targets_from_the_array() -> None:
    x, y = _data()
    # the data set's own labels are wrong on purpose: the targets come from the array given
    sets = teacher_datasets(DictDataset(x, torch.zeros_like(y)), PART, y.bool(), images="all", input_key="img")
    xj, yj = sets[2][4]
    assert torch.equal(xj, x[4]) and yj.tolist() == y[4, [2, 4]].tolist()
    with pytest.raises(ValueError, match=r"needs the key 'input'"):
        teacher_datasets(DictDataset(x, y), PART, y, images="all")[0][0]


def test_teacher_datasets_small_and_empty_views() -> None:
    x, y = _data()
    y[:, 1] = 0.0
    y[2, 1] = 1.0  # subset 1 (class 1): one positive image
    with pytest.warns(UserWarning, match=r"subset 1 .*has 1 images, fewer than batch_size=4: .*"
                                         r"drop_last=True would train 0 steps"):
        sets = teacher_datasets(TensorDataset(x, y), PART, y, batch_size=4)
    assert len(sets[1]) == 1
    y[2, 1] = 0.0  # no positive left: nothing to train on
    with pytest.raises(ValueError, match=r"subset 1 \(columns \[1\], images='positive'\) has 0 images"):
        teacher_datasets(TensorDataset(x, y), PART, y)
    with pytest.raises(ValueError, match=r"one row per item of dataset \(12\), got 11"):
        teacher_datasets(TensorDataset(x, y), PART, y[:11], images="all")


# ---------------------------------------------------------------------------- bank and teacher metric

def test_build_bank_custom_adapter_equals_direct_logits(tmp_path: Path) -> None:
    x, y = _data(n=11)
    models = _models()
    loader = DataLoader(IndexedDataset(DictDataset(x, y)), batch_size=3)  # last batch: 2 rows
    bank = build_bank(tmp_path / "bank.rskd", models, loader, len(x), partition=PART,
                      batch=lambda b: (b["img"], b["index"]), dataset="toy")
    assert bank.numpy().shape == (11, 5) and bank.header["dataset"] == "toy"
    assert bank.class_names == ("0", "1", "2", "3", "4")
    torch.testing.assert_close(bank[torch.arange(11)], _scatter(models, x).half().float(), rtol=0, atol=0)

    # SubsetTeachers with the default (x, y, index) adapter, under bf16 autocast: same logits, to bf16
    teachers = SubsetTeachers(models, PART)
    named = Partition(PART.subsets, PART.names, 5, class_names=list("vwxyz"))
    bank16 = build_bank(tmp_path / "b16.rskd", teachers, DataLoader(IndexedDataset(TensorDataset(x, y)), batch_size=4),
                        11, partition=named, autocast_dtype=torch.bfloat16)
    assert bank16.class_names == tuple("vwxyz")  # from the partition given
    torch.testing.assert_close(bank16[torch.arange(11)], _scatter(models, x), rtol=2e-2, atol=2e-2)

    with pytest.raises(ValueError, match=r"need partition="):
        build_bank(tmp_path / "x.rskd", models, loader, 11)
    with pytest.raises(ValueError, match=r"partition has subsets .* the teachers were built for"):
        build_bank(tmp_path / "x.rskd", teachers, loader, 11, partition=Partition([[0, 1, 2, 3, 4]], ["all"], 5))
    with pytest.raises(ValueError, match=r"seen exactly once"):
        build_bank(tmp_path / "x.rskd", teachers, loader, 12, batch=lambda b: (b["img"], b["index"]))
    meta = SubsetTeachers([nn.Linear(4, len(s), device="meta") for s in PART.subsets], PART)
    with pytest.raises(ValueError, match=r"teachers are on meta, device=cpu"):
        build_bank(tmp_path / "x.rskd", meta, loader, 11, device="cpu")


def test_teacher_average_precision_equals_direct_ap() -> None:
    x, y = _data(n=40, seed=3)
    models = _models(seed=4)
    teachers = SubsetTeachers(models, PART)
    direct = average_precision_per_class(_scatter(models, x), y)
    got = teacher_average_precision(teachers, DataLoader(TensorDataset(x, y), batch_size=16))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, direct, rtol=0, atol=1e-12)
    custom = teacher_average_precision(teachers, DataLoader(DictDataset(x, y), batch_size=7),
                                       batch=lambda b: (b["img"], b["label"]))
    np.testing.assert_allclose(custom, direct, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"no batch"):
        teacher_average_precision(teachers, [])


# ---------------------------------------------------------------------------- KDWeightUpdater

def test_updater_steps_counts_and_state() -> None:
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=3, delta=0.6)
    updater = KDWeightUpdater(crit, teacher_metric=np.array([0.8, 0.8, 0.8]))
    # by hand: class 0 (0.8 - 0.68) / (0.8 * 0.4) = 0.375; class 1 beats the teacher -> 0; class 2 far below -> 1
    w = updater.step([0.68, 0.9, 0.1])
    torch.testing.assert_close(w, torch.tensor([0.375, 0.0, 1.0]))
    torch.testing.assert_close(crit.weights, w)
    assert updater.calls == 1

    g = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(30, 3, generator=g), (torch.rand(30, 3, generator=g) < 0.5).float()
    expected = kd_weights(average_precision_per_class(logits, targets), [0.8, 0.8, 0.8], 0.6)
    torch.testing.assert_close(updater.step(logits=logits, targets=targets), expected)
    assert updater.calls == 2

    state = updater.state_dict()
    fresh_crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=3, delta=0.6)
    fresh = KDWeightUpdater(fresh_crit, teacher_metric=[0.5, 0.5, 0.5])
    fresh.load_state_dict(state)
    assert fresh.calls == 2
    torch.testing.assert_close(fresh_crit.weights, expected)
    torch.testing.assert_close(fresh.teacher_metric, torch.tensor([0.8, 0.8, 0.8], dtype=torch.float64))

    with pytest.raises(TypeError, match=r"either student_metric .* or both logits= and targets="):
        updater.step()
    with pytest.raises(TypeError, match=r"either student_metric"):
        updater.step([0.1, 0.2, 0.3], logits=logits, targets=targets)
    with pytest.raises(TypeError, match=r"either student_metric"):
        updater.step(logits=logits)
    with pytest.raises(ValueError, match=r"teacher_metric must have 3 entries .*got 2"):
        KDWeightUpdater(crit, teacher_metric=[0.5, 0.5])
    with pytest.raises(TypeError, match=r"criterion must be a WeightedSubsetKDLoss, got BCEWithLogitsLoss"):
        KDWeightUpdater(nn.BCEWithLogitsLoss(), teacher_metric=[0.5])
    with pytest.raises(ValueError, match=r"missing key\(s\) \['calls'\]"):
        fresh.load_state_dict({"teacher_metric": [0.5] * 3, "weights": [1.0] * 3})
    assert updater.calls == 2  # refused steps are not counted


# ---------------------------------------------------------------------------- inputs of a real loop

def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 5, generator=g), (torch.rand(6, 5, generator=g) < 0.5).float(), torch.randn(6, 5, generator=g)


def test_soft_targets_per_instance() -> None:
    logits, hard, teacher = _batch()
    soft = hard * 0.9 + 0.05  # label smoothing
    soft[0, 0] = 0.37         # mixup-like value
    before = soft.clone()
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5, soft_targets=True)
    got = crit(logits, soft, teacher)
    want = F.binary_cross_entropy_with_logits(logits, soft) + binary_kd_loss(logits, teacher).mean(0).sum()
    torch.testing.assert_close(got, want)
    assert torch.equal(soft, before)
    assert "soft_targets=True" in repr(crit)
    # the default instance keeps today's check and message; the switch is per instance, not global
    with pytest.raises(ValueError, match=r"targets must be multi-hot with values in \{0, 1\}, got 0.37"):
        WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)(logits, soft, teacher)
    for value in (1.5, -0.1, float("nan")):
        bad = soft.clone()
        bad[2, 3] = value
        with pytest.raises(ValueError, match=r"targets must have values in \[0, 1\].*at index \(2, 3\)"):
            crit(logits, bad, teacher)
    with pytest.raises(TypeError, match=r"soft_targets must be a bool, got int"):
        WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5, soft_targets=1)


def test_percent_and_fraction_metrics_refused() -> None:
    for student, teacher, s_scale, t_scale in (
        ([55.0, 70.0], [0.8, 0.9], "percent", "a fraction"),
        ([0.55, 0.7], [80.0, 90.0], "a fraction", "percent"),
    ):
        with pytest.raises(ValueError, match=rf"student_metric looks like {s_scale} .*teacher_metric like "
                                             rf"{t_scale} .*divide percent by 100"):
            kd_weights(student, teacher)
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=2)
    with pytest.raises(ValueError, match=r"different scales"):
        crit.update_weights(student_metric=[55.0, 70.0], teacher_metric=[0.8, 0.9])
    with pytest.raises(ValueError, match=r"different scales"):
        KDWeightUpdater(crit, teacher_metric=[0.8, 0.9]).step([55.0, float("nan")])
    # accepted: both percent; an AP of exactly 1.0 on the fraction scale; an all-NaN metric
    torch.testing.assert_close(kd_weights([37.5, 90.0], [50.0, 50.0], 0.5), torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(kd_weights([1.0, 0.2], [1.0, 1.0], 0.5), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(kd_weights([float("nan")] * 2, [80.0, 0.5]), torch.tensor([1.0, 1.0]))


@pytest.mark.parametrize("shape", ["class", "element"])
def test_integer_and_bool_masks_match_float_weights(shape: str) -> None:
    logits, targets, teacher = _batch(seed=2)
    keep = torch.tensor([1, 0, 1, 1, 0])
    crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)
    # independent reference: the masked classes' weights set to 0, no mask
    ref_crit = WeightedSubsetKDLoss(nn.BCEWithLogitsLoss(), num_classes=5)
    ref_crit.set_weights(keep.float())
    ref = ref_crit(logits, targets, teacher)
    for dtype in (torch.bool, torch.uint8, torch.int8, torch.int32, torch.int64):
        mask = keep.to(dtype)
        if shape == "element":
            mask = mask.expand(6, 5).clone()
        before = mask.clone()
        torch.testing.assert_close(crit(logits, targets, teacher, teacher_mask=mask), ref)
        assert torch.equal(mask, before) and mask.dtype == dtype
    with pytest.raises(ValueError, match=r"integer teacher_mask must hold only 0 and 1, got 2 at index \(3,\)"):
        crit(logits, targets, teacher, teacher_mask=torch.tensor([1, 0, 1, 2, 0]))
    with pytest.raises(TypeError, match=r"teacher_mask must have dtype torch.bool, got torch.float32"):
        crit(logits, targets, teacher, teacher_mask=keep.float())
