"""Tests of rskd_loss.partition: Partition, SubsetPartitioner (shot / region / feature) and TeacherView.

Expected values are derived by hand in the comments; the shipped priors are only used through the
partition logic (which classes end up together), their clinical content is tested in test_priors.py.
"""
from __future__ import annotations

import dataclasses
import doctest
import hashlib
import json
import math
import os
import random
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rskd_loss.partition as partition_module
from rskd_loss.partition import Partition, SubsetPartitioner, TeacherView
from rskd_loss.priors import load_prior

SETTINGS = dict(deadline=None, derandomize=True)

RFMID_REGIONS = ["optic_disc", "macula", "vessels", "global"]


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def _check_invariants(part: Partition) -> None:
    """Disjoint, covering, no empty subset, each subset sorted, one unique name per subset."""
    flat = [i for s in part.subsets for i in s]
    assert sorted(flat) == list(range(part.num_classes))  # covering and disjoint together
    assert len(flat) == len(set(flat))
    assert all(len(s) > 0 for s in part.subsets)
    assert all(list(s) == sorted(s) for s in part.subsets)
    assert len(part.names) == len(part.subsets) == len(set(part.names))
    c2s = part.class_to_subset()
    assert all(i in part.subsets[c2s[i]] for i in range(part.num_classes))


