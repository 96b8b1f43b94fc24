"""Name -> criterion registry: baselines/registry.py."""
from __future__ import annotations

import pytest
import torch

from rskd_loss.baselines.bce import MultiLabelBCELoss
from rskd_loss.baselines.db_loss import DBLoss
from rskd_loss.baselines.focal import FocalLoss
from rskd_loss.baselines.ldam import LDAMLoss
from rskd_loss.baselines.registry import available_criteria, build_criterion
from rskd_loss.baselines.reweight import ReweightedBCE

COUNTS = [40, 12, 5, 1]
N_IMG = 80


def test_available_criteria() -> None:
    names = available_criteria()
    assert isinstance(names, tuple)
    assert set(names) == {"bce", "erm", "rw", "focal", "ldam", "db", "oltr", "asl"}


@pytest.mark.parametrize(
    "name,cls",
    [("bce", MultiLabelBCELoss), ("erm", MultiLabelBCELoss), ("rw", ReweightedBCE), ("focal", FocalLoss),
     ("ldam", LDAMLoss), ("db", DBLoss), ("FOCAL", FocalLoss), (" Erm ", MultiLabelBCELoss)],
)
def test_build_by_name(name: str, cls: type) -> None:
    crit = build_criterion(name, class_counts=COUNTS, num_images=N_IMG)
    assert type(crit) is cls


def test_built_criterion_computes_what_the_class_computes() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=g)
    targets = torch.randint(0, 2, (5, 4), generator=g)
    pairs = [
        (build_criterion("rw", COUNTS, mode="sqrt_inverse"), ReweightedBCE(COUNTS, mode="sqrt_inverse")),
        (build_criterion("ldam", COUNTS, drw_epoch=0), LDAMLoss(COUNTS, drw_epoch=0)),
        (build_criterion("db", COUNTS, N_IMG, preset="voc"), DBLoss(COUNTS, N_IMG, preset="voc")),
        (build_criterion("focal", gamma=1.0), FocalLoss(gamma=1.0)),
    ]
    for built, direct in pairs:
        assert torch.equal(built(logits, targets), direct(logits, targets))


def test_kwargs_pass_through() -> None:
    crit = build_criterion("focal", alpha=None, gamma=0.5, reduction="sum")
    assert (crit.alpha, crit.gamma, crit.reduction) == (None, 0.5, "sum")
    ldam = build_criterion("ldam", COUNTS, max_m=0.3, s=10.0)
    assert (ldam.max_m, ldam.s) == (0.3, 10.0)
    # a criterion that does not use the statistics accepts and ignores them
    assert isinstance(build_criterion("focal", COUNTS, N_IMG), FocalLoss)


def test_config_dict() -> None:
    crit = build_criterion({"name": "db", "preset": "voc"}, class_counts=COUNTS, num_images=N_IMG)
    assert isinstance(crit, DBLoss) and crit.lambda_ == 5.0 and crit.mu == 0.3
    # keyword arguments override the config's
    crit2 = build_criterion({"name": "db", "preset": "voc", "mu": 0.4}, COUNTS, N_IMG, mu=0.1)
    assert crit2.mu == 0.1
    # statistics may live in the config too
    crit3 = build_criterion({"name": "rw", "class_counts": COUNTS, "mode": "effective_number"})
    assert isinstance(crit3, ReweightedBCE) and crit3.mode == "effective_number"
    crit4 = build_criterion({"name": "db", "class_counts": COUNTS, "num_images": N_IMG})
    assert crit4.num_images == N_IMG
    # the caller's config is not modified
    cfg = {"name": "focal", "gamma": 1.0}
    build_criterion(cfg)
    assert cfg == {"name": "focal", "gamma": 1.0}


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown criterion 'cb'; valid names: bce, erm, rw, focal, ldam, db, oltr, asl$"):
        build_criterion("cb")
    with pytest.raises(ValueError, match="unknown criterion 'cbloss'; valid names"):
        build_criterion({"name": "cbloss"})


@pytest.mark.parametrize("name", ["rw", "ldam", "db"])
def test_missing_class_counts(name: str) -> None:
    with pytest.raises(ValueError, match=f"criterion '{name}' needs class_counts"):
        build_criterion(name, num_images=N_IMG)


def test_missing_num_images() -> None:
    with pytest.raises(ValueError, match="criterion 'db' needs num_images"):
        build_criterion("db", COUNTS)


def test_oltr_requirements_checked_before_import() -> None:
    with pytest.raises(ValueError, match="criterion 'oltr' needs feat_dim"):
        build_criterion("oltr", num_classes=4)
    with pytest.raises(ValueError, match=r"criterion 'oltr' needs num_classes \(or class_counts to infer it\)"):
        build_criterion("oltr", feat_dim=16)


def test_oltr_builds() -> None:
    from rskd_loss.baselines.oltr import OLTRLoss

    crit = build_criterion("oltr", num_classes=4, feat_dim=16)
    assert isinstance(crit, OLTRLoss)
    crit2 = build_criterion({"name": "oltr", "feat_dim": 16}, class_counts=COUNTS)  # C inferred from counts
    assert isinstance(crit2, OLTRLoss)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="a criterion config needs a 'name' key"):
        build_criterion({"preset": "voc"})
    with pytest.raises(TypeError, match="config 'name' must be a string, got int"):
        build_criterion({"name": 3})
    with pytest.raises(TypeError, match="name_or_config must be a string or a mapping, got list"):
        build_criterion(["focal"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="class_counts given twice"):
        build_criterion({"name": "rw", "class_counts": COUNTS}, class_counts=COUNTS)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        build_criterion("focal", beta=0.5)
    # invalid values are reported by the criterion itself
    with pytest.raises(ValueError, match="got 0 for class 1"):
        build_criterion("ldam", [3, 0, 2])
