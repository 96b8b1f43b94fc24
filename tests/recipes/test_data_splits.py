"""Multi-label stratified splits: disjoint, covering, stratified, deterministic, tied to one CSV."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recipes.data.splits import (
    SplitsMismatchError,
    default_splits_path,
    load_splits,
    make_splits,
    save_splits,
    splits_for_csv,
)
from recipes.data.synthetic import synthetic_labels


def _long_tail(n=600, seed=0):
    """Labels with classes of 4, 5, 6 positives next to frequent ones (hard for a 4-fold split)."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 6)) < [0.4, 0.2, 0.1, 0, 0, 0]).astype(np.uint8)
    for c, npos in ((3, 4), (4, 5), (5, 6)):
        y[rng.choice(n, npos, replace=False), c] = 1
    return y


def _check_fold(fold, n):
    parts = [fold.train, fold.val, fold.test]
    joined = np.concatenate(parts)
    assert len(joined) == n and len(np.unique(joined)) == n  # disjoint and covering
    for p in parts:
        assert (np.diff(p) > 0).all()  # sorted, no repeats


def test_holdout_7_1_2_disjoint_covering_stratified():
    y = synthetic_labels(1000, 8, imbalance_ratio=20.0, seed=0)
    s = make_splits(y, seed=0)
    assert s.scheme == "holdout" and len(s) == 1
    f = s[0]
    _check_fold(f, 1000)
    # sizes 700 / 100 / 200 within 2 % of N (iterative stratification balances labels first)
    for part, want in ((f.train, 700), (f.val, 100), (f.test, 200)):
        assert abs(len(part) - want) <= 20
    # stratified: each class's positives per part within max(1, 2 %) of ratio * its total
    for c in range(8):
        total = int(y[:, c].sum())
        for part, frac in ((f.train, 0.7), (f.val, 0.1), (f.test, 0.2)):
            assert abs(int(y[part, c].sum()) - frac * total) <= max(1.0, 0.02 * total)


def test_kfold_tests_partition_the_data_and_rare_classes_reach_every_train_part():
    for seed in range(4):
        y = _long_tail(seed=seed)
        s = make_splits(y, seed=seed, scheme="kfold", n_folds=4)
        assert len(s) == 4 and s.n_folds == 4
        all_test = np.concatenate([f.test for f in s.folds])
        np.testing.assert_array_equal(np.sort(all_test), np.arange(len(y)))  # each image tested once
        for f in s.folds:
            _check_fold(f, len(y))
            assert abs(len(f.test) - len(y) / 4) <= 0.03 * len(y)
            # val ~ 1/8 of the fold's training part (train : val = 7 : 1)
            assert abs(len(f.val) - (len(y) - len(f.test)) / 8) <= 0.03 * len(y)
            for c in np.flatnonzero(y.sum(axis=0) >= 4):
                assert y[f.train, c].sum() >= 1, (seed, c)


def test_deterministic_and_seed_dependent():
    y = _long_tail()
    a = make_splits(y, seed=3, scheme="kfold")
    b = make_splits(torch.from_numpy(y), seed=3, scheme="kfold")  # tensors accepted too
    c = make_splits(y, seed=4, scheme="kfold")
    for fa, fb in zip(a.folds, b.folds):
        for p in ("train", "val", "test"):
            np.testing.assert_array_equal(fa.part(p), fb.part(p))
    assert any(not np.array_equal(fa.test, fc.test) for fa, fc in zip(a.folds, c.folds))


def test_save_load_and_refuse_another_csv(tmp_path):
    csv_path = tmp_path / "labels.csv"
    y = _long_tail(200)
    csv_path.write_text("image,a,b,c,d,e,f\n" + "".join(
        f"{i}.png,{','.join(map(str, r))}\n" for i, r in enumerate(y)))
    s = make_splits(y, seed=0, scheme="kfold")
    path = save_splits(s, csv_path)
    assert path == tmp_path / "splits_labels_kfold4_seed0.json"
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*"))
    doc = json.loads(path.read_text())
    assert doc["csv"]["name"] == "labels.csv" and len(doc["csv"]["sha256"]) == 64
    assert "never used for model selection" in doc["note"]
    back = load_splits(path, csv_path)
    assert back.params() == s.params()
    for fa, fb in zip(s.folds, back.folds):
        np.testing.assert_array_equal(fa.val, fb.val)
    other = tmp_path / "other.csv"
    other.write_bytes(csv_path.read_bytes().replace(b"0.png,", b"0b.png,", 1))
    with pytest.raises(ValueError, match="was made from another CSV"):
        load_splits(path, other)
    with pytest.raises(FileNotFoundError, match="split file not found"):
        load_splits(tmp_path / "none.json", csv_path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_splits(path, csv_path)


def test_splits_for_csv_makes_then_loads_and_refuses_other_settings(tmp_path):
    csv_path = tmp_path / "labels.csv"
    y = _long_tail(120)
    csv_path.write_text("image,a,b,c,d,e,f\n" + "".join(
        f"{i}.png,{','.join(map(str, r))}\n" for i, r in enumerate(y)))
    s1 = splits_for_csv(csv_path, scheme="kfold", seed=1)
    assert (tmp_path / "splits_labels_kfold4_seed1.json").is_file()
    s2 = splits_for_csv(csv_path, scheme="kfold", seed=1)
    np.testing.assert_array_equal(s1[2].test, s2[2].test)
    with pytest.raises(ValueError, match="holds splits made with"):
        splits_for_csv(csv_path, scheme="kfold", seed=2, path=tmp_path / "splits_labels_kfold4_seed1.json")
    s3 = splits_for_csv(csv_path, scheme="holdout", seed=2, path=tmp_path / "holdout.json")
    assert s3.scheme == "holdout"


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(scheme="loo"), ValueError, "scheme must be one of"),
    (dict(ratios=(0.7, 0.2, 0.2)), ValueError, "ratios must sum to 1"),
    (dict(ratios=(0.0, 0.5, 0.5)), ValueError, "train > 0"),
    (dict(ratios=(0.5, 0.5)), ValueError, r"ratios must be \(train, val, test\)"),
    (dict(scheme="kfold", n_folds=1), ValueError, "n_folds must be an int >= 2"),
    (dict(seed=-1), ValueError, "seed must be a non-negative int"),
])
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        make_splits(_long_tail(100), **kwargs)