def _shot(counts, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return SubsetPartitioner("shot", **kw).partition(class_counts=counts)


# ------------------------------------------------------------------------------------------------
# shot rule
# ------------------------------------------------------------------------------------------------
def test_fixed_thresholds_boundaries():
    # default (100, 20): head >= 100, medium [20, 100), tail < 20
    part = SubsetPartitioner("shot").partition(class_counts=[100, 99, 20, 19, 1000, 0])
    assert part.names == ("head", "medium", "tail")
    assert part.subsets == ((0, 4), (1, 2), (3, 5))
    assert part.rule == "shot"


def test_fixed_thresholds_custom_and_float_counts():
    # thresholds (10, 2.5): 10 -> head, 9.5 -> medium, 2.5 -> medium, 2.4 -> tail
    part = SubsetPartitioner("shot", thresholds=(10, 2.5)).partition(
        class_counts=torch.tensor([10.0, 9.5, 2.5, 2.4])
    )
    assert part.subsets == ((0,), (1, 2), (3,))


def test_shot_keeps_class_names_and_checks_their_length():
    with pytest.warns(UserWarning, match="'medium' is empty"):
        part = SubsetPartitioner("shot").partition(class_counts=[5, 500], class_names=["rare", "common"])
    assert part.class_names == ("rare", "common")
    with pytest.raises(ValueError, match="must have 3 entries"):
        SubsetPartitioner("shot").partition(class_counts=[5, 500], class_names=["a", "b", "c"])


@pytest.mark.parametrize(
    "thresholds, exc, message",
    [
        ((20, 100), ValueError, r"strictly decreasing.*thresholds\[0\]=20 and thresholds\[1\]=100"),
        ((50, 50), ValueError, r"strictly decreasing.*thresholds\[0\]=50 and thresholds\[1\]=50"),
        ((100, 0), ValueError, r"positive.*thresholds\[1\]=0"),
        ((-1, -5), ValueError, r"positive.*thresholds\[0\]=-1"),
        ((100, float("nan")), ValueError, r"positive and finite"),
        ((100,), ValueError, r"2 entries"),
        ((100, "20"), TypeError, r"thresholds\[1\] must be a number"),
        ((True, 0.5), TypeError, r"thresholds\[0\] must be a number"),
        (100, TypeError, r"thresholds must be a pair"),
    ],
)
def test_bad_thresholds(thresholds, exc, message):
    with pytest.raises(exc, match=message):
        SubsetPartitioner("shot", thresholds=thresholds)


def test_shot_needs_counts_and_checks_them():
    with pytest.raises(ValueError, match=r"rule='shot' needs class_counts"):
        SubsetPartitioner("shot").partition()
    with pytest.raises(ValueError, match=r"class_counts must be >= 0, got -1 for class 1"):
        SubsetPartitioner("shot").partition(class_counts=[3, -1])
    with pytest.raises(ValueError, match=r"class_counts must be finite"):
        SubsetPartitioner("shot").partition(class_counts=[3, float("nan")])


def test_quantile_mode_hand_case():
    # counts 1..6, sorted positions 0..5. numpy 'linear' quantile at p: position p*(n-1).
    # t_tail = q(1/3): position 5/3 -> 2 + (2/3)*(3-2) = 2.667 ; t_head = q(2/3): position 10/3 -> 4 + (1/3)*1 = 4.333
    # head: count >= 4.333 -> {5, 6} (indices 4, 5); medium: 2.667 <= c < 4.333 -> {3, 4}; tail: {1, 2}
    part = SubsetPartitioner("shot", mode="quantile").partition(class_counts=[1, 2, 3, 4, 5, 6])
    assert part.names == ("head", "medium", "tail")
    assert part.subsets == ((4, 5), (2, 3), (0, 1))


def test_quantile_mode_count_on_a_cut_goes_up():
    # counts 4, 3, 2, 1 (n = 4): t_tail = q(1/3) at position 1 -> sorted[1] = 2 exactly;
    # t_head = q(2/3) at position 2 -> sorted[2] = 3 exactly. A count equal to a cut joins the upper group:
    # 3 -> head (3 >= 3), 2 -> medium (2 <= 2 < 3), 1 -> tail.
    part = SubsetPartitioner("shot", mode="quantile").partition(class_counts=[4, 3, 2, 1])
    assert part.subsets == ((0, 1), (2,), (3,))


def test_quantile_mode_ties_stay_together_and_empty_middle_warns():
    # sorted [1, 1, 10, 10, 10, 50]: t_tail = q(1/3) at position 5/3 -> 1 + (2/3)*(10-1) = 7;
    # t_head = q(2/3) at position 10/3 -> 10 + (1/3)*(10-10) = 10. head = counts >= 10 (all three 10s and 50),
    # medium = 7 <= c < 10: nobody -> dropped with a warning; tail = the two 1s.
    with pytest.warns(UserWarning, match=r"group 'medium' is empty.*t_head=10, t_tail=7.*tie"):
        part = SubsetPartitioner("shot", mode="quantile").partition(class_counts=[10, 10, 10, 1, 1, 50])
    assert part.names == ("head", "tail")
    assert part.subsets == ((0, 1, 2, 5), (3, 4))


def test_quantile_mode_with_fewer_than_three_classes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # C = 2 and C = 1 give fewer groups by design: no warning
        two = SubsetPartitioner("shot", mode="quantile").partition(class_counts=[5, 50])
        one = SubsetPartitioner("shot", mode="quantile").partition(class_counts=[7])
    assert two.names == ("head", "tail") and two.subsets == ((1,), (0,))
    assert one.names == ("head",) and one.subsets == ((0,),)
    with pytest.warns(UserWarning, match="group 'tail' is empty"):  # a tie leaves no tail
        tie = SubsetPartitioner("shot", mode="quantile").partition(class_counts=[5, 5])
    assert tie.subsets == ((0, 1),)


def test_empty_group_warns_names_it_and_the_thresholds():
    with pytest.warns(UserWarning, match=r"group 'tail' is empty.*thresholds=\(100, 20\).*mode='quantile'") as rec:
        part = SubsetPartitioner("shot").partition(class_counts=[500, 120, 60])
    assert len(rec) == 1
    assert rec[0].filename == __file__  # the warning points at the caller's line
    assert part.names == ("head", "medium") and part.subsets == ((0, 1), (2,))
    _check_invariants(part)


def test_two_empty_groups_warn_twice():
    with pytest.warns(UserWarning) as rec:
        part = SubsetPartitioner("shot").partition(class_counts=[3, 7, 1])
    messages = [str(r.message) for r in rec]
    assert any("'head' is empty" in m for m in messages) and any("'medium' is empty" in m for m in messages)
    assert part.names == ("tail",) and part.subsets == ((0, 1, 2),)


def test_empty_group_raises_when_asked():
    with pytest.raises(ValueError, match=r"group 'head' is empty \(no class with count >= 100; thresholds=\(100, 20\)"):
        SubsetPartitioner("shot", on_empty="raise").partition(class_counts=[50, 30, 10])


@settings(max_examples=200, **SETTINGS)
@given(
    counts=st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=60),
    mode=st.sampled_from(["fixed", "quantile"]),
)
def test_shot_invariants_property(counts, mode):
    part = _shot(counts, mode=mode)
    _check_invariants(part)
    assert part.num_classes == len(counts)
    assert set(part.names) <= {"head", "medium", "tail"}
    order = [n for n in ("head", "medium", "tail") if n in part.names]
    assert list(part.names) == order
    # every class of an earlier group has more positives than every class of a later group
    groups = [[counts[i] for i in s] for s in part.subsets]
    for upper, lower in zip(groups, groups[1:]):
        assert min(upper) > max(lower)
    if mode == "fixed":
        head = {i for i, c in enumerate(counts) if c >= 100}
        tail = {i for i, c in enumerate(counts) if c < 20}
        assert set(dict(zip(part.names, part.subsets)).get("head", ())) == head
        assert set(dict(zip(part.names, part.subsets)).get("tail", ())) == tail


