"""The cached frozen trunk (``model.cache_trunk``): the cached model's logits equal the uncached model's, the
cache file is reused and never half written, the training views are keyed, and a cached run trains and
resumes exactly. EfficientNet-Lite0 with random weights (no weights package needed), 32 px, CPU."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.config import ConfigError, load_config
from recipes.data.augment import BatchAugment, keyed_uniforms
from recipes.data.folds import make_dataset, prepare_data
from recipes.engine import trainer as trainer_module
from recipes.engine import trunk_cache
from recipes.engine.trunk_cache import (
    TrunkCacheError,
    TrunkViews,
    check_same_trunk,
    frozen_trunk,
    open_trunk_cache,
    trunk_cache_file,
    trunk_views,
)
from recipes.models.backbones import build_model
from recipes.train import main

SIZE = 32
PROFILE = (
    "data = dict(root=%r, synthetic=dict(seed=0, num_images=120, image_size=32, num_classes=8),\n"
    "            scheme='holdout', image_size=32, batch_size=16, eval_batch_size=64, num_workers=0,\n"
    "            trunk_views=2)\n"
    "model = dict(name='efficientnet_lite0', pretrained=False, freeze=8, cache_trunk=True)\n"
    "schedule = dict(epochs=2, lr=1e-3)\n"
    "run = dict(device='cpu', deterministic=True, max_steps_per_epoch=4, checkpoint_every=2)\n"
    "method = dict(name='erm', stage='baseline', criterion=dict(name='bce'))\n"
)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("trunk")
    (tmp / "cached.py").write_text(PROFILE % str(tmp / "data"))
    return tmp


def _cfg(env: Path, *sets: str) -> dict:
    return load_config(None, str(env / "cached.py"), sets)


@pytest.fixture(scope="module")
def data(env: Path) -> dict:
    return prepare_data(_cfg(env), 0, 1)


@pytest.fixture(scope="module")
def weights(env: Path) -> str:
    """A random Lite0 state dict with non-trivial BatchNorm statistics, as model.weights_path."""
    from recipes.models.timm_backbones import efficientnet_lite0

    torch.manual_seed(3)
    model = efficientnet_lite0(pretrained=False)
    state = model.net.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0.0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    torch.save(state, env / "lite0_random.pth")
    return str(env / "lite0_random.pth")


@pytest.mark.parametrize("k", [5, 8])
def test_cached_logits_equal_the_uncached_model_on_view_0(env, data, weights, k):
    cfg = _cfg(env, f"model.freeze={k}", "data.trunk_views=1", f"model.weights_path={weights!r}")
    views = trunk_views(cfg, data, 0, 1, torch.device("cpu"))
    torch.manual_seed(1)
    plain = build_model({**cfg["model"], "cache_trunk": False}, 8, image_size=SIZE).eval()
    cached = build_model(cfg["model"], 8, image_size=SIZE).eval()
    with torch.no_grad():
        plain.head.weight.mul_(20.0)  # logits of a few units, as a trained head gives (a new one: ~0.1)
    cached.head.load_state_dict(plain.head.state_dict())
    stages = {key.split(".")[2] for key in cached.state_dict() if key.startswith("backbone.")}
    assert stages == {f"stage{i}" for i in range(k, 9)}  # stages k .. 8 only
    uncached_cfg = {**cfg, "model": {**cfg["model"], "cache_trunk": False}}
    images, _, rows = zip(*make_dataset(uncached_cfg, data, "test"))
    x = BatchAugment(SIZE)(torch.stack(images), train=False)  # what evaluation feeds the uncached model
    with torch.no_grad():
        want = plain(x)
        got = cached(views(torch.as_tensor(rows), train=False))
        # exactly the model on the float16-rounded output of the frozen stages (view 0 = the evaluation input)
        assert torch.allclose(got, cached(frozen_trunk(cfg["model"])(x).half().float()), rtol=0, atol=1e-5)
    # float16 rounds each feature by at most 2^-11 relative; through the trainable stages and the head that
    # moves a logit by ~1e-4 of the logits' scale (measured: 1.5e-4 at k=5, 2.7e-4 at k=8); the bound, 1 %,
    # leaves room, while a wrong view 0 (augmented, or other stages) moves logits by their own scale
    scale = want.abs().max()
    assert scale > 1.0 and (got - want).abs().max() <= 1e-2 * scale, float((got - want).abs().max() / scale)
    assert not torch.allclose(got, want, rtol=0, atol=1e-7)  # it is a float16 cache, not a copy of the model


def test_the_cache_is_reused_and_named_after_what_it_depends_on(env, data, capsys):
    cfg = _cfg(env, "model.freeze=8", "data.trunk_views=2")
    trunk = frozen_trunk(cfg["model"])
    path = trunk_cache_file(cfg, data, trunk)
    trunk_views(cfg, data, 0, 1, torch.device("cpu"))
    assert path.is_file() and f"built trunk cache {path}: 120 rows x 2 views" in capsys.readouterr().out
    written = path.stat().st_mtime_ns
    views = trunk_views(cfg, data, 0, 1, torch.device("cpu"))
    assert "built" not in capsys.readouterr().out and path.stat().st_mtime_ns == written
    assert views.features.shape == (120, 2, 320, 1, 1) and views.features.dtype == np.float16
    seven = _cfg(env, "model.freeze=7")
    others = {trunk_cache_file(seven, data, frozen_trunk(seven["model"]))} | {
        trunk_cache_file(_cfg(env, "model.freeze=8", *sets), data, trunk)
        for sets in (["data.trunk_views=3"], ["data.split_seed=1"], ["data.image_size=64"])}
    assert len(others) == 4 and path not in others


def test_an_interrupted_build_leaves_no_file_and_a_wrong_header_is_refused(env, data, monkeypatch):
    cfg = _cfg(env, "model.freeze=8", "data.trunk_views=4")
    path = trunk_cache_file(cfg, data, frozen_trunk(cfg["model"]))
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # the second batch of images
            raise KeyboardInterrupt
        return keyed_uniforms(*args, **kwargs)

    monkeypatch.setattr(trunk_cache, "keyed_uniforms", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trunk_views(cfg, data, 0, 1, torch.device("cpu"))
    assert not path.exists() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    np.save(path.parent / "wrong.npy", np.zeros((120, 3, 320, 1, 1), dtype=np.float16))
    with pytest.raises(TrunkCacheError, match=r"wrong.npy holds float16 \(120, 3, 320, 1, 1\), expected float16 "
                                              r"\(120, 4, 320, 1, 1\).*delete it"):
        open_trunk_cache(path.parent / "wrong.npy", (120, 4, 320, 1, 1))


def test_a_run_waits_for_another_building_the_same_cache(env, data, monkeypatch):
    cfg = _cfg(env, "model.freeze=8", "data.trunk_views=1")
    cpu, trunk = torch.device("cpu"), frozen_trunk(cfg["model"])
    path, build, builds, done = trunk_cache_file(cfg, data, trunk), trunk_cache.build_trunk_cache, [], threading.Event()
    monkeypatch.setattr(trunk_cache, "build_trunk_cache", lambda *args: builds.append(args) or build(*args))

    def second_run() -> None:
        trunk_views(cfg, data, 0, 1, cpu)
        done.set()

    with trunk_cache._build_lock(path):  # the first run, building
        waiting = threading.Thread(target=second_run)
        waiting.start()
        assert not done.wait(1.0)
        build(cfg, data, trunk, path, cpu)
    waiting.join(60)
    assert done.is_set() and builds == []  # the second run read the first one's file


def test_the_training_view_is_keyed_by_seed_epoch_and_position():
    features = np.arange(10 * 5, dtype=np.float16).reshape(10, 5, 1, 1, 1)  # row r, view v: 5 r + v
    views = TrunkViews(features)
    positions = np.arange(64)
    chosen = [views.choose_views(keyed_uniforms(0, epoch, positions, 1)) for epoch in (0, 0, 1)]
    assert np.array_equal(chosen[0], chosen[1]) and not np.array_equal(chosen[0], chosen[2])
    assert set(np.concatenate(chosen).tolist()) == {1, 2, 3, 4}  # augmented views only, all of them used
    rows = torch.tensor([3, 7, 3])
    rand = keyed_uniforms(0, 1, [0, 1, 2], 1)
    want = 5 * rows.numpy() + views.choose_views(rand)
    assert views(rows, train=True, rand=rand).flatten().tolist() == want.tolist()
    assert views(rows, train=False).flatten().tolist() == (5 * rows).tolist()  # evaluation: view 0
    assert TrunkViews(features[:, :1]).choose_views(rand).tolist() == [0, 0, 0]  # V = 1: no augmentation


def _run(env: Path, out: str, *extra: str) -> dict:
    return main(["--config", str(env / "cached.py"), "--profile", str(env / "cached.py"),
                 "--out-dir", str(env / out), *extra])


def test_a_cached_run_trains_and_resumes_exactly(env, monkeypatch):
    result = _run(env, "full")
    assert json.loads((env / "full" / "result.json").read_text())["test"] == result["test"]
    steps = []

    def crash(name: str) -> None:
        steps.append(name)
        if len(steps) == 7:  # epoch 1, after 2 of its 4 steps (checkpointed every 2 steps)
            raise RuntimeError("killed")

    monkeypatch.setattr(trainer_module, "fault_point", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _run(env, "killed")
    monkeypatch.undo()
    assert torch.load(env / "killed" / "last.pt", weights_only=True)["step"] == 2
    _run(env, "killed", "--resume")
    for name in ("last.pt", "best.pt"):
        a, b = (torch.load(env / run / name, weights_only=True) for run in ("full", "killed"))
        assert list(a["model"]) == list(b["model"]) and "backbone.stages.stage8.0.weight" in a["model"]
        assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"]), name
    lines = [[{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in
              (env / run / "metrics.jsonl").read_text().splitlines()] for run in ("full", "killed")]
    assert lines[0] == lines[1] and len(lines[0]) == 2


@pytest.mark.parametrize("sets, message", [
    (["model.name='resnet50'", "model.freeze=0"], "'model.name' must be 'efficientnet_lite0' with model.cache_trunk"),
    (["model.freeze=0"], r"'model.freeze' must be an int in \[1, 8\] with model.cache_trunk=True"),
    (["model.freeze=9"], r"'model.freeze' must be an int in \[1, 8\]"),
    (["model.cache_trunk='yes'"], "'model.cache_trunk' must be True or False, got 'yes'"),
    (["data.trunk_views=0"], "'data.trunk_views' must be an int >= 1, got 0"),
])
def test_refused_configurations_are_one_line(env, sets, message):
    with pytest.raises(ConfigError, match=message) as caught:
        _cfg(env, *sets)
    assert "\n" not in str(caught.value)


def test_a_checkpoint_of_another_trunk_is_refused():
    cached = {"name": "efficientnet_lite0", "freeze": 5, "cache_trunk": True}
    check_same_trunk("erm/best.pt", {"config": {"model": cached}}, dict(cached), "the ERM run and its teachers")
    for theirs, said in (({**cached, "freeze": 6}, "model.freeze=6"), ({**cached, "cache_trunk": False}, "images")):
        with pytest.raises(ConfigError, match=rf"erm/best.pt was trained on .*{said}.*, this run on model.cache_trunk="
                                              rf"True with model.freeze=5; the ERM run and its teachers must be cached"):
            check_same_trunk("erm/best.pt", {"config": {"model": theirs}}, cached, "the ERM run and its teachers")
