r"""OLTR (Liu et al., "Large-Scale Long-Tailed Recognition in an Open World", CVPR 2019), multi-label.

The "OLTR [9]" row of Table 3 (Ju et al., MICCAI 2021). Read for every formula and default (no code
copied): ``zhmiao/OpenLongTailRecognition-OLTR`` --

- ``layers/ModulatedAttLayer.py``: modulated attention = embedded-Gaussian non-local block
  (``g``/``theta``/``phi`` 1x1 convs to ``in_channels // 2`` channels, softmax over positions, a
  ``conv_mask`` 1x1 conv back, no bias) times a spatial attention (``fc_spatial``: a linear layer on
  the flattened map, softmax over the H*W positions), added to the input: ``att * mask + x``.
- ``models/ResNetFeature.py``: the attention sits on the last feature map, then ``AvgPool2d(7)``, then
  ``fc_add`` (to ``feat_dim`` = 512) and a ReLU: that vector is the *direct feature*.
- ``models/DotProductClassifier.py``: stage-1 classifier, one linear layer.
- ``models/MetaEmbeddingClassifier.py``: stage-2 dynamic meta-embedding. Reachability
  ``10 / min_k ||v - c_k||``; hallucinator = linear ``feat_dim -> C`` with a softmax over the memory
  slots; memory feature = that softmax times the centroids; concept selector = ``tanh`` of a linear
  ``feat_dim -> feat_dim``; ``v_meta = reach * (v + selector * memory)``; cosine classifier.
- ``models/CosNormClassifier.py``: ``scale * (|x| / (1 + |x|)) * x/|x| . w/|w|``, ``scale=16``,
  weights uniform in ``+-1/sqrt(feat_dim)``.
- ``loss/DiscCentroidsLoss.py``: attract ``sum_i ||v_i - c_{y_i}||^2 / 2 / B``; repel
  ``clamp(margin - sum_{i, k != y_i} ||v_i - c_k||^2 / (B * C), 0)`` with ``margin = 10``; loss =
  attract + ``0.01`` * repel; centroids an ``nn.Parameter`` of the loss.
- ``run_networks.py``: the classifier receives ``centroids.data`` (no gradient from the
  classification loss into the centroids); the feature loss is applied to the direct feature; stage 2
  first sets the centroids to the per-class mean feature of the training set (``centroids_cal`` on the
  un-augmented ``train_plain`` loader); the centroids have their own SGD optimizer.
- ``config/ImageNet_LT/stage_1.py``: stage 1 = no attention, dot-product classifier, softmax loss only.
  ``config/ImageNet_LT/stage_2_meta_embedding.py``: attention on, meta-embedding classifier, feature
  loss weight ``0.01``, class-aware sampler with ``num_samples_cls = 4``, centroid optimizer
  ``lr 0.01, momentum 0.9, weight_decay 5e-4``.
- ``utils.py`` ``init_weights(..., classifier=True)``: the stage-2 hallucinator is initialised from the
  stage-1 classifier's ``fc`` weights.

Single-label -> multi-label adaptations (the official code is single-label softmax):

1. Classification loss: per-class binary cross-entropy with logits instead of softmax cross-entropy.
2. Attract term: each feature is pulled to the centroid of EVERY positive class of its image,
   :math:`\tfrac12\sum_{k \in P_i}\|v_i - c_k\|^2` (a sum, so the optimal :math:`c_k` is still the mean
   feature of class k's positives, the value :meth:`OLTRLoss.init_centroids` starts from).
3. Repel term: pushes from every NEGATIVE class of the image; the denominator stays :math:`B \cdot C`
   (all pairs, positives counted as zero), as in the official code.
4. An image with no positive label has no attract term and is repelled from all C centroids.
5. Centroid initialisation: centroid k = mean stage-1 feature of the images POSITIVE for k (an image
   with two positives counts in both means); a class with no positive keeps a zero centroid, with a
   warning (the official code would divide by zero).
6. Reduction: per element (i, k) the loss is :math:`\mathrm{BCE}_{ik} + \frac{w}{C} f_i` with
   :math:`f_i` the sample's feature loss, i.e. the per-sample feature loss is spread evenly over the C
   classes. Then ``'mean'`` == ``'none'.mean()`` and ``'sum'`` == ``'none'.sum()``, and per image
   (summing over classes) the ratio "classification : feature loss" is the official
   ``1 : w`` with ``w = 0.01``. Under ``'mean'`` both parts are therefore divided by C.
7. The hallucinator's softmax is kept: it weighs memory slots (an attention over centroids), it is
   not a class posterior, so it needs no multi-label change.

Other deviations, each deliberate:

- Feature-map size is a constructor parameter (``feature_size``) instead of the hard-coded 7x7;
  pooling is a mean over the whole map (equal to ``AvgPool2d(7)`` on a 7x7 map).
- ``conv_mask`` starts at zero (``ModulatedAttLayer.init_weights``), so the stage-2 head starts as
  the stage-1 function. In the official ``ResNetFeature.py`` the ResNet's own init loop runs after it
  and re-draws every ``Conv2d`` of the attention (``conv_mask`` included) from
  :math:`\mathcal N(0, 2/n)`; we keep the layer's stated intent.
- Centroid gradient: the official attract term has a hand-written backward that divides the centroid
  gradient by ``1 + n_k`` (the center-loss update rule) and ignores the upstream gradient, i.e. the
  0.01 loss weight; the maintainers say this had "no good reason" and autograd would do
  (OpenLongTailRecognition-OLTR issue #10). Here the gradient is plain autograd (exact).
- Numerical guards: norms in the cosine classifier and the distance in the reachability are clamped
  at ``1e-12`` (the official code divides by them unguarded); values are unchanged above it.
- Distances are computed as :math:`\sum_d (v_d - c_d)^2` (never negative), not the expanded
  :math:`|v|^2 + |c|^2 - 2 v \cdot c` of the official code.

Two-stage procedure (the library owns no training loop; this is the flow a recipe follows):

1. Stage 1: ``head = OLTRHead.stage1(C_in, C)`` on the backbone's last feature map,
   ``criterion = OLTRLoss(C, 512, stage=1)`` (plain BCE), ordinary sampling.
2. Stage 2: ``head2 = head.to_stage2()`` (copies the projection, hallucinator <- stage-1 classifier,
   adds the attention and the meta-embedding); ``criterion = OLTRLoss(C, 512, stage=2)``; compute the
   direct features of the whole training set with the stage-1 model in ``eval()`` mode and no
   augmentation, then ``criterion.init_centroids(features, targets)``; train with
   ``ClassAwareSampler(targets, num_samples_cls=OLTR_NUM_SAMPLES_CLS)`` and, per batch,
   ``out = head2(fmap, centroids=criterion.centroids)`` (the head detaches them) and
   ``loss = criterion(out.logits, targets, features=out.features)``. Put ``criterion.parameters()``
   (the centroids) in an optimizer too (official: SGD lr 0.01, momentum 0.9, weight decay 5e-4).

Example:
    >>> import torch
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <...>
    >>> fmap, y = torch.randn(4, 8, 3, 3), torch.tensor([[1, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 1]])
    >>> head1 = OLTRHead.stage1(8, 3, feat_dim=6)
    >>> OLTRLoss(3, 6, stage=1)(head1(fmap).logits, y).shape
    torch.Size([])
    >>> head2 = head1.to_stage2(feature_size=3)
    >>> crit = OLTRLoss(3, 6, stage=2)
    >>> with torch.no_grad():
    ...     _ = crit.init_centroids(head1(fmap).features, y)
    >>> out = head2(fmap, centroids=crit.centroids)
    >>> crit(out.logits, y, features=out.features).backward()
"""
from __future__ import annotations

