"""Every kind of run on the cached frozen trunk (``model.cache_trunk``): ERM, teachers started from the ERM
backbone, students with a bank and with online teachers, OLTR's two stages; and the checkpoints of
another trunk refused. One shared cache file for all of them. Tiny synthetic set, EfficientNet-Lite0 with
random weights, 32 px, CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recipes.config import ConfigError
from recipes.train import main

pytestmark = pytest.mark.slow  # a dozen whole runs

PROFILE = (
    "data = dict(root=%r, synthetic=dict(seed=0, num_images=240, image_size=32, num_classes=8),\n"
    "            scheme='holdout', image_size=32, batch_size=16, eval_batch_size=64, num_workers=0,\n"
    "            trunk_views=3)\n"
    "model = dict(name='efficientnet_lite0', pretrained=False, freeze=6, cache_trunk=True)\n"
    "schedule = dict(epochs=1)\n"
    "run = dict(device='cpu', max_steps_per_epoch=2)\n"
    "method = dict(partition=dict(mode='quantile', prior='synthetic'))\n"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trunk_runs")
    (tmp / "cached.py").write_text(PROFILE % str(tmp / "data"))
    configs = {
        "erm": "method = dict(name='erm', stage='baseline', criterion=dict(name='bce'))",
        "teacher": "method = dict(name='teacher', stage='teacher', criterion=dict(name='bce'), teacher_init='erm', "
                   "init_from=%r)" % str(tmp / "erm"),
        "student": "method = dict(name='ours', stage='student', criterion=dict(name='bce'), teacher_init='erm', "
                   "teachers_dir=%r)"
                   % str(tmp / "teachers"),
        "oltr1": "method = dict(name='oltr1', stage='baseline', criterion=dict(name='oltr'), oltr_stage=1)",
        "oltr2": "method = dict(name='oltr', stage='baseline', criterion=dict(name='oltr'), oltr_stage=2, "
                 "init_from=%r)" % str(tmp / "oltr1"),
    }
    for name, text in configs.items():
        (tmp / f"{name}.py").write_text(text + "\n")
    return tmp


def _run(env: Path, config: str, out: str, *sets: str) -> dict:
    return main(["--config", str(env / f"{config}.py"), "--profile", str(env / "cached.py"),
                 "--out-dir", str(env / out), *(["--set", *sets] if sets else [])])


def test_erm_teachers_and_students_on_the_cached_trunk(env: Path, capsys) -> None:
    assert _run(env, "erm", "erm")["stage"] == "baseline"
    erm = torch.load(env / "erm" / "best.pt", weights_only=True)["model"]
    for k in range(3):
        _run(env, "teacher", f"teachers/subset{k}", f"method.subset={k}")
    teacher = torch.load(env / "teachers" / "subset0" / "last.pt", weights_only=True)
    backbone = {key for key in teacher["model"] if key.startswith("backbone.")}
    assert backbone == {key for key in erm if key.startswith("backbone.")}  # stages 6 .. 8 in both
    assert "backbone.stages.stage6.0.conv_pw.weight" in backbone and "backbone.stages.stage5.0.conv_pw.weight" not in erm
    bank = _run(env, "student", "ours")
    online = _run(env, "student", "ours_online", "method.teacher_mode='online'")
    assert len(bank["teacher_val_ap"]) == len(online["teacher_val_ap"]) == 8
    assert bank["teacher_val_ap"] == online["teacher_val_ap"]  # the teachers' validation AP, on view 0 both
    assert list(env.glob("teachers/bank_train_*px.rskd"))
    assert capsys.readouterr().out.count("built trunk cache") == 1  # one file for every run
    assert len(list((env / "data" / ".cache").glob("trunk_*.npy"))) == 1
    with pytest.raises(ConfigError, match=r"subset0/best.pt was trained on model.cache_trunk=True with "
                                          r"model.freeze=6, this run on model.cache_trunk=True with model.freeze=7; "
                                          r"the teachers and the student must be cached the same way"):
        _run(env, "student", "ours_k7", "model.freeze=7")
    with pytest.raises(ConfigError, match=r"erm/best.pt was trained on model.cache_trunk=True with model.freeze=6, "
                                          r"this run on images \(model.cache_trunk=False\); the ERM run and its "
                                          r"teachers must be cached the same way"):
        _run(env, "teacher", "teacher_uncached", "method.subset=0", "model.cache_trunk=False")


def test_oltr_two_stages_on_the_cached_trunk(env: Path) -> None:
    _run(env, "oltr1", "oltr1")
    result = _run(env, "oltr2", "oltr2")
    state = torch.load(env / "oltr2" / "best.pt", weights_only=True)
    assert state["criterion"]["centroids"].abs().sum() > 0  # the class means of stage 1's features on view 0
    assert result["name"] == "oltr" and json.loads((env / "oltr2" / "result.json").read_text())["test"]