@settings(max_examples=150, **SETTINGS)
@given(counts=st.lists(st.integers(min_value=0, max_value=500), min_size=3, max_size=40))
def test_quantile_cuts_agree_with_numpy(counts):
    # The exact rational cuts equal numpy's default 'linear' quantiles; away from the cuts the
    # groups are the same as a float implementation would give.
    t_head = float(np.quantile(np.asarray(counts, dtype=np.float64), 2 / 3))
    t_tail = float(np.quantile(np.asarray(counts, dtype=np.float64), 1 / 3))
    part = _shot(counts, mode="quantile")
    group_of = dict(zip(range(len(counts)), (part.names[k] for k in part.class_to_subset())))
    for i, c in enumerate(counts):
        if abs(c - t_head) < 1e-9 or abs(c - t_tail) < 1e-9:
            continue
        expected = "head" if c > t_head else ("tail" if c < t_tail else "medium")
        assert group_of[i] == expected


def test_counts_are_not_changed():
    counts = torch.tensor([500.0, 50.0, 5.0])
    before = counts.clone()
    SubsetPartitioner("shot").partition(class_counts=counts)
    assert torch.equal(counts, before)


# ------------------------------------------------------------------------------------------------
# region and feature rules from a prior
# ------------------------------------------------------------------------------------------------
def test_region_rfmid_four_subsets_cover_45():
    prior = load_prior("rfmid")
    names = prior["classes"]
    part = SubsetPartitioner("region", prior="rfmid").partition(class_names=names)
    _check_invariants(part)
    assert part.num_classes == 45 and len(part.subsets) == 4
    assert list(part.names) == RFMID_REGIONS
    assert part.class_names == tuple(names)
    for region, members in zip(part.names, part.subsets):
        assert {names[i] for i in members} == set(prior["region"][region])


def test_region_lesion10_four_subsets_cover_10():
    names = load_prior("lesion10")["classes"]
    part = SubsetPartitioner("region", prior="lesion10").partition(class_names=names)
    _check_invariants(part)
    assert part.num_classes == 10 and list(part.names) == RFMID_REGIONS


def test_region_uses_the_data_sets_own_column_order_and_drops_absent_regions():
    # ODC is an optic-disc class and MH (media haze) a global one in every version of the prior
    part = SubsetPartitioner("region", prior="rfmid").partition(class_names=["MH", "ODC"])
    assert part.names == ("optic_disc", "global")
    assert part.subsets == ((1,), (0,))


def test_feature_rule_from_prior_covers_all_classes():
    prior = load_prior("rfmid")
    part = SubsetPartitioner("feature", prior="rfmid").partition(class_names=prior["classes"])
    _check_invariants(part)
    assert list(part.names) == list(prior["feature"])
    assert part.rule == "feature"


@settings(max_examples=60, **SETTINGS)
@given(data=st.data())
def test_region_and_feature_invariants_on_random_class_subsets(data):
    prior = load_prior("rfmid")
    names = data.draw(st.permutations(prior["classes"]))
    size = data.draw(st.integers(min_value=1, max_value=45))
    names = list(names[:size])
    rule = data.draw(st.sampled_from(["region", "feature"]))
    part = SubsetPartitioner(rule, prior="rfmid").partition(class_names=names)
    _check_invariants(part)
    present = [g for g in prior[rule] if any(n in prior[rule][g] for n in names)]
    assert list(part.names) == present  # prior order, absent groups dropped
    for group, members in zip(part.names, part.subsets):
        assert all(names[i] in prior[rule][group] for i in members)


