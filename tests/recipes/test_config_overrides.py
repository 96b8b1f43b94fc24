"""``--set`` overrides (recipes/config.py): a dotted key changes exactly that one field of every row
config, whatever ``_delete_`` the row uses; a dict value merges key by key, as mmengine's
``Config.merge_from_dict`` does (``_delete_=True`` replaces)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recipes.config import CONFIG_DIR, ConfigError, available_profiles, load_config
from rskd_loss.baselines import build_criterion

ROOT = Path(__file__).resolve().parents[2]
ROW_CONFIGS = sorted((CONFIG_DIR / "table3").glob("*.py")) + sorted((CONFIG_DIR / "table4").glob("*.py"))
#: a valid value, other than every row's own, for each criterion key a row config sets
NEW_VALUE = {"alpha": 0.5, "gamma": 1.0, "max_m": 0.3, "s": 16.0, "drw_epoch": 8, "preset": "voc",
             "mode": "sqrt_inverse", "gamma_neg": 2.0, "gamma_pos": 1.0, "clip": 0.1, "detach_focusing": False}


def _row_key_cases() -> list:
    """(row config, criterion key, new value): each key the row's criterion sets, or a new one."""
    cases = []
    for path in ROW_CONFIGS:
        keys = [k for k in load_config(path, "demo")["method"]["criterion"] if k != "name"]
        for key in keys or ["reduction"]:
            cases.append(pytest.param(path, key, NEW_VALUE.get(key, "sum"), id=f"{path.parent.name}/{path.stem}:{key}"))
    return cases


def test_every_row_config_is_covered():
    assert len(ROW_CONFIGS) >= 21 and {p.stem for p in ROW_CONFIGS} >= {"focal", "rw", "ldam", "db", "kd_t3"}


@pytest.mark.parametrize("path, key, value", _row_key_cases())
def test_a_dotted_criterion_override_changes_that_field_only(path, key, value):
    before = load_config(path, "demo")["method"]["criterion"]
    assert key == "reduction" or key in NEW_VALUE, f"add a valid new value of criterion key {key!r} to NEW_VALUE"
    assert before.get(key) != value
    after = load_config(path, "demo", [f"method.criterion.{key}={value!r}"])["method"]["criterion"]
    assert after == {**before, key: value}  # the name and every other field unchanged
    extra = {"feat_dim": 8} if after["name"] == "oltr" else {}  # the task passes the model's feature size
    build_criterion(after, class_counts=[50, 10, 2], num_images=100, **extra)  # a valid criterion


def test_the_rw_and_focal_rows_of_the_report():
    rw = load_config(CONFIG_DIR / "table3" / "rw.py", "demo", ["method.criterion.drw_epoch=8"])
    assert rw["method"]["criterion"] == {"name": "rw", "mode": "inverse", "drw_epoch": 8}
    focal = load_config(CONFIG_DIR / "table3" / "focal.py", "demo", ["method.criterion.gamma=1.0"])
    assert focal["method"]["criterion"] == {"name": "focal", "alpha": 0.25, "gamma": 1.0}


def test_a_nested_override_outside_the_criterion():
    path = CONFIG_DIR / "table3" / "ours_shot.py"
    before = load_config(path, "demo")
    after = load_config(path, "demo", ["method.partition.thresholds=(50, 10)", "method.kd.temperature=3"])
    assert after["method"]["partition"] == {**before["method"]["partition"], "thresholds": (50, 10)}
    assert after["method"]["kd"] == {**before["method"]["kd"], "temperature": 3}
    assert after["method"]["criterion"] == before["method"]["criterion"]


def test_a_dict_value_merges_key_by_key_as_in_mmengine():
    path = CONFIG_DIR / "table3" / "focal.py"
    cfg = load_config(path, "demo", ["method.criterion={'gamma': 1.0, 'reduction': 'sum'}",
                                     "method.partition={'thresholds': (50, 10)}"])
    assert cfg["method"]["criterion"] == {"name": "focal", "alpha": 0.25, "gamma": 1.0, "reduction": "sum"}
    assert cfg["method"]["partition"]["thresholds"] == (50, 10) and cfg["method"]["partition"]["rule"] == "shot"


