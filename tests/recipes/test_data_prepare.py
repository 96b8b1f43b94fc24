"""A run's data preparation (recipes/data/folds.py prepare_data): the label-column note said once per
data set and process, and never for the generator's own classes; ``data.synthetic`` options that
differ from the generation already in ``data.root`` refused."""
from __future__ import annotations

import json

import numpy as np
import pytest

from recipes.config import CONFIG_DIR, ConfigError, load_config
from recipes.data.folds import prepare_data
from recipes.data.synthetic import generate_synthetic

ERM = CONFIG_DIR / "table3" / "erm.py"
SMALL = dict(seed=0, num_images=120, image_size=32, num_classes=6)


def _synthetic_cfg(root, **synthetic) -> dict:
    return load_config(ERM, "demo", [f"data.root={str(root)!r}", f"data.synthetic={ {**SMALL, **synthetic}!r}"])


def _user_csv(root) -> None:
    """A CSV of the user's own: an image column, three 0/1 label columns and an age column."""
    rng = np.random.default_rng(0)
    root.mkdir()
    lines = ["image,DR,ARMD,MH,age"]
    for j in range(60):
        labels = (rng.random(3) < (0.5, 0.3, 0.2)).astype(int)
        lines.append(f"img{j}.png,{','.join(map(str, labels))},{40 + j}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_generated_set_prepared_twice_says_nothing_about_label_columns(tmp_path, capsys):
    cfg = _synthetic_cfg(tmp_path / "syn")
    first, second = prepare_data(cfg, 0, 1), prepare_data(cfg, 0, 1)
    assert first["class_names"] == second["class_names"] and len(first["class_names"]) == 6
    assert "label column" not in capsys.readouterr().out


def test_user_csv_without_class_names_is_described_once_per_process(tmp_path, capsys):
    _user_csv(tmp_path / "mine")
    cfg = load_config(ERM, "demo", [f"data.root={str(tmp_path / 'mine')!r}", "data.dataset='csv'",
                                    "method.partition.prior=None"])
    for _ in range(3):
        assert prepare_data(cfg, 0, 1)["class_names"] == ("DR", "ARMD", "MH")
    out = capsys.readouterr().out
    assert out.count("data: labels.csv: took 3 label column(s) (every column of 0/1 values)") == 1, out
    assert "skipped 1 column(s) with other values: 'age'" in out


def test_synthetic_options_other_than_the_folders_generation_are_refused(tmp_path):
    root = tmp_path / "syn"
    generate_synthetic(root, **SMALL)
    before = (root / "labels.csv").read_bytes()
    with pytest.raises(ConfigError) as info:
        prepare_data(_synthetic_cfg(root, num_images=200, image_size=48), 0, 1)
    message = str(info.value)
    assert "\n" not in message
    assert "num_images 120 in its meta.json, 200 in data.synthetic" in message
    assert "image_size 32 in its meta.json, 48 in data.synthetic" in message
    assert "seed" not in message and "num_classes" not in message  # only the differing options
    assert f"choose another data.root, or delete {str(root)!r}" in message
    assert (root / "labels.csv").read_bytes() == before  # nothing rewritten


def test_generator_defaults_stand_for_none(tmp_path):
    """``None`` (cpu_long's data.synthetic) means the generator's default, compared as such."""
    root = tmp_path / "syn"
    generate_synthetic(root, **SMALL)
    with pytest.raises(ConfigError, match=r"num_images 120 in its meta.json, 4000 in data.synthetic"):
        prepare_data(_synthetic_cfg(root, num_images=None), 0, 1)


def test_matching_synthetic_options_reuse_the_folder_silently(tmp_path, capsys):
    root = tmp_path / "syn"
    generate_synthetic(root, **SMALL)
    meta_before = json.loads((root / "meta.json").read_text())
    data = prepare_data(_synthetic_cfg(root), 0, 1)
    assert data["num_rows"] == 120 and json.loads((root / "meta.json").read_text()) == meta_before
    assert capsys.readouterr().out == ""