def test_prior_as_mapping_and_as_file(tmp_path):
    mapping = {"a": "x", "b": "y", "c": "x"}
    part = SubsetPartitioner("region", prior=mapping).partition(class_names=["c", "b", "a"])
    assert part.names == ("x", "y") and part.subsets == ((0, 2), (1,))
    doc = {
        "name": "tiny",
        "description": "test prior",
        "sources": [],
        "classes": ["a", "b", "c"],
        "region": {"r2": ["b"], "r1": ["a", "c"]},
        "feature": {"f": ["a", "b", "c"]},
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(doc))
    part = SubsetPartitioner("region", prior=path).partition(class_names=["a", "b", "c"])
    assert part.names == ("r2", "r1") and part.subsets == ((1,), (0, 2))
    part = SubsetPartitioner("feature", prior=str(path)).partition(class_names=["a", "b", "c"])
    assert part.names == ("f",) and part.subsets == ((0, 1, 2),)
    part = SubsetPartitioner("region", prior=doc).partition(class_names=["c"])  # a loaded prior dict
    assert part.names == ("r1",)


def test_missing_class_names_are_listed_with_the_prior_name():
    names = ["DR"] + [f"unknown{i:02d}" for i in range(12)]
    with pytest.raises(ValueError, match=r"12 class name\(s\) not in prior 'rfmid'.*'unknown00'.*'unknown09'") as info:
        SubsetPartitioner("region", prior="rfmid").partition(class_names=names)
    assert "unknown10" not in str(info.value)  # only the first 10 are listed
    with pytest.raises(ValueError, match=r"not in prior '<mapping>': \['z'\]"):
        SubsetPartitioner("feature", prior={"a": "g"}).partition(class_names=["a", "z"])


def test_unknown_prior_and_missing_prior():
    with pytest.raises(ValueError, match=r"unknown prior 'nope'.*'lesion10'.*'rfmid'"):
        SubsetPartitioner("region", prior="nope")
    with pytest.raises(ValueError, match=r"rule='region' needs prior=.*'lesion10'.*'rfmid'"):
        SubsetPartitioner("region")
    with pytest.raises(ValueError, match=r"needs class_names=\(C,\)"):
        SubsetPartitioner("region", prior="rfmid").partition(class_counts=[1, 2])
    with pytest.raises(TypeError, match="prior must be"):
        SubsetPartitioner("region", prior=42)


def test_unknown_rule_and_options_that_do_not_belong_to_the_rule():
    with pytest.raises(ValueError, match=r"rule must be one of \('shot', 'region', 'feature'\), got 'Shot'"):
        SubsetPartitioner("Shot")
    with pytest.raises(ValueError, match=r"rule='shot' splits by class_counts, got prior='rfmid'"):
        SubsetPartitioner("shot", prior="rfmid")
    with pytest.raises(ValueError, match=r"num_subsets is used by rule='feature'"):
        SubsetPartitioner("region", prior="rfmid", num_subsets=3)
    with pytest.raises(ValueError, match=r"either prior= .* or num_subsets= .*got neither"):
        SubsetPartitioner("feature")
    with pytest.raises(ValueError, match=r"not both"):
        SubsetPartitioner("feature", prior="rfmid", num_subsets=3)
    with pytest.raises(ValueError, match=r"mode must be one of \('fixed', 'quantile'\), got 'tertile'"):
        SubsetPartitioner("shot", mode="tertile")
    with pytest.raises(ValueError, match=r"on_empty must be one of \('warn', 'raise'\), got 'ignore'"):
        SubsetPartitioner("shot", on_empty="ignore")
    with pytest.raises(ValueError, match=r"linkage must be one of \('average', 'complete', 'single'\).*'ward'"):
        SubsetPartitioner("feature", num_subsets=2, linkage="ward")
    with pytest.raises(ValueError, match=r"embeddings are used by rule='feature' with num_subsets="):
        SubsetPartitioner("shot").partition(class_counts=[1, 2], embeddings=np.ones((2, 2)))


# ------------------------------------------------------------------------------------------------
# feature rule from embeddings
# ------------------------------------------------------------------------------------------------
def _three_clusters(seed: int = 0):
    """12 class embeddings in 3 well separated directions (4 classes each), rows shuffled."""
    rng = np.random.default_rng(seed)
    directions = np.eye(3) * 10.0
    emb = np.concatenate([directions[g] + rng.normal(0.0, 0.3, size=(4, 3)) for g in range(3)])
    truth = np.repeat(np.arange(3), 4)
    perm = rng.permutation(12)
    return emb[perm], truth[perm]