def test_bad_targets():
    with pytest.raises(ValueError, match=r"targets must be 2-D \(N, C\)"):
        make_splits(np.zeros(10))
    with pytest.raises(ValueError, match=r"multi-hot with values in \{0, 1\}, got 2"):
        make_splits(np.full((10, 2), 2))
    with pytest.raises(ValueError, match="n_folds=4 needs at least 4 samples, got 3"):
        make_splits(np.eye(3, dtype=np.uint8), scheme="kfold")
    with pytest.raises(ValueError, match="cannot take a fraction"):
        make_splits(np.eye(3, dtype=np.uint8), ratios=(0.7, 0.1, 0.2))


def _write_csv(path, y, extra=""):
    path.write_text("image,a,b,c,d,e,f" + (",age" if extra else "") + "\n" + "".join(
        f"{i}.png,{','.join(map(str, r))}" + (f",{40 + i % 50}" if extra else "") + "\n"
        for i, r in enumerate(y)))


def test_split_file_is_keyed_by_the_csv_so_two_csvs_share_a_folder(tmp_path):
    a, b = tmp_path / "odir.csv", tmp_path / "brset export.csv"
    _write_csv(a, _long_tail(120, seed=0), extra="age")
    _write_csv(b, _long_tail(150, seed=1))
    sa = splits_for_csv(a, scheme="holdout", seed=0)
    sb = splits_for_csv(b, scheme="holdout", seed=0)
    pa, pb = default_splits_path(a, "holdout", 0), default_splits_path(b, "holdout", 0)
    assert pa.name == "splits_odir_holdout_seed0.json"
    assert pb.name.startswith("splits_brset_export-") and pb.name.endswith("_holdout_seed0.json")
    assert default_splits_path(a, "kfold", 3, n_folds=5).name == "splits_odir_kfold5_seed3.json"
    assert sa.num_samples == 120 and sb.num_samples == 150
    # both load again, each from its own file; the age column was not read as a label
    assert splits_for_csv(a, scheme="holdout", seed=0).num_samples == 120
    assert splits_for_csv(b, scheme="holdout", seed=0).num_samples == 150
    assert json.loads(pa.read_text())["label_columns"] == list("abcdef")


def test_split_file_stratifies_on_the_named_class_names_only(tmp_path):
    a = tmp_path / "labels.csv"
    _write_csv(a, _long_tail(120), extra="age")
    splits_for_csv(a, scheme="holdout", seed=0, class_names=["a", "b"])
    assert json.loads(default_splits_path(a).read_text())["label_columns"] == ["a", "b"]
    from recipes.data.csv_dataset import CSVDataError

    with pytest.raises(CSVDataError, match=r"line 2, column 'age': expected a label 0 or 1, got '40'"):
        splits_for_csv(a, scheme="holdout", seed=1, class_names=["a", "age"])


def test_changed_csv_is_refused_with_the_file_to_delete_and_the_command(tmp_path):
    a = tmp_path / "labels.csv"
    _write_csv(a, _long_tail(120))
    splits_for_csv(a, scheme="kfold", seed=0)
    path = default_splits_path(a, "kfold", 0)
    before = path.read_bytes()
    _write_csv(a, _long_tail(121))  # one more image
    with pytest.raises(SplitsMismatchError) as info:
        splits_for_csv(a, scheme="kfold", seed=0)
    msg = str(info.value)
    assert f"{a} has changed since the splits were made" in msg
    assert f"delete {path}" in msg
    assert f"python -m recipes.data.splits --csv {a} --scheme kfold --seed 0 --n-folds 4 --replace" in msg
    assert path.read_bytes() == before  # refused, not overwritten
    from recipes.data.splits import main

    assert main(["--csv", str(a), "--scheme", "kfold", "--seed", "0", "--replace"]) == 0
    assert splits_for_csv(a, scheme="kfold", seed=0).num_samples == 121