def test_a_dict_value_with_delete_or_another_name_replaces_the_criterion():
    path = CONFIG_DIR / "table3" / "focal.py"
    deleted = load_config(path, "demo", ["method.criterion={'_delete_': True, 'name': 'focal', 'gamma': 3.0}"])
    assert deleted["method"]["criterion"] == {"name": "focal", "gamma": 3.0}
    renamed = load_config(path, "demo", ["method.criterion.name='ldam'", "method.criterion.max_m=0.3"])
    assert renamed["method"]["criterion"] == {"name": "ldam", "max_m": 0.3}  # focal's alpha, gamma dropped
    same = load_config(path, "demo", ["method.criterion={'name': 'focal', 'gamma': 3.0}"])
    assert same["method"]["criterion"] == {"name": "focal", "alpha": 0.25, "gamma": 3.0}


@pytest.mark.parametrize("overrides, message", [
    (["method.partition.thresholdz=(50, 10)"], r"unknown config key 'method.partition.thresholdz'; valid keys"),
    (["method.kd=3"], r"config key 'method.kd' must be a dict, got int"),
    (["method.criterion=3"], r"config key 'method.criterion' must be a dict, got int"),
    (["method.kd=3", "method.kd.delta=0.5"], r"override 'method.kd.delta' sets a key under 'method.kd', "
                                             r"which an earlier override set to 3"),
])
def test_bad_overrides_are_refused_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG_DIR / "table3" / "focal.py", "demo", overrides)


def test_train_help_lists_every_profile_file():
    names = sorted(p.stem for p in (CONFIG_DIR / "profiles").glob("*.py"))
    assert available_profiles() == names and "cpu_pretrained" in names
    out = subprocess.run([sys.executable, "-m", "recipes.train", "--help"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    profile_help = out[out.rindex("--profile PROFILE"):out.rindex("--out-dir OUT_DIR")]  # options, not usage
    for name in names:
        assert name in profile_help, (name, profile_help)


def _profile_with_settings(tmp_path: Path, settings: str) -> Path:
    path = tmp_path / "with_settings.py"
    path.write_text(f'_base_ = ["{CONFIG_DIR / "profiles" / "demo.py"}"]\n'
                    f"method = dict(criterion_settings={settings})\n")
    return path


def test_a_profiles_criterion_settings_reach_the_row_and_ours_plus_that_row(tmp_path):
    profile = _profile_with_settings(tmp_path, "dict(focal=dict(alpha=None, gamma=1.0), ldam=dict(drw_epoch=16))")
    for row in ("focal.py", "ours_focal.py"):
        assert load_config(CONFIG_DIR / "table3" / row, str(profile))["method"]["criterion"] == {
            "name": "focal", "alpha": None, "gamma": 1.0}
    ldam = load_config(CONFIG_DIR / "table3" / "ours_ldam.py", str(profile))["method"]["criterion"]
    assert ldam == {"name": "ldam", "max_m": 0.5, "s": 30.0, "drw_epoch": 16}
    assert load_config(CONFIG_DIR / "table3" / "erm.py", str(profile))["method"]["criterion"] == {"name": "bce"}
    # --set comes after the profile's choice
    overridden = load_config(CONFIG_DIR / "table3" / "focal.py", str(profile), ["method.criterion.gamma=3.0"])
    assert overridden["method"]["criterion"]["gamma"] == 3.0
    # criterion_settings given by --set take effect too (not only a profile's)
    by_set = load_config(CONFIG_DIR / "table3" / "focal.py", "demo", ["method.criterion_settings={'focal': {'gamma': 0.5}}"])
    assert by_set["method"]["criterion"] == {"name": "focal", "alpha": 0.25, "gamma": 0.5}


@pytest.mark.parametrize("settings, message", [
    ("dict(focal=dict(name='bce'))", "must not rename the criterion"),
    ("dict(focal=1.0)", "method.criterion_settings"),
])
def test_bad_criterion_settings_are_refused(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG_DIR / "table3" / "focal.py", str(_profile_with_settings(tmp_path, settings)))


def test_the_v2_profile_loads_every_row_with_its_calibrated_choices():
    for path in sorted((CONFIG_DIR / "table3").glob("*.py")):
        cfg = load_config(path, "cpu_pretrained_v2")
        assert cfg["model"]["cache_trunk"] and cfg["schedule"]["kind"] == "cosine"
        if cfg["method"]["criterion"]["name"] == "focal":
            assert cfg["method"]["criterion"]["gamma"] == 1.0, path