def test_clustering_recovers_three_obvious_clusters():
    emb, truth = _three_clusters()
    part = SubsetPartitioner("feature", num_subsets=3).partition(embeddings=emb)
    _check_invariants(part)
    expected = {frozenset(np.flatnonzero(truth == g).tolist()) for g in range(3)}
    assert {frozenset(s) for s in part.subsets} == expected
    assert part.names == ("cluster0", "cluster1", "cluster2")
    assert [min(s) for s in part.subsets] == sorted(min(s) for s in part.subsets)  # ordered by smallest index
    assert part.rule == "feature"


def test_clustering_is_deterministic_scale_invariant_and_accepts_torch():
    emb, _ = _three_clusters(seed=1)
    partitioner = SubsetPartitioner("feature", num_subsets=3, linkage="complete")
    first = partitioner.partition(embeddings=emb)
    assert partitioner.partition(embeddings=emb) == first
    scales = np.linspace(0.1, 50.0, 12)[:, None]  # cosine distance ignores the length of each row
    assert partitioner.partition(embeddings=emb * scales) == first
    tensor = torch.from_numpy(emb).float()
    before = tensor.clone()
    assert partitioner.partition(embeddings=tensor) == first
    assert torch.equal(tensor, before)


def test_clustering_edge_sizes():
    emb, _ = _three_clusters()
    one = SubsetPartitioner("feature", num_subsets=1).partition(embeddings=emb)
    assert one.subsets == (tuple(range(12)),)
    each = SubsetPartitioner("feature", num_subsets=12).partition(embeddings=emb)
    assert each.subsets == tuple((i,) for i in range(12))
    single = SubsetPartitioner("feature", num_subsets=1).partition(embeddings=[[1.0, 2.0]], class_names=["a"])
    assert single.subsets == ((0,),) and single.class_names == ("a",)


def test_clustering_errors():
    emb, _ = _three_clusters()
    with pytest.raises(ValueError, match=r"num_subsets must be <= the number of classes C=12, got 13"):
        SubsetPartitioner("feature", num_subsets=13).partition(embeddings=emb)
    with pytest.raises(ValueError, match=r"num_subsets must be >= 1, got 0"):
        SubsetPartitioner("feature", num_subsets=0)
    with pytest.raises(TypeError, match=r"num_subsets must be an int"):
        SubsetPartitioner("feature", num_subsets=2.0)
    bad = emb.copy()
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    names = [f"c{i}" for i in range(12)]
    with pytest.raises(ValueError, match=r"NaN or Inf in the row\(s\) of class\(es\) \[3 \('c3'\), 7 \('c7'\)\]"):
        SubsetPartitioner("feature", num_subsets=3).partition(embeddings=bad, class_names=names)
    zero = emb.copy()
    zero[5] = 0.0
    with pytest.raises(ValueError, match=r"zero row\(s\) for class\(es\) \[5\]"):
        SubsetPartitioner("feature", num_subsets=3).partition(embeddings=zero)
    with pytest.raises(ValueError, match=r"2-D \(C, D\)"):
        SubsetPartitioner("feature", num_subsets=1).partition(embeddings=np.ones(4))
    with pytest.raises(ValueError, match=r"one entry per embedding row \(12\), got 2"):
        SubsetPartitioner("feature", num_subsets=3).partition(embeddings=emb, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"needs embeddings=\(C, D\)"):
        SubsetPartitioner("feature", num_subsets=3).partition()


@settings(max_examples=30, **SETTINGS)
@given(
    c=st.integers(min_value=1, max_value=15),
    d=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=10_000),
    data=st.data(),
)
def test_clustering_invariants_property(c, d, seed, data):
    k = data.draw(st.integers(min_value=1, max_value=c))
    emb = np.random.default_rng(seed).normal(size=(c, d)) + 1e-3  # non-zero rows
    part = SubsetPartitioner("feature", num_subsets=k).partition(embeddings=emb)
    _check_invariants(part)
    assert len(part.subsets) == k
    assert list(part.names) == [f"cluster{j}" for j in range(k)]
    assert [min(s) for s in part.subsets] == sorted(min(s) for s in part.subsets)


