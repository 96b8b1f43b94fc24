"""Tests of rskd_loss.priors: discovery, loading and validation of the shipped region/phenotype priors.

Reference facts are typed here from their sources, not read back from the shipped files:
- RFMiD's 45 condition columns after ID and Disease_Risk (Pachade et al., Data 2021, 6(2):14; the
  abbreviation table of github.com/pth1993/Ophthalmology-Data RFMiD.md lists the same order).
- Ju et al. (MICCAI 2021) Table 1: lesions named per region.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from rskd_loss.priors import (
    GROUPING_KEYS,
    PRIOR_KEYS,
    available_priors,
    load_prior,
    validate_prior,
)

RFMID_COLUMNS = (
    "DR ARMD MH DN MYA BRVO TSLN ERM LS MS CSR ODC CRVO TV AH ODP ODE ST AION PT RT RS CRS EDN RPEC "
    "MHL RP CWS CB ODPM PRH MNF HR CRAO TD CME PTCR CF VH MCA VS BRAO PLQ HPED CL"
).split()

# Table 1 of the paper, less the two pigment-change classes that lesion10 leaves out (see its description)
TABLE1_LESION10 = {
    "optic_disc": {"glaucoma", "myelinated_nerve_fiber"},
    "macula": {"epiretinal_membrane", "drusen", "macular_hole"},
    "vessels": {"arteriovenous_crossing", "perivascular_sheathing"},
    "global": {"hemorrhage", "hard_exudates", "soft_exudates"},
}
REGIONS = ["optic_disc", "macula", "vessels", "global"]


def _tiny() -> dict:
    return {
        "name": "tiny",
        "description": "three classes",
        "sources": ["a test"],
        "classes": ["a", "b", "c"],
        "region": {"r1": ["a", "c"], "r2": ["b"]},
        "feature": {"f1": ["a"], "f2": ["b", "c"]},
    }


def _group_of(prior: dict, key: str) -> dict[str, str]:
    return {c: g for g, members in prior[key].items() for c in members}


# ------------------------------------------------------------------------------------------------
# shipped priors
# ------------------------------------------------------------------------------------------------
def test_shipped_priors_are_discovered_from_the_folder():
    names = available_priors()
    assert {"rfmid", "lesion10"} <= set(names)
    assert list(names) == sorted(names)
    folder = Path(__file__).resolve().parents[2] / "rskd_loss" / "priors"
    assert set(names) == {p.stem for p in folder.glob("*.json")}


@pytest.mark.parametrize("name", available_priors())
def test_every_shipped_prior_is_valid_and_each_class_in_exactly_one_group(name):
    prior = load_prior(name)
    assert prior["name"] == name
    assert set(prior) <= set(PRIOR_KEYS)
    for key in GROUPING_KEYS:
        flat = [c for members in prior[key].values() for c in members]
        assert sorted(flat) == sorted(prior["classes"])  # covering
        assert len(flat) == len(set(flat))  # no class twice
        assert all(prior[key].values())  # no empty group


def test_rfmid_has_the_official_columns_and_table1_regions():
    prior = load_prior("rfmid")
    assert len(RFMID_COLUMNS) == 45
    assert prior["classes"] == RFMID_COLUMNS
    assert list(prior["region"]) == REGIONS
    region = _group_of(prior, "region")
    # spot checks from the clinical meaning of each abbreviation and the paper's Table 1
    assert region["ODC"] == "optic_disc"  # optic disc cupping (glaucoma: Table 1 optic disc)
    assert region["MNF"] == "optic_disc"  # myelinated nerve fibres: Table 1 optic disc
    assert region["MHL"] == "macula"  # macular hole: Table 1 macula
    assert region["DN"] == "macula"  # drusen: Table 1 macula
    assert region["ERM"] == "macula"  # epiretinal membrane: Table 1 macula
    assert region["VS"] == "vessels"  # vasculitis = perivascular sheathing: Table 1 vessels
    assert region["MH"] == "global"  # MH is media haze, not macular hole
    assert region["PRH"] == "global"  # hemorrhage: Table 1 global
    assert region["EDN"] == "global" and region["CWS"] == "global"  # hard / soft exudates: Table 1 global
    assert region["DR"] == "global"  # moved from 'vessels': its signs are hemorrhages and exudates
    assert "global" in prior["notes"]["DR"] and "Table 1" in prior["notes"]["DR"]
    assert set(prior["notes"]) == set(RFMID_COLUMNS)  # a written reason for every class


def test_rfmid_feature_groups_follow_the_papers_example():
    feature = _group_of(load_prior("rfmid"), "feature")
    # Sec. 2.1: vein occlusion and DR (and hypertension) share the hemorrhage phenotype
    assert feature["DR"] == feature["BRVO"] == feature["CRVO"] == feature["HR"]
    assert feature["ODC"] == feature["ODE"] == feature["ODP"]  # optic nerve head signs


def test_lesion10_follows_table1():
    prior = load_prior("lesion10")
    assert len(prior["classes"]) == 10
    assert list(prior["region"]) == REGIONS
    assert {g: set(m) for g, m in prior["region"].items()} == TABLE1_LESION10
    assert "Table 1" in prior["description"] and "hypo-pigmentation" in prior["description"]
    feature = _group_of(prior, "feature")
    assert feature["drusen"] == feature["hard_exudates"]  # Sec. 2.1: fine-grained look-alikes together


def test_load_prior_returns_a_fresh_copy():
    a = load_prior("rfmid")
    a["region"]["macula"].append("XXX")
    a["classes"].clear()
    b = load_prior("rfmid")
    assert "XXX" not in b["region"]["macula"] and len(b["classes"]) == 45


# ------------------------------------------------------------------------------------------------
# loading by path, errors
# ------------------------------------------------------------------------------------------------
def test_load_prior_from_a_path(tmp_path):
    data = _tiny()
    data["notes"] = {"a": "why a"}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data))
    for arg in (path, str(path)):
        prior = load_prior(arg)
        assert prior["region"] == {"r1": ["a", "c"], "r2": ["b"]}
        assert list(prior["feature"]) == ["f1", "f2"]  # order kept
        assert prior["notes"] == {"a": "why a"}


def test_unknown_prior_name_lists_the_shipped_ones():
    with pytest.raises(ValueError, match=r"unknown prior 'nope'.*'lesion10'.*'rfmid'"):
        load_prior("nope")


def test_load_prior_errors(tmp_path):
    with pytest.raises(TypeError, match=r"name_or_path must be a prior name or a path, got int"):
        load_prior(3)
    with pytest.raises(FileNotFoundError, match=r"does not exist"):
        load_prior(os.path.join(str(tmp_path), "missing.json"))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json.*not valid JSON"):
        load_prior(broken)
    repeated = tmp_path / "repeated.json"
    repeated.write_text(
        '{"name": "r", "description": "", "sources": [], "classes": ["a", "b"], '
        '"region": {"g": ["a"], "g": ["b"]}, "feature": {"f": ["a", "b"]}}'
    )
    with pytest.raises(ValueError, match=r"repeated\.json.*key 'g' is repeated"):
        load_prior(repeated)
    typo = tmp_path / "typo.json"
    data = _tiny()
    data["regions"] = {}
    typo.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"typo\.json.*unknown key\(s\) \['regions'\]; allowed keys are"):
        load_prior(typo)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("feature"), r"missing required key\(s\) \['feature'\]"),
        (lambda d: d.pop("description"), r"missing required key\(s\) \['description'\]"),
        (lambda d: d["region"]["r2"].append("a"), r"class 'a' is in two groups: 'r1' and 'r2' of 'region'"),
        (lambda d: d["region"]["r1"].append("a"), r"class 'a' is twice in group 'r1' of 'region'"),
        (lambda d: d["feature"]["f2"].remove("c"), r"1 class\(es\) are in no 'feature' group.*\['c'\]"),
        (lambda d: d["region"]["r2"].append("zz"), r"region\['r2'\] names class\(es\) not in 'classes': \['zz'\]"),
        (lambda d: d["region"].update(r3=[]), r"region\['r3'\] must not be empty"),
        (lambda d: d["region"].update({"": ["a"]}), r"group names must be non-empty strings"),
        (lambda d: d.update(region={}), r"'region' must have at least one group"),
        (lambda d: d.update(feature=["a"]), r"'feature' must be an object"),
        (lambda d: d["classes"].append("a"), r"'classes' must be unique, got 'a' at positions 0 and 3"),
        (lambda d: d.update(classes=[]), r"'classes' must not be empty"),
        (lambda d: d.update(name=""), r"'name' must be a non-empty string"),
        (lambda d: d.update(description=None), r"'description' must be a string"),
        (lambda d: d.update(classes="abc"), r"'classes' must be a list of strings, got str"),
        (lambda d: d.update(sources=[1]), r"'sources'\[0\] must be a non-empty string, got 1"),
        (lambda d: d.update(notes={"a": 1}), r"'notes' must be an object of strings"),
    ],
)
def test_validate_prior_errors_name_the_source(mutate, message):
    data = copy.deepcopy(_tiny())
    mutate(data)
    with pytest.raises(ValueError, match=r"^mine\.json: .*" + message):
        validate_prior(data, source="mine.json")


def test_validate_prior_rejects_a_non_object():
    with pytest.raises(ValueError, match=r"a prior must be a JSON object, got list"):
        validate_prior([1, 2])


def test_validate_prior_returns_a_copy_and_keeps_its_input():
    data = _tiny()
    before = copy.deepcopy(data)
    out = validate_prior(data)
    assert out == data  # the documented format without 'notes' is valid as is
    out["region"]["r1"].append("b")
    assert data == before
