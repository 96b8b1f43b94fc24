"""A user's own data set: the prior follows the data set, a missing or mismatched prior says how to
write one, and the template command writes a valid starting prior listing the user's classes."""
from __future__ import annotations

import json
import warnings

import pytest

from recipes.config import ConfigError, default_prior, load_config
from recipes.data.describe import main
from rskd_loss.priors import PriorError, load_prior, resolve_prior, template_prior

# a hospital-style export: BOM, spaces in class names, an age column, the image column second
EXPORT = ("patient_age,Image file,Diabetic retinopathy, Macular hole ,Glaucoma\n"
          "75,a.png,1,0,1\n61,b.png,0,1,0\n")
USER_CLASSES = ["Diabetic retinopathy", "Macular hole", "Glaucoma"]


def _csv(tmp_path):
    p = tmp_path / "labels.csv"
    p.write_bytes(b"\xef\xbb\xbf" + EXPORT.encode())
    return p


def test_resolve_prior_follows_the_data_set_or_asks_for_one():
    assert resolve_prior(None, ["hemorrhage", "drusen"], default="synthetic")["name"] == "synthetic"
    with pytest.raises(PriorError) as info:
        resolve_prior(None, USER_CLASSES, data="data/mine/labels.csv")
    msg = str(info.value)
    assert "method.partition.prior is not set" in msg and "3 classes of data/mine/labels.csv" in msg
    assert "python -m recipes.data.describe --csv YOUR_LABELS.csv --write-prior my_prior.json" in msg
    assert "method.partition.prior='my_prior.json'" in msg and "recipes/README.md" in msg


def test_mismatched_prior_lists_the_missing_classes():
    with pytest.raises(PriorError) as info:
        resolve_prior(None, ["drusen", *USER_CLASSES], default="synthetic", data="labels.csv")
    msg = str(info.value)
    assert msg.startswith("prior 'synthetic' (the default of labels.csv; method.partition.prior chooses "
                          "another) lacks 3 of the 4 classes of labels.csv: ['Diabetic retinopathy', "
                          "'Macular hole', 'Glaucoma']")
    assert "python -m recipes.data.describe --csv" in msg
    with pytest.raises(FileNotFoundError, match=r"prior file 'nope/p.json' does not exist.*recipes.data.describe --csv"):
        resolve_prior("nope/p.json", USER_CLASSES)


def test_template_command_writes_a_valid_prior_listing_the_csv_classes(tmp_path, capsys):
    csv_path = _csv(tmp_path)
    out = tmp_path / "my_prior.json"
    assert main(["--csv", str(csv_path), "--image-column", "Image file", "--write-prior", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "skipped 1 column(s) with other values: 'patient_age'" in printed and "wrote" in printed
    prior = load_prior(out)
    assert prior["name"] == "my_prior" and prior["classes"] == USER_CLASSES
    assert prior["region"] == {c: [c] for c in USER_CLASSES} == prior["feature"]
    with pytest.warns(UserWarning, match="groups nothing"):
        assert resolve_prior(str(out), USER_CLASSES)["classes"] == USER_CLASSES
    with pytest.raises(FileExistsError, match="exists; expected a new file"):
        main(["--csv", str(csv_path), "--write-prior", str(out)])
    out.write_text(json.dumps(template_prior(["A", "B"], name="two")))
    # an edited prior (classes grouped) resolves without the warning
    doc = json.loads(out.read_text())
    doc["region"] = {"macula": ["A", "B"]}
    out.write_text(json.dumps(doc))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(resolve_prior(out, ["B"])["region"]) == ["macula"]
    with pytest.raises(ValueError, match="unique"):
        template_prior(["A", "A"])


def test_profiles_do_not_apply_the_synthetic_prior_to_another_data_set(tmp_path):
    assert default_prior("synthetic") == "synthetic" and default_prior("csv") is None
    assert load_config(None, "demo")["method"]["partition"]["prior"] == "synthetic"
    assert load_config(None, "paper")["method"]["partition"]["prior"] == "synthetic"
    assert load_config(None, "rfmid")["method"]["partition"]["prior"] == "rfmid"
    assert load_config(None, "demo", ["data.dataset='rfmid'"])["method"]["partition"]["prior"] == "rfmid"
    csv = load_config(None, "demo", ["data.dataset='csv'"])  # the shot rule needs no prior
    assert csv["method"]["partition"]["prior"] is None
    for rule in ("region", "feature"):
        with pytest.raises(ConfigError) as info:
            load_config(None, "paper", ["data.dataset='csv'", f"method.partition.rule='{rule}'"])
        msg = str(info.value)
        assert f"must name a prior for the {rule} rule on data.dataset='csv', got None" in msg
        assert "python -m recipes.data.describe --csv" in msg
    prior = tmp_path / "mine.json"
    prior.write_text(json.dumps(template_prior(USER_CLASSES, name="mine")))
    cfg = load_config(None, "demo", ["data.dataset='csv'", "method.partition.rule='region'",
                                     f"method.partition.prior='{prior}'"])
    assert cfg["method"]["partition"]["prior"] == str(prior)
    with pytest.raises(ConfigError, match=r"method.partition.prior': prior file '.*absent.json' does not exist"):
        load_config(None, "demo", [f"method.partition.prior='{tmp_path / 'absent.json'}'"])
    with pytest.raises(ConfigError, match=r"method.partition.prior': unknown prior 'mine'"):
        load_config(None, "demo", ["method.partition.prior='mine'"])


def test_image_column_and_class_names_keys():
    cfg = load_config(None, "demo", ["data.dataset='csv'", "data.image_column='Image file'",
                                     "data.class_names=['Diabetic retinopathy', 'Glaucoma']"])
    assert cfg["data"]["image_column"] == "Image file"
    assert load_config(None, "demo")["data"]["image_column"] is None
    with pytest.raises(ConfigError, match=r"'data.class_names' must not name the image column"):
        load_config(None, "demo", ["data.image_column='img'", "data.class_names=['img', 'A']"])
    with pytest.raises(ConfigError, match=r"'data.image_column' must be None \(the first column\) or a column name"):
        load_config(None, "demo", ["data.image_column=3"])