# ------------------------------------------------------------------------------------------------
# Partition validation, serialisation, fingerprint
# ------------------------------------------------------------------------------------------------
def test_partition_normalises_lists_and_sorts_subsets():
    part = Partition([[2, 0], np.array([1])], names=["a", "b"], num_classes=3)
    assert part.subsets == ((0, 2), (1,)) and isinstance(part.subsets[1][0], int)
    assert part.names == ("a", "b")
    assert part.class_to_subset() == (0, 1, 0)
    assert part.num_subsets == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        part.names = ("x", "y")


@pytest.mark.parametrize(
    "kwargs, exc, message",
    [
        (dict(subsets=[[0, 1], [1, 2]], names=["a", "b"], num_classes=3), ValueError,
         r"class 1 is in two subsets, 'a' \(subset 0\) and 'b' \(subset 1\)"),
        (dict(subsets=[[0, 1], [1, 2]], names=["a", "b"], num_classes=3, class_names=["x", "y", "z"]),
         ValueError, r"class 1 \('y'\) is in two subsets"),
        (dict(subsets=[[0, 0], [1]], names=["a", "b"], num_classes=2), ValueError,
         r"class 0 appears twice in subset 0 \('a'\)"),
        (dict(subsets=[[0], [3]], names=["a", "b"], num_classes=5), ValueError,
         r"3 class\(es\) missing: \[1, 2, 4\]"),
        (dict(subsets=[[0]], names=["a"], num_classes=2, class_names=["x", "y"]), ValueError,
         r"1 class\(es\) missing: \[1 \('y'\)\]"),
        (dict(subsets=[[0, 1], []], names=["a", "b"], num_classes=2), ValueError,
         r"subset 1 \('b'\) is empty"),
        (dict(subsets=[[0, 5]], names=["a"], num_classes=2), ValueError,
         r"class index 5, expected 0 <= index < num_classes=2"),
        (dict(subsets=[[0, -1]], names=["a"], num_classes=2), ValueError, r"class index -1"),
        (dict(subsets=[[0], [1]], names=["a"], num_classes=2), ValueError,
         r"names must have one entry per subset: expected 2, got 1"),
        (dict(subsets=[[0], [1]], names=["a", "a"], num_classes=2), ValueError, r"names must be unique"),
        (dict(subsets=[[0], [1]], names=["a", ""], num_classes=2), TypeError, r"names\[1\] must be a non-empty"),
        (dict(subsets=[[0], [1]], names=["a", "b"], num_classes=2, class_names=["x"]), ValueError,
         r"class_names must have num_classes=2 entries, got 1"),
        (dict(subsets=[[0.0], [1]], names=["a", "b"], num_classes=2), TypeError, r"must be an int, got float"),
        (dict(subsets=[[True], [1]], names=["a", "b"], num_classes=2), TypeError, r"got bool"),
        (dict(subsets=[[0]], names=["a"], num_classes=0), ValueError, r"num_classes must be >= 1, got 0"),
        (dict(subsets=[[0]], names=["a"], num_classes=1, rule="tertile"), ValueError, r"rule must be one of"),
        (dict(subsets="ab", names=["a"], num_classes=1), TypeError, r"subsets must be a sequence"),
    ],
)
def test_partition_validation_errors(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        Partition(**kwargs)


def test_json_round_trip_and_atomic_write(tmp_path):
    part = Partition(
        [[0, 3], [1], [2]], names=["head", "medium", "tail"], num_classes=4, rule="shot",
        class_names=["A", "B", "C", "D"],
    )
    path = tmp_path / "part.json"
    assert part.to_json(path) == path
    assert Partition.from_json(path) == part
    assert Partition.from_json(path).fingerprint() == part.fingerprint()
    assert json.loads(path.read_text())["subsets"] == [[0, 3], [1], [2]]
    other = Partition([[0, 1, 2, 3]], names=["all"], num_classes=4)
    other.to_json(str(path))  # overwrite in place
    assert Partition.from_json(path) == other
    assert os.listdir(tmp_path) == ["part.json"]  # no temporary file left behind
    assert Partition.from_dict(part.to_dict()) == part


def test_from_dict_and_from_json_errors(tmp_path):
    d = Partition([[0], [1]], names=["a", "b"], num_classes=2).to_dict()
    with pytest.raises(ValueError, match=r"unknown partition key\(s\) \['extra'\]"):
        Partition.from_dict({**d, "extra": 1})
    with pytest.raises(ValueError, match=r"missing partition key\(s\) \['num_classes'\]"):
        Partition.from_dict({k: v for k, v in d.items() if k != "num_classes"})
    path = tmp_path / "bad.json"
    path.write_text("{oops")
    with pytest.raises(ValueError, match=r"bad\.json.*not valid JSON"):
        Partition.from_json(path)


def test_fingerprint_is_sha256_of_canonical_json():
    part = Partition([[2, 0], [1]], names=["a", "b"], num_classes=3, rule="shot")
    # canonical JSON by definition: sorted keys, no spaces; the rule is not part of it
    canonical = '{"class_names":null,"names":["a","b"],"num_classes":3,"subsets":[[0,2],[1]]}'
    assert part.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()
    assert Partition([[0, 2], [1]], names=["a", "b"], num_classes=3).fingerprint() == part.fingerprint()
    different = [
        Partition([[0], [1, 2]], names=["a", "b"], num_classes=3),
        Partition([[0, 2], [1]], names=["a", "c"], num_classes=3),
        Partition([[1], [0, 2]], names=["b", "a"], num_classes=3),
        Partition([[0, 2], [1]], names=["a", "b"], num_classes=3, class_names=["x", "y", "z"]),
    ]
    prints = {p.fingerprint() for p in different} | {part.fingerprint()}
    assert len(prints) == 5


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def test_report_rows_imbalance_ratios_hand_case():
    counts = [500, 120, 60, 30, 10, 3]
    part = SubsetPartitioner("shot").partition(class_counts=counts)
    rows = part.report_rows(class_counts=counts)
    by_name = {r["subset"]: r for r in rows}
    assert [r["subset"] for r in rows] == ["head", "medium", "tail", "all"]
    # head {500, 120}: 500 / 120 = 4.1667; medium {60, 30}: 2; tail {10, 3}: 3.3333; all: 500 / 3 = 166.67
    assert by_name["head"]["imbalance_ratio"] == pytest.approx(500 / 120)
    assert by_name["medium"]["imbalance_ratio"] == pytest.approx(2.0)
    assert by_name["tail"]["imbalance_ratio"] == pytest.approx(10 / 3)
    assert by_name["all"]["imbalance_ratio"] == pytest.approx(500 / 3)
    assert (by_name["tail"]["min_positives"], by_name["tail"]["max_positives"]) == (3, 10)
    assert by_name["all"]["num_classes"] == 6 and by_name["all"]["index"] is None
    assert by_name["head"]["num_images"] is None  # needs targets
    # the paper's Fig. 4: every subset is less imbalanced than the whole set
    assert all(r["imbalance_ratio"] < by_name["all"]["imbalance_ratio"] for r in rows[:-1])


def test_report_rows_from_targets_and_zero_counts():
    part = Partition([[0, 1], [2]], names=["a", "b"], num_classes=3, class_names=["x", "y", "z"])
    targets = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 0]])
    rows = part.report_rows(targets=targets)
    # column sums: x = 3, y = 1, z = 0. subset a: images 0, 1, 3 -> 3; ratio 3 / 1 = 3.
    # subset b: no image, counts {0} -> ratio inf. all: images 0, 1, 3; counts {3, 1, 0} -> inf.
    assert rows[0]["classes"] == ("x", "y") and rows[0]["num_images"] == 3
    assert rows[0]["imbalance_ratio"] == pytest.approx(3.0)
    assert rows[1]["num_images"] == 0 and math.isinf(rows[1]["imbalance_ratio"])
    assert rows[2]["num_images"] == 3 and math.isinf(rows[2]["imbalance_ratio"])
    text = part.report(targets=targets)
    assert "inf" in text and "x, y" in text and part.fingerprint()[:12] in text
    # explicit counts take precedence for positives; targets still give the image counts
    rows = part.report_rows(class_counts=[4, 2, 1], targets=targets)
    assert rows[0]["imbalance_ratio"] == pytest.approx(2.0) and rows[0]["num_images"] == 3
    with pytest.raises(ValueError, match=r"targets must have num_classes=3 columns"):
        part.report_rows(targets=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"class_counts must have 3 entries"):
        part.report_rows(class_counts=[1, 2])


