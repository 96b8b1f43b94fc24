"""recipes/models/backbones.py: the small CNN, torchvision backbones, weights files, the offline message, heads."""
from __future__ import annotations

import pytest
import torch
import torchvision

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
