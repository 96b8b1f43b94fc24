"""recipes/models/backbones.py: the small CNN, torchvision and timm backbones, weights files, the offline messages,
heads."""
from __future__ import annotations

import huggingface_hub
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn

from recipes.models.backbones import ModelError, build_model
from rskd_loss.baselines.ldam import NormedLinear
from rskd_loss.baselines.oltr import OLTRHead, OLTROutput


def test_small_cnn_heads() -> None:
    x = torch.randn(2, 3, 32, 32)
    assert build_model({"name": "small_cnn", "width": 4}, 7)(x).shape == (2, 7)
    normed = build_model({"name": "small_cnn", "width": 4, "head": "normed"}, 7)
    assert isinstance(normed.head, NormedLinear) and normed(x).shape == (2, 7)
    oltr = build_model({"name": "small_cnn", "width": 4}, 7, oltr_stage=2, image_size=32)
    assert isinstance(oltr.head, OLTRHead) and oltr.head.use_meta
    out = oltr(x, centroids=torch.randn(7, oltr.head.feat_dim))
    assert isinstance(out, OLTROutput) and out.logits.shape == (2, 7)


def test_weights_file_is_loaded(tmp_path) -> None:
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = build_model({"name": "resnet18", "pretrained": True, "weights_path": str(tmp_path / "r18.pth")}, 3)
    torch.testing.assert_close(model.backbone[0].weight, ref.conv1.weight, rtol=0, atol=0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_offline_pretrained_weights_say_what_to_do(monkeypatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline, raising=False)
    with pytest.raises(ModelError, match=r"not available offline .*model.weights_path=.*model.pretrained=False"):
        build_model({"name": "resnet18", "pretrained": True, "weights_path": None}, 3)


def test_model_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match=r"unknown model.name 'resnet5'; valid: small_cnn or a torchvision model"):
        build_model({"name": "resnet5"}, 3)
    with pytest.raises(ModelError, match=r"model.weights_path '.*nope.pth' does not exist"):
        build_model({"name": "resnet18", "weights_path": str(tmp_path / "nope.pth")}, 3)
    with pytest.raises(ModelError, match=r"OLTR needs a backbone with a feature map"):
        build_model({"name": "efficientnet_b0", "pretrained": False}, 3, oltr_stage=1)


# ---------------------------------------------------------------- timm/<name> (recipes/models/timm_backbones.py)

@pytest.mark.parametrize("head, oltr_stage", [("linear", None), ("normed", None), ("linear", 1), ("linear", 2)])
def test_timm_resnet18_with_each_head(head: str, oltr_stage: int | None) -> None:
    torch.manual_seed(0)
    model = build_model({"name": "timm/resnet18", "pretrained": False, "head": head}, 5, oltr_stage=oltr_stage,
                        image_size=64)
    x = torch.randn(2, 3, 64, 64)
    assert isinstance(model.backbone.net, timm.models.ResNet) and model.backbone.net.num_classes == 0
    if oltr_stage is None:   # timm's own pooled features, (B, 512)
        assert model.backbone(x).shape == (2, 512) and not model.pool
        assert isinstance(model.head, NormedLinear if head == "normed" else nn.Linear)
        assert model.head(torch.randn(2, 512)).shape == (2, 5)   # the head reads 512 features
        logits = model(x)
    else:                    # the (B, 512, 2, 2) map at 64 px, which OLTR's attention is sized for
        assert model.backbone(x).shape == (2, 512, 2, 2) and model.feature_size == 2
        assert isinstance(model.head, OLTRHead) and model.head.in_channels == 512
        logits = model(x, centroids=torch.randn(5, model.head.feat_dim) if oltr_stage == 2 else None).logits
    assert logits.shape == (2, 5)
    logits.square().mean().backward()
    assert model.backbone.net.conv1.weight.grad.abs().sum() > 0