import math
import warnings
from types import MappingProxyType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from rskd_loss.validation import (
    check_int,
    check_logits_targets,
    check_positive,
    check_reduction,
    is_compiling,
    reduce_loss,
    value_checks_enabled,
)

from .bce import bce_loss

__all__ = [
    "OLTR_FEAT_DIM",
    "OLTR_FEATURE_LOSS_WEIGHT",
    "OLTR_MARGIN",
    "OLTR_REPEL_WEIGHT",
    "OLTR_REACHABILITY_SCALE",
    "OLTR_COSINE_SCALE",
    "OLTR_CENTROID_SGD",
    "OLTROutput",
    "ModulatedAttention",
    "OLTRHead",
    "cosine_norm_logits",
    "class_mean_features",
    "disc_centroids_loss",
    "oltr_loss",
    "OLTRLoss",
]

#: ``training_opt['feature_dim']`` in ``config/ImageNet_LT/stage_*.py`` (and ``fc_add``'s 512 outputs).
OLTR_FEAT_DIM = 512
#: ``criterions['FeatureLoss']['weight']`` in ``config/ImageNet_LT/stage_2_meta_embedding.py``.
OLTR_FEATURE_LOSS_WEIGHT = 0.01
#: ``margin = 10.0`` in ``loss/DiscCentroidsLoss.py``.
OLTR_MARGIN = 10.0
#: ``loss = loss_attract + 0.01 * loss_repel`` in ``loss/DiscCentroidsLoss.py``.
OLTR_REPEL_WEIGHT = 0.01
#: ``scale = 10.0`` (reachability) in ``models/MetaEmbeddingClassifier.py``.
OLTR_REACHABILITY_SCALE = 10.0
#: ``scale=16`` in ``models/CosNormClassifier.py``.
OLTR_COSINE_SCALE = 16.0
#: The centroids' own optimizer: ``criterions['FeatureLoss']['optim_params']`` in
#: ``config/ImageNet_LT/stage_2_meta_embedding.py`` (SGD), used by ``run_networks.py``.
OLTR_CENTROID_SGD = MappingProxyType({"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4})

_EPS = 1e-12


class OLTROutput(NamedTuple):
    """What :class:`OLTRHead` returns: ``logits`` (B, C) and the direct ``features`` (B, feat_dim)
    on which :class:`OLTRLoss` puts the centroid loss."""

    logits: torch.Tensor
    features: torch.Tensor


def _as_size(size: object, name: str = "feature_size") -> tuple[int, int]:
    if isinstance(size, (tuple, list)) and len(size) == 2:
        return check_int(size[0], f"{name}[0]", minimum=1), check_int(size[1], f"{name}[1]", minimum=1)
    if isinstance(size, (tuple, list)):
        raise ValueError(f"{name} must be an int or an (H, W) pair, got {len(size)} entries: {size!r}")
    side = check_int(size, name, minimum=1)
    return side, side


def _check_stage(stage: object) -> int:
    if isinstance(stage, bool) or stage not in (1, 2):
        raise ValueError(f"stage must be 1 (plain BCE) or 2 (BCE + centroid loss), got {stage!r}")
    return int(stage)  # type: ignore[arg-type]


def _check_matrix(x: object, name: str, rows: int | None, cols: int, cols_name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    row_text = "N" if rows is None else str(rows)
    if x.dim() != 2 or x.shape[1] != cols or (rows is not None and x.shape[0] != rows):
        raise ValueError(
            f"{name} must have shape ({row_text}, {cols_name}) = ({row_text}, {cols}), got {tuple(x.shape)}"
        )
    if value_checks_enabled() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite, got a NaN or Inf")
    return x


def _check_binary_targets(targets: object, shape: tuple[int, int], name: str = "targets") -> torch.Tensor:
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(targets).__name__}")
    if tuple(targets.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(targets.shape)}")
    if value_checks_enabled() and targets.numel() and bool(((targets != 0) & (targets != 1)).any()):
        raise ValueError(f"{name} must be multi-hot with values in {{0, 1}}")
    return targets


# --------------------------------------------------------------------------------------------------
# Head
# --------------------------------------------------------------------------------------------------


class ModulatedAttention(nn.Module):
    r"""OLTR's modulated attention on an (B, C, H, W) map, for any fixed H x W.

    .. math::

        A = \operatorname{softmax}_{q}\big(\theta(x)_p^\top \phi(x)_q\big), \quad
        m = W_{mask} \big(\textstyle\sum_q A_{pq}\, g(x)_q\big), \quad
        s = \operatorname{softmax}_{p}\big(W_{sp} \operatorname{vec}(x)\big), \quad
        \text{out} = s \odot m + x

    ``g``, ``theta``, ``phi``: 1x1 convs to ``in_channels // reduction`` channels (Kaiming-normal
    weights, zero bias); ``W_mask``: 1x1 conv back to ``in_channels``, no bias, zero-initialised (so the
    layer starts as the identity); ``W_sp``: linear ``C*H*W -> H*W`` (default init).
    Source: ``layers/ModulatedAttLayer.py`` (reduction 2, embedded Gaussian; 7x7 hard-coded there).

    Args:
        in_channels: C of the map.
        feature_size: (H, W) or an int for a square map. Default 7 (the official size).
        reduction: channel reduction of the non-local block. Default 2 (official).

    Shape:
        - input: (B, in_channels, H, W); output: same.

    Example:
        >>> att = ModulatedAttention(4, feature_size=(2, 3))
        >>> x = torch.randn(2, 4, 2, 3)
        >>> bool(torch.equal(att(x), x))  # zero conv_mask: identity at initialisation
        True
    """

    def __init__(self, in_channels: int, feature_size: int | tuple[int, int] = 7, reduction: int = 2) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.reduction = check_int(reduction, "reduction", minimum=1)
        self.inter_channels = in_channels // reduction
        if self.inter_channels < 1:
            raise ValueError(f"in_channels // reduction must be >= 1, got {in_channels} // {reduction} = 0")
        self.feature_size = _as_size(feature_size)
        h, w = self.feature_size
        self.g = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.theta = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.phi = nn.Conv2d(in_channels, self.inter_channels, kernel_size=1)
        self.conv_mask = nn.Conv2d(self.inter_channels, in_channels, kernel_size=1, bias=False)
        self.fc_spatial = nn.Linear(h * w * in_channels, h * w)
        for conv in (self.g, self.theta, self.phi):
            nn.init.kaiming_normal_(conv.weight)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.conv_mask.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if (h, w) != self.feature_size or c != self.in_channels:
            raise ValueError(
                f"ModulatedAttention expects (B, {self.in_channels}, {self.feature_size[0]}, "
                f"{self.feature_size[1]}), got {tuple(x.shape)}"
            )
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, HW, C')
        phi = self.phi(x).flatten(2)  # (B, C', HW)
        affinity = torch.softmax(torch.bmm(theta, phi), dim=-1)  # (B, HW, HW)
        context = torch.bmm(affinity, g).transpose(1, 2).reshape(b, self.inter_channels, h, w)
        mask = self.conv_mask(context)  # (B, C, H, W)
        spatial = torch.softmax(self.fc_spatial(x.flatten(1)), dim=1).view(b, 1, h, w)
        return spatial * mask + x


def cosine_norm_logits(
    x: torch.Tensor, weight: torch.Tensor, scale: float = OLTR_COSINE_SCALE
) -> torch.Tensor:
    r"""OLTR's cosine-norm classifier (``models/CosNormClassifier.py``).

    .. math::

        z_{ik} = s \, \frac{\|x_i\|}{1 + \|x_i\|} \, \frac{x_i^\top w_k}{\|x_i\|\,\|w_k\|}

    Norms are clamped at 1e-12. Default ``scale`` 16 (official).

    Shape:
        - x: (B, D); weight: (C, D); output: (B, C), every entry in ``[-scale, scale]``.

    Example:
        >>> z = cosine_norm_logits(torch.tensor([[3.0, 4.0]]), torch.tensor([[1.0, 0.0]]), scale=16.0)
        >>> round(z.item(), 4)  # 16 * 5/6 * 3/5
        8.0
    """
    norm = x.norm(dim=1, keepdim=True)
    squashed = (norm / (1.0 + norm)) * (x / norm.clamp_min(_EPS))
    unit_w = weight / weight.norm(dim=1, keepdim=True).clamp_min(_EPS)
    return scale * squashed @ unit_w.t()


class OLTRHead(nn.Module):
    r"""OLTR head on a backbone's last feature map: modulated attention, pooling, projection, classifier.

    .. math::

        v = \operatorname{ReLU}\big(W_{add}\, \operatorname{mean}_{hw}\, \mathrm{att}(x) + b_{add}\big)

    Stage 1 (``use_meta=False``): ``logits = fc(v)`` (dot-product classifier). Stage 2
    (``use_meta=True``), with centroids :math:`c_k` (detached here, as the official code passes
    ``centroids.data``):

    .. math::

        \gamma = \frac{\rho}{\min_k \|v - c_k\|},\quad
        o = \operatorname{softmax}(W_{hal} v),\quad
        e = \tanh(W_{sel} v),\quad
        v^{meta} = \gamma\,\big(v + e \odot \textstyle\sum_k o_k c_k\big),\quad
        z = \text{cosine\_norm}(v^{meta})

    Args:
        in_channels: channels of the feature map.
        num_classes: C.
        feat_dim: D of the direct feature. Default 512 (``config/ImageNet_LT/*.py`` ``feature_dim``).
        feature_size: (H, W) of the map, or an int; ``None`` means 7 (the official ResNet map at 224
            px). Only the attention needs it.
        use_attention: modulated attention before pooling. Default ``True`` (stage 2); the official
            stage 1 has none (``use_modulatedatt: False``, ``config/ImageNet_LT/stage_1.py``): use
            :meth:`stage1`.
        use_meta: meta-embedding + cosine classifier (stage 2) instead of the linear classifier.
            Default ``False``.
        scale: cosine classifier scale. Default 16 (``models/CosNormClassifier.py``).
        reachability_scale: :math:`\rho`. Default 10 (``models/MetaEmbeddingClassifier.py``).
        attention_reduction: non-local channel reduction. Default 2 (``layers/ModulatedAttLayer.py``).

    Shape:
        - feature_map: (B, in_channels, H, W) (H, W = ``feature_size`` when ``use_attention``).
        - centroids: (num_classes, feat_dim), required iff ``use_meta``.
        - output: :class:`OLTROutput` of logits (B, num_classes) and features (B, feat_dim).

    Example:
        >>> head = OLTRHead(8, 3, feat_dim=6, feature_size=(2, 4), use_meta=True)
        >>> out = head(torch.randn(5, 8, 2, 4), centroids=torch.randn(3, 6))
        >>> tuple(out.logits.shape), tuple(out.features.shape)
        ((5, 3), (5, 6))
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        feat_dim: int = OLTR_FEAT_DIM,
        feature_size: int | tuple[int, int] | None = None,
        use_attention: bool = True,
        use_meta: bool = False,
        scale: float = OLTR_COSINE_SCALE,
        reachability_scale: float = OLTR_REACHABILITY_SCALE,
        attention_reduction: int = 2,
    ) -> None:
        super().__init__()
        self.in_channels = check_int(in_channels, "in_channels", minimum=1)
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.feat_dim = check_int(feat_dim, "feat_dim", minimum=1)
        self.feature_size = _as_size(7 if feature_size is None else feature_size)
        for flag, name in ((use_attention, "use_attention"), (use_meta, "use_meta")):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        self.use_attention = use_attention
        self.use_meta = use_meta
        self.scale = check_positive(scale, "scale")
        self.reachability_scale = check_positive(reachability_scale, "reachability_scale")
        self.attention_reduction = check_int(attention_reduction, "attention_reduction", minimum=1)

        self.attention = (
            ModulatedAttention(in_channels, self.feature_size, attention_reduction) if use_attention else None
        )
        self.fc_add = nn.Linear(in_channels, feat_dim)
        if use_meta:
            self.fc = None
            self.hallucinator = nn.Linear(feat_dim, num_classes)
            self.selector = nn.Linear(feat_dim, feat_dim)
            bound = 1.0 / math.sqrt(feat_dim)
            self.cosine_weight = nn.Parameter(torch.empty(num_classes, feat_dim).uniform_(-bound, bound))
        else:
            self.fc = nn.Linear(feat_dim, num_classes)
            self.hallucinator = self.selector = None
            self.cosine_weight = None

    @classmethod
    def stage1(
        cls, in_channels: int, num_classes: int, feat_dim: int = OLTR_FEAT_DIM, **kwargs: object
    ) -> OLTRHead:
        """The official stage-1 head: no attention, linear classifier (``config/ImageNet_LT/stage_1.py``)."""
        return cls(  # type: ignore[arg-type]
            in_channels, num_classes, feat_dim, use_attention=False, use_meta=False, **kwargs
        )

    def to_stage2(self, feature_size: int | tuple[int, int] | None = None) -> OLTRHead:
        """A new stage-2 head (attention + meta-embedding) initialised from this stage-1 head.

        Copies the projection ``fc_add`` (and the attention, if this head has one of the same size),
        and initialises the hallucinator from this head's linear classifier, as the official
        ``MetaEmbeddingClassifier.create_model(stage1_weights=True)`` does via ``utils.init_weights``.
        The new attention's ``conv_mask`` is zero, so at first the new head computes the same direct
        features as this one. ``feature_size`` defaults to this head's. On this head's device/dtype.
        """
        if self.use_meta:
            raise ValueError("to_stage2 needs a stage-1 head (use_meta=False), got a head with use_meta=True")
        size = self.feature_size if feature_size is None else _as_size(feature_size)
        new = OLTRHead(
            self.in_channels, self.num_classes, self.feat_dim, feature_size=size, use_attention=True,
            use_meta=True, scale=self.scale, reachability_scale=self.reachability_scale,
            attention_reduction=self.attention_reduction,
        )
        ref = next(self.parameters())
        new.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            new.fc_add.load_state_dict(self.fc_add.state_dict())
            new.hallucinator.load_state_dict(self.fc.state_dict())  # type: ignore[union-attr]
            if self.attention is not None and self.attention.feature_size == size:
                new.attention.load_state_dict(self.attention.state_dict())  # type: ignore[union-attr]
        return new

    def _check_map(self, x: object) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"feature_map must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"feature_map must be a floating-point tensor, got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"feature_map must be (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        if self.use_attention and tuple(x.shape[2:]) != self.feature_size:
            raise ValueError(
                f"feature_map must be {self.feature_size[0]}x{self.feature_size[1]} (feature_size), got "
                f"{x.shape[2]}x{x.shape[3]} (shape {tuple(x.shape)})"
            )
        if x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"feature_map must have a non-empty spatial size, got {tuple(x.shape)}")
        return x

    def meta_embedding(self, features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Stage-2 logits from direct features (B, D) and centroids (C, D) (detached here)."""
        if self.hallucinator is None or self.selector is None or self.cosine_weight is None:
            raise RuntimeError("meta_embedding needs a stage-2 head (use_meta=True)")
        dtype = torch.promote_types(features.dtype, centroids.dtype)
        v = features.to(dtype)
        c = centroids.detach().to(device=v.device, dtype=dtype)
        dist2 = (v.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(dim=2)  # (B, C)
        reachability = self.reachability_scale / dist2.min(dim=1).values.clamp_min(_EPS).sqrt()
        memory = torch.softmax(self.hallucinator(v), dim=1).to(dtype) @ c  # (B, D)
        selector = torch.tanh(self.selector(v)).to(dtype)
        meta = reachability.unsqueeze(1) * (v + selector * memory)
        return cosine_norm_logits(meta, self.cosine_weight.to(dtype), self.scale)

    def forward(self, feature_map: torch.Tensor, centroids: torch.Tensor | None = None) -> OLTROutput:
        x = self._check_map(feature_map)
        if self.use_meta:
            if centroids is None:
                raise ValueError(
                    "centroids (num_classes, feat_dim) are required by a stage-2 head (use_meta=True), "
                    "got None; pass criterion.centroids"
                )
            _check_matrix(centroids, "centroids", self.num_classes, self.feat_dim, "feat_dim")
        elif centroids is not None:
            raise ValueError(
                "centroids are only used by a stage-2 head (use_meta=True); this head has use_meta=False"
            )
        if self.attention is not None:
            x = self.attention(x)
        features = F.relu(self.fc_add(x.mean(dim=(2, 3))))
        if self.use_meta:
            logits = self.meta_embedding(features, centroids)  # type: ignore[arg-type]
        else:
            logits = self.fc(features)  # type: ignore[misc]
        return OLTROutput(logits, features)


# --------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------


def class_mean_features(features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-class mean feature over each class's POSITIVE images, and the positive counts.

    .. math::

        c_k = \frac{\sum_i y_{ik} v_i}{\sum_i y_{ik}} \quad (c_k = 0 \text{ if } \sum_i y_{ik} = 0)

    An image with several positives contributes to each of their means (multi-label form of the
    official ``run_networks.py`` ``centroids_cal``).

    Shape:
        - features: (N, D); targets: (N, C) multi-hot; output: ((C, D) means, (C,) counts).

    Example:
        >>> v = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
        >>> means, counts = class_mean_features(v, torch.tensor([[1, 1], [1, 0]]))
        >>> means.tolist(), counts.tolist()
        ([[2.0, 1.0], [1.0, 0.0]], [2.0, 1.0])
    """
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a 2-D (N, D) tensor, got {shape}")
    _check_matrix(features, "features", None, features.shape[1], "D")
    if not isinstance(targets, torch.Tensor) or targets.dim() != 2 or targets.shape[0] != features.shape[0]:
        shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(
            f"targets must be (N, C) with N = {features.shape[0]} (rows of features), got {shape}"
        )
    _check_binary_targets(targets, tuple(targets.shape))  # type: ignore[arg-type]
    y = targets.to(device=features.device, dtype=features.dtype)
    counts = y.sum(dim=0)
    means = (y.t() @ features) / counts.clamp_min(1.0).unsqueeze(1)
    return means, counts


def _feature_loss_per_sample(
    features: torch.Tensor,
    positives: torch.Tensor,
    centroids: torch.Tensor,
    margin: float,
    repel_weight: float,
) -> torch.Tensor:
    dtype = torch.promote_types(features.dtype, centroids.dtype)
    v, c = features.to(dtype), centroids.to(dtype)
    y = positives.to(device=v.device, dtype=dtype)
    n, num_classes = y.shape
    dist2 = (v.unsqueeze(1) - c.unsqueeze(0)).pow(2).sum(dim=2)  # (N, C)
    attract = 0.5 * (dist2 * y).sum(dim=1)  # (N,)
    repel = torch.clamp(margin - (dist2 * (1.0 - y)).sum() / (n * num_classes), min=0.0)
    return attract + repel_weight * repel


def disc_centroids_loss(
    features: torch.Tensor,
    targets: torch.Tensor,
    centroids: torch.Tensor,
    margin: float = OLTR_MARGIN,
    repel_weight: float = OLTR_REPEL_WEIGHT,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-label discriminative centroid loss (OLTR's ``DiscCentroidsLoss``, adapted).

    With :math:`d_{ik} = \|v_i - c_k\|^2`, :math:`P_i` the positive classes of image i, B images and C
    classes:

    .. math::

        f_i = \tfrac12 \sum_{k \in P_i} d_{ik}
              + \lambda \max\Big(0,\ m - \frac{1}{B C}\sum_{j}\sum_{k \notin P_j} d_{jk}\Big)

    The repel hinge is one batch-level value shared by every sample. ``'mean'`` returns
    :math:`\frac1B\sum_i f_i` (the official loss, ``size_average=True``), ``'sum'`` the sum, ``'none'``
    the per-sample (B,) vector. Defaults: ``margin`` 10 and ``repel_weight`` :math:`\lambda` 0.01
    (``loss/DiscCentroidsLoss.py``). Gradients are exact (autograd) for features and centroids.

    Shape:
        - features: (B, D); targets: (B, C) multi-hot; centroids: (C, D).
        - output: scalar, or (B,) for ``'none'``.

    Example:
        >>> v = torch.tensor([[2.0, 1.0]]); c = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> # attract 0.5 * |v - c_0|^2 = 2.5; repel 0.01 * (10 - |v - c_1|^2 / 2) = 0.095
        >>> round(disc_centroids_loss(v, torch.tensor([[1, 0]]), c).item(), 4)
        2.595
    """
    check_reduction(reduction)
    margin = check_positive(margin, "margin", allow_zero=True)
    repel_weight = check_positive(repel_weight, "repel_weight", allow_zero=True)
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2:
        shape = tuple(centroids.shape) if isinstance(centroids, torch.Tensor) else type(centroids).__name__
        raise ValueError(f"centroids must be a 2-D (C, D) tensor, got {shape}")
    num_classes, feat_dim = centroids.shape
    _check_matrix(centroids, "centroids", num_classes, feat_dim, "D")
    _check_matrix(features, "features", None, feat_dim, "D")
    if features.shape[0] == 0:
        raise ValueError("features must hold at least one sample for the centroid loss, got 0 rows")
    _check_binary_targets(targets, (features.shape[0], num_classes))
    per_sample = _feature_loss_per_sample(features, targets, centroids, margin, repel_weight)
    return reduce_loss(per_sample, reduction)


def oltr_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    features: torch.Tensor | None = None,
    centroids: torch.Tensor | None = None,
    *,
    stage: int = 2,
    feature_loss_weight: float = OLTR_FEATURE_LOSS_WEIGHT,
    margin: float = OLTR_MARGIN,
    repel_weight: float = OLTR_REPEL_WEIGHT,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""Multi-label OLTR loss: BCE on the logits plus (stage 2) the centroid loss on the direct features.

    Per element, with :math:`f_i` of :func:`disc_centroids_loss` and :math:`w` = ``feature_loss_weight``:

    .. math::

        \ell_{ik} = \mathrm{BCE}(z_{ik}, y_{ik}) + \frac{w}{C}\, f_i \qquad (\text{stage 1: } w = 0)

    so ``'mean'`` is :math:`\overline{\mathrm{BCE}} + \frac{w}{C}\cdot\frac1B\sum_i f_i` and equals
    ``'none'.mean()``; ``'sum'`` equals ``'none'.sum()``. Stage 1 ignores ``features`` and ``centroids``
    (the official stage 1 has no feature loss). Defaults: ``stage=2``; ``feature_loss_weight`` 0.01
    (``config/ImageNet_LT/stage_2_meta_embedding.py``); ``margin`` 10 and ``repel_weight`` 0.01
    (``loss/DiscCentroidsLoss.py``). float16/bfloat16 logits are computed in float32.

    Shape:
        - logits, targets: (B, C); features: (B, D); centroids: (C, D).
        - output: scalar, or (B, C) for ``'none'``.

    Example:
        >>> z, y = torch.zeros(1, 2), torch.tensor([[1, 0]])
        >>> v, c = torch.tensor([[2.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> # ln 2 + (0.01 / 2) * 2.595
        >>> round(oltr_loss(z, y, v, c).item(), 6)
        0.706122
    """
    check_reduction(reduction)
    stage = _check_stage(stage)
    feature_loss_weight = check_positive(feature_loss_weight, "feature_loss_weight", allow_zero=True)
    margin = check_positive(margin, "margin", allow_zero=True)
    repel_weight = check_positive(repel_weight, "repel_weight", allow_zero=True)
    logits, targets = check_logits_targets(logits, targets)
    bce = bce_loss(logits, targets, reduction="none")
    if stage == 1:
        return reduce_loss(bce, reduction)
    if features is None:
        raise ValueError(
            "features (B, feat_dim) are required in stage 2 (the centroid loss), got None; "
            "pass features=head_output.features, or use stage=1"
        )
    if centroids is None:
        raise ValueError("centroids (C, feat_dim) are required in stage 2, got None")
    num_classes = logits.shape[1]
    if not isinstance(centroids, torch.Tensor) or centroids.dim() != 2 or centroids.shape[0] != num_classes:
        shape = tuple(centroids.shape) if isinstance(centroids, torch.Tensor) else type(centroids).__name__
        raise ValueError(f"centroids must have shape ({num_classes}, feat_dim) (one per class), got {shape}")
    feat_dim = centroids.shape[1]
    _check_matrix(centroids, "centroids", num_classes, feat_dim, "feat_dim")
    _check_matrix(features, "features", logits.shape[0], feat_dim, "feat_dim")
    if logits.shape[0] == 0:
        raise ValueError("the centroid loss needs at least one sample, got an empty batch")
    if features.device != logits.device:
        raise ValueError(
            f"features must be on the same device as logits ({logits.device}), got {features.device}"
        )
    per_sample = _feature_loss_per_sample(features, targets, centroids, margin, repel_weight)
    total = bce + (feature_loss_weight / num_classes) * per_sample.to(bce.dtype).unsqueeze(1)
    return reduce_loss(total, reduction)


class OLTRLoss(nn.Module):
    r"""Module form of :func:`oltr_loss`; owns the class centroids (as the official
    ``DiscCentroidsLoss`` does).

    ``centroids`` is an ``nn.Parameter`` (C, feat_dim), drawn from :math:`\mathcal N(0, 1)` as in the
    official constructor, and must be set with :meth:`init_centroids` (or :meth:`set_centroids`, or a
    loaded ``state_dict``) before a stage-2 forward; the flag ``centroids_initialized`` (a buffer, saved
    with the state dict) records it and a stage-2 forward without it raises ``RuntimeError`` (also under
    ``torch.compile``, which reads a Python copy of the flag instead of the buffer, so the forward
    stays one graph; the value checks of the inputs are skipped while compiling, see
    :mod:`rskd_loss.validation`). Pass
    ``criterion.centroids`` to :class:`OLTRHead` in stage 2 and include ``criterion.parameters()`` in an
    optimizer (official: SGD lr 0.01, momentum 0.9, weight decay 5e-4,
    ``config/ImageNet_LT/stage_2_meta_embedding.py``).

    Args:
        num_classes: C.
        feat_dim: D of the direct features. (The official value is 512.)
        feature_loss_weight: :math:`w`. Default 0.01 (official stage-2 config).
        stage: 1 (BCE only) or 2 (BCE + centroid loss). Default 2.
        margin, repel_weight: of the centroid loss. Defaults 10 and 0.01 (``loss/DiscCentroidsLoss.py``).
        reduction: ``'mean'`` | ``'sum'`` | ``'none'``. Default ``'mean'``.

    Shape:
        - forward(logits (B, C), targets (B, C), features (B, D) or None) -> scalar or (B, C).

    Example:
        >>> crit = OLTRLoss(num_classes=2, feat_dim=2)
        >>> crit.set_centroids(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        >>> loss = crit(torch.zeros(1, 2), torch.tensor([[1, 0]]), features=torch.tensor([[2.0, 1.0]]))
        >>> round(loss.item(), 6)
        0.706122
    """

    centroids_initialized: torch.Tensor

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        feature_loss_weight: float = OLTR_FEATURE_LOSS_WEIGHT,
        stage: int = 2,
        margin: float = OLTR_MARGIN,
        repel_weight: float = OLTR_REPEL_WEIGHT,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.num_classes = check_int(num_classes, "num_classes", minimum=1)
        self.feat_dim = check_int(feat_dim, "feat_dim", minimum=1)
        self.feature_loss_weight = check_positive(feature_loss_weight, "feature_loss_weight", allow_zero=True)
        self.stage = _check_stage(stage)
        self.margin = check_positive(margin, "margin", allow_zero=True)
        self.repel_weight = check_positive(repel_weight, "repel_weight", allow_zero=True)
        self.reduction = check_reduction(reduction)
        self.centroids = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.register_buffer("centroids_initialized", torch.tensor(False))
        # A Python copy of the flag, read while torch.compile traces forward (reading the buffer there
        # would split the graph); kept in step by set_centroids and load_state_dict.
        self._centroids_ready = False
        self.register_load_state_dict_post_hook(OLTRLoss._sync_ready_flag)

    @staticmethod
    def _sync_ready_flag(module: nn.Module, incompatible_keys: object) -> None:
        module._centroids_ready = bool(module.centroids_initialized)

    def set_centroids(self, centroids: torch.Tensor) -> None:
        """Copy a (C, feat_dim) tensor into the centroids (the caller's tensor is not kept or changed)."""
        _check_matrix(centroids, "centroids", self.num_classes, self.feat_dim, "feat_dim")
        with torch.no_grad():
            self.centroids.copy_(centroids.detach().to(self.centroids.device, self.centroids.dtype))
            self.centroids_initialized.fill_(True)
        self._centroids_ready = True

    def init_centroids(self, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Set centroid k to the mean stage-1 feature of class k's positive images; return the (C,) counts.

        ``features`` (N, feat_dim): the direct features of the training set from the stage-1 model in
        eval mode, without augmentation (official ``run_networks.py`` ``centroids_cal``). A class with no
        positive gets a zero centroid and a ``UserWarning`` naming it.
        """
        _check_matrix(features, "features", None, self.feat_dim, "feat_dim")
        good = isinstance(targets, torch.Tensor) and targets.dim() == 2
        if not good or targets.shape[1] != self.num_classes:
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"targets must have shape (N, {self.num_classes}), got {shape}")
        means, counts = class_mean_features(features.detach(), targets)
        missing = (counts == 0).nonzero().flatten().tolist()
        if missing:
            warnings.warn(
                f"OLTRLoss.init_centroids: {len(missing)} of {self.num_classes} classes have no positive "
                f"image; their centroids are set to zero: {missing}",
                UserWarning,
                stacklevel=2,
            )
        self.set_centroids(means)
        return counts

    def _centroids_are_ready(self) -> bool:
        # Eager: the buffer (what a state dict carries). Under torch.compile: its Python copy, which
        # dynamo guards on (a change recompiles) instead of splitting the graph.
        if is_compiling():
            return self._centroids_ready
        ready = bool(self.centroids_initialized)
        self._centroids_ready = ready
        return ready

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits must have {self.num_classes} columns (num_classes), got shape {tuple(logits.shape)}"
            )
        if self.stage == 2 and not self._centroids_are_ready():
            raise RuntimeError(
                "OLTRLoss stage 2 needs initialised centroids: call init_centroids(stage1_features, targets) "
                "(or set_centroids / load_state_dict) first"
            )
        return oltr_loss(
            logits,
            targets,
            features,
            self.centroids if self.stage == 2 else None,
            stage=self.stage,
            feature_loss_weight=self.feature_loss_weight,
            margin=self.margin,
            repel_weight=self.repel_weight,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, stage={self.stage}, "
            f"feature_loss_weight={self.feature_loss_weight}, margin={self.margin}, "
            f"repel_weight={self.repel_weight}, reduction={self.reduction!r}"
        )