# ------------------------------------------------------------------------------------------------
# teacher view
# ------------------------------------------------------------------------------------------------
TARGETS = np.array(
    [
        [1, 0, 0, 0],  # image 0: positive in subset 0 only
        [0, 0, 1, 0],  # image 1: subset 1 only
        [0, 1, 0, 1],  # image 2: both subsets
        [0, 0, 0, 0],  # image 3: no positive at all
        [0, 0, 0, 1],  # image 4: subset 1 only
    ]
)


@pytest.mark.parametrize("as_type", ["numpy", "torch", "bool", "bf16"])
def test_teacher_view_both_image_modes(as_type):
    part = Partition([[0, 1], [2, 3]], names=["s0", "s1"], num_classes=4)
    targets = {
        "numpy": TARGETS,
        "torch": torch.from_numpy(TARGETS),
        "bool": TARGETS.astype(bool),
        "bf16": torch.from_numpy(TARGETS).to(torch.bfloat16),
    }[as_type]
    v0 = part.teacher_view(0, targets, images="positive")
    v1 = part.teacher_view(1, targets, images="positive")
    assert v0.sample_indices.tolist() == [0, 2] and v0.columns == (0, 1)
    assert v1.sample_indices.tolist() == [1, 2, 4] and v1.columns == (2, 3)
    every = part.teacher_view(1, targets, images="all")  # every image, image 3 is an all-negative example
    assert every.images == "all" and every.sample_indices.tolist() == [0, 1, 2, 3, 4]
    assert every.sample_indices.dtype == np.int64 and v1.sample_indices.dtype == np.int64
    assert not every.sample_indices.flags.writeable
    assert every == TeacherView(1, (2, 3), np.arange(5, dtype=np.int64), "all")
    assert every != v1
    assert part.teacher_view(1, targets) == v1  # the default: positive images (measured, see the docstring)