def test_timm_input_normalisation_and_token_models() -> None:
    x = torch.randn(2, 3, 64, 64)
    resnet = build_model({"name": "timm/resnet18", "pretrained": False}, 3, image_size=64).backbone
    assert not resnet.adapt_input   # its weights expect ImageNet's mean/std, as the recipes feed
    vit = build_model({"name": "timm/test_vit", "pretrained": False}, 3, image_size=64)   # weights: 0.5/0.5
    assert vit.backbone.adapt_input
    torch.testing.assert_close(vit.backbone.in_scale.flatten(), torch.tensor([0.229, 0.224, 0.225]) / 0.5)
    assert vit(x).shape == (2, 3)
    with pytest.raises(ModelError, match=r"OLTR needs a backbone with a \(B, F, h, w\) feature map; timm's test_vit"):
        build_model({"name": "timm/test_vit", "pretrained": False}, 3, oltr_stage=1, image_size=64)


def test_timm_unknown_name() -> None:
    with pytest.raises(ModelError, match=r"model.name='timm/resnet5': 'resnet5' is not a timm model; close: "
                                         r"resnet.*timm.list_models\('resn\*'\)"):
        build_model({"name": "timm/resnet5", "pretrained": False}, 3)


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """Hugging Face's and torch hub's caches in an empty folder: nothing cached, as on a fresh machine."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    return tmp_path


def test_timm_pretrained_without_a_local_file_is_one_line(empty_caches) -> None:
    with pytest.raises(ModelError) as err:
        build_model({"name": "timm/resnet18", "pretrained": True, "weights_path": None}, 3, image_size=64)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model.name='timm/resnet18' with model.pretrained=True: no local weights")
    for part in (f"the Hugging Face cache {empty_caches / 'hf'} (model.safetensors or pytorch_model.bin of "
                 f"timm/resnet18.a1_in1k)",
                 f"the torch hub cache ({empty_caches / 'torch_hub' / 'checkpoints' / 'resnet18_a1_0-d63eafa0.pth'})",
                 "model.weights_path='PATH'", "model.pretrained=False"):
        assert part in message, part


def _fresh_resnet18() -> nn.Module:
    torch.manual_seed(1)
    return timm.create_model("resnet18", pretrained=False)   # with its 1000-class classifier, as published


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_path(tmp_path, suffix: str) -> None:
    ref, path = _fresh_resnet18(), tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": ref.state_dict()}, path)   # a training checkpoint: timm unwraps it
    else:
        safetensors.torch.save_file(ref.state_dict(), path)
    model = build_model({"name": "timm/resnet18", "pretrained": True, "weights_path": str(path)}, 3, image_size=64)
    torch.testing.assert_close(model.backbone.net.layer4[1].conv2.weight, ref.layer4[1].conv2.weight, rtol=0, atol=0)
    assert model.backbone.net.num_classes == 0 and model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    with pytest.raises(ModelError, match=r"model.weights_path '.*resnet18.* is not a state dict of timm's resnet34: "):
        build_model({"name": "timm/resnet34", "weights_path": str(path)}, 3, image_size=64)
    with pytest.raises(ModelError, match=r"model.weights_path '.*nope.pth' does not exist"):
        build_model({"name": "timm/resnet18", "weights_path": str(tmp_path / "nope.pth")}, 3)


def test_timm_pretrained_from_the_hugging_face_cache(empty_caches) -> None:
    ref = _fresh_resnet18()
    snapshot = empty_caches / "hf" / "models--timm--resnet18.a1_in1k" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abc")
    safetensors.torch.save_file(ref.state_dict(), snapshot / "model.safetensors")
    model = build_model({"name": "timm/resnet18", "pretrained": True, "weights_path": None}, 3, image_size=64)
    torch.testing.assert_close(model.backbone.net.conv1.weight, ref.conv1.weight, rtol=0, atol=0)


def test_timm_model_of_a_fixed_input_size() -> None:
    with pytest.raises(ModelError, match=r"timm model 'vit_tiny_patch16_224' does not take 64-px images \(.*\); "
                                         r"set data.image_size to 224"):
        build_model({"name": "timm/vit_tiny_patch16_224", "pretrained": False}, 3, image_size=64)
