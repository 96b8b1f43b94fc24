"""One head / medium / tail rule everywhere: classes at and next to the thresholds (100, 20) fall in the
same group in the metrics, the shot partition, the data description and the evidence report."""
from __future__ import annotations

import numpy as np
import pytest

from rskd_loss.metrics import group_map, shot_group_of, shot_groups
from rskd_loss.partition import SubsetPartitioner

# training positives per class, and the group each must be in: head >= 100, medium [20, 100), tail < 20
COUNTS = [100, 99, 20, 19, 101, 21]
EXPECTED = ["head", "medium", "medium", "tail", "head", "medium"]
NAMES = [f"c{n}" for n in COUNTS]


def _members(group: str) -> list[int]:
    return [i for i, g in enumerate(EXPECTED) if g == group]


def test_metrics_groups() -> None:
    assert {g: idx.tolist() for g, idx in shot_groups(COUNTS).items()} == {g: _members(g) for g in ("head", "medium", "tail")}
    assert shot_group_of(COUNTS, (100, 20)) == EXPECTED
    # group_map: a class with AP 1 and every other class AP 0 lifts exactly its own group's mAP above 0
    for i, group in enumerate(EXPECTED):
        ap = np.zeros(len(COUNTS))
        ap[i] = 1.0
        m = group_map(ap, COUNTS, (100, 20))
        assert [g for g in ("head", "medium", "tail") if m[g] > 0] == [group], (COUNTS[i], m)


@pytest.mark.parametrize("kwargs", [dict(thresholds=(100, 20)), {}])
def test_partition_groups(kwargs: dict) -> None:
    part = SubsetPartitioner("shot", **kwargs).partition(class_counts=COUNTS)
    assert dict(zip(part.names, (list(s) for s in part.subsets))) == {g: _members(g) for g in ("head", "medium", "tail")}


def test_partition_quantile_mode_uses_the_same_rule() -> None:
    # tertile cuts of [1, 2, 4, 4, 8, 9]: t_head = 4 + 1/3 * (8 - 4) = 16/3, t_tail = 2 + 2/3 * 2 = 10/3;
    # the counts equal to a cut would go up (none here), the tied 4s stay together in medium
    counts = [1, 2, 4, 4, 8, 9]
    part = SubsetPartitioner("shot", mode="quantile").partition(class_counts=counts)
    want = {g: idx.tolist() for g, idx in shot_groups(counts, mode="quantile").items()}
    assert want == {"head": [4, 5], "medium": [2, 3], "tail": [0, 1]}
    assert dict(zip(part.names, (list(s) for s in part.subsets))) == want
    # a count equal to an exact (integer) tertile cut is in the upper group: [0, 3, 6, 9] -> cuts 6 and 3
    assert shot_group_of([0, 3, 6, 9], mode="quantile") == ["tail", "medium", "head", "head"]


def test_describe_groups(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from recipes.data.describe import describe

    n = max(COUNTS)
    y = np.zeros((n, len(COUNTS)), dtype=int)
    for j, c in enumerate(COUNTS):
        y[:c, j] = 1
    rows = "".join(f"img{i}.png,{','.join(map(str, r))}\n" for i, r in enumerate(y))
    (tmp_path / "labels.csv").write_text("image," + ",".join(NAMES) + "\n" + rows)
    s = describe(tmp_path / "labels.csv", tmp_path / "out", verbose=False)
    assert s["class_counts"] == COUNTS
    assert s["groups"] == {g: [NAMES[i] for i in _members(g)] for g in ("head", "medium", "tail")}
    # the printed per-class table (and the figure colours, from the same list) show the same groups
    table = (tmp_path / "out" / "summary.txt").read_text()
    for c, g, name in zip(COUNTS, EXPECTED, NAMES):
        assert f"  {c:7d}  {g:6s}  {name}\n" in table


def test_evidence_groups() -> None:
    evidence = pytest.importorskip("recipes.table3.evidence")

    class Sweep:  # the reads kd_weight_section makes of a sweep folder: one student run
        def run(self, row, fold, seed):
            return row

        def result(self, run):
            return {"stage": "student", "train_class_counts": COUNTS}

        def metrics(self, run):
            return [{"epoch": 0, "kd_weights": [2.0 ** i for i in range(len(COUNTS))]}]

    out = evidence.kd_weight_section(Sweep(), ["ours_shot"], [0], [0], (100, 20))
    got = {r["group"]: r["weight"] for r in out}
    want = {g: float(np.mean([2.0 ** i for i in _members(g)])) for g in ("head", "medium", "tail")}
    assert got == pytest.approx(want)