def test_teacher_view_balanced_adds_as_many_negatives_as_positives():
    # 60 images: subset 0 = class 0, positive on rows 0..9 (10 positives, 50 negatives)
    targets = np.zeros((60, 2), dtype=np.int64)
    targets[:10, 0] = 1
    targets[10:, 1] = 1
    part = Partition([[0], [1]], names=["a", "b"], num_classes=2)
    view = part.teacher_view(0, targets, images="balanced", seed=3)
    idx = view.sample_indices
    assert view.images == "balanced" and len(idx) == 20 and len(set(idx.tolist())) == 20
    assert set(range(10)) <= set(idx.tolist())                 # every positive kept
    assert (targets[idx, 0] == 0).sum() == 10                  # exactly as many negatives
    assert idx.tolist() == sorted(idx.tolist()) and not idx.flags.writeable
    assert np.array_equal(part.teacher_view(0, targets, images="balanced", seed=3).sample_indices, idx)
    assert not np.array_equal(part.teacher_view(0, targets, images="balanced", seed=4).sample_indices, idx)
    # subset 1 has 50 positives and only 10 negatives: every image
    assert part.teacher_view(1, targets, images="balanced").sample_indices.tolist() == list(range(60))


def test_teacher_view_errors_and_does_not_touch_targets():
    part = Partition([[0, 1], [2, 3]], names=["s0", "s1"], num_classes=4)
    targets = torch.from_numpy(TARGETS.copy())
    before = targets.clone()
    part.teacher_view(0, targets, images="positive")
    assert torch.equal(targets, before)
    with pytest.raises(ValueError, match=r"images must be one of \('all', 'positive', 'balanced'\), got 'negative'"):
        part.teacher_view(0, targets, images="negative")
    with pytest.raises(ValueError, match=r"k must be a subset index in \[0, 1\], got 2"):
        part.teacher_view(2, targets)
    with pytest.raises(ValueError, match=r"targets must have num_classes=4 columns, got shape \(5, 3\)"):
        part.teacher_view(0, targets[:, :3])
    with pytest.raises(ValueError, match=r"targets must be 2-D"):
        part.teacher_view(0, targets[0])
    soft = TARGETS.astype(float)
    soft[2, 1] = 0.5
    with pytest.raises(ValueError, match=r"multi-hot.*0.5 at index \(2, 1\)"):
        part.teacher_view(0, soft)
    with pytest.raises(TypeError, match=r"numpy array or a torch.Tensor"):
        part.teacher_view(0, TARGETS.tolist())


# ------------------------------------------------------------------------------------------------
# the docstring examples run
# ------------------------------------------------------------------------------------------------
def test_docstring_examples():
    result = doctest.testmod(partition_module, verbose=False)
    assert result.attempted >= 4 and result.failed == 0
