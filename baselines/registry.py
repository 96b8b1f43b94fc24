"""Name -> criterion registry for the Table 3 baselines (Ju et al., MICCAI 2021).

``build_criterion("focal")``, ``build_criterion("db", class_counts, num_images, preset="voc")`` or
``build_criterion({"name": "db", "preset": "voc"}, class_counts, num_images)`` -- one entry point for
the recipes' configs, so a config file names its loss instead of importing it.

========  =========================================  =========================================
name      criterion                                  needs
========  =========================================  =========================================
``bce``   :class:`baselines.bce.MultiLabelBCELoss`   -- (alias ``erm``: Table 3's "ERM model")
``rw``    :class:`baselines.reweight.ReweightedBCE`  ``class_counts``
``focal`` :class:`baselines.focal.FocalLoss`         --
``ldam``  :class:`baselines.ldam.LDAMLoss`           ``class_counts``
``db``    :class:`baselines.db_loss.DBLoss`          ``class_counts``, ``num_images``
``oltr``  ``baselines.oltr.OLTRLoss``                ``num_classes`` (or ``class_counts``), ``feat_dim``
``asl``   :class:`baselines.asl.AsymmetricLoss`      -- (not in Table 3: Ridnik et al., ICCV 2021)
========  =========================================  =========================================

``class_counts`` and ``num_images`` are accepted (and ignored) by the criteria that do not use them,
so a recipe can pass its data statistics to every criterion alike. ``baselines.oltr`` is imported
only when ``"oltr"`` is built.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from .asl import AsymmetricLoss
from .bce import MultiLabelBCELoss
from .db_loss import DBLoss
from .focal import FocalLoss
from .ldam import LDAMLoss
from .reweight import ReweightedBCE

__all__ = ["available_criteria", "build_criterion", "COUNT_CRITERIA"]

_ALIASES = {"erm": "bce"}
_NAMES = ("bce", "erm", "rw", "focal", "ldam", "db", "oltr", "asl")
#: the criteria whose formula divides by a class count (a count of 0 makes them undefined)
COUNT_CRITERIA = ("rw", "ldam", "db")


def available_criteria() -> tuple[str, ...]:
    """Every name :func:`build_criterion` accepts (aliases included), in Table 3 order, then the
    baselines that are not in Table 3 (``asl``)."""
    return _NAMES


def _need(name: str, what: str, value: object) -> None:
    if value is None:
        raise ValueError(f"criterion {name!r} needs {what}, got None")


def _build_oltr(class_counts: object, kwargs: dict[str, Any]) -> nn.Module:
    if kwargs.get("num_classes") is None:
        if class_counts is None:
            raise ValueError("criterion 'oltr' needs num_classes (or class_counts to infer it), got None")
        kwargs["num_classes"] = len(class_counts)  # type: ignore[arg-type]
    _need("oltr", "feat_dim", kwargs.get("feat_dim"))
    from . import oltr  # lazy: OLTR is optional and owned by another module

    return oltr.OLTRLoss(**kwargs)


_BUILDERS: dict[str, Callable[[object, object, dict[str, Any]], nn.Module]] = {
    "bce": lambda counts, n_img, kw: MultiLabelBCELoss(**kw),
    "focal": lambda counts, n_img, kw: FocalLoss(**kw),
    "asl": lambda counts, n_img, kw: AsymmetricLoss(**kw),
}


def build_criterion(
    name_or_config: str | Mapping[str, Any],
    class_counts: object = None,
    num_images: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a baseline criterion by name or from a config mapping.

    Args:
        name_or_config: a name from :func:`available_criteria` (case-insensitive), or a mapping with a
            ``"name"`` key whose other keys are constructor keyword arguments (``class_counts`` and
            ``num_images`` may be among them).
        class_counts: (C,) positive training images per class, for ``rw``, ``ldam``, ``db`` (and to
            infer ``num_classes`` for ``oltr``).
        num_images: number of training images, for ``db``.
        **kwargs: constructor keyword arguments; they override the config mapping's.

    Returns:
        the criterion module.

    Raises:
        ValueError: unknown name (the message lists the valid ones), a missing ``class_counts`` /
            ``num_images`` / ``feat_dim`` (the message names it), or a value given twice.
        TypeError: a config that is neither a string nor a mapping, or an unknown keyword argument.

    Example:
        >>> build_criterion("erm")
        MultiLabelBCELoss(reduction='mean')
        >>> crit = build_criterion({"name": "db", "preset": "voc"}, class_counts=[50, 10, 2], num_images=100)
        >>> crit.lambda_
        5.0
    """
    if isinstance(name_or_config, str):
        name, config = name_or_config, {}
    elif isinstance(name_or_config, Mapping):
        config = dict(name_or_config)
        if "name" not in config:
            raise ValueError(f"a criterion config needs a 'name' key (one of {_NAMES}), got keys {sorted(config)}")
        name = config.pop("name")
        if not isinstance(name, str):
            raise TypeError(f"config 'name' must be a string, got {type(name).__name__}")
        for key, value in (("class_counts", class_counts), ("num_images", num_images)):
            if key in config:
                if value is not None:
                    raise ValueError(f"{key} given twice: in the config and as an argument")
                if key == "class_counts":
                    class_counts = config.pop(key)
                else:
                    num_images = config.pop(key)
    else:
        raise TypeError(f"name_or_config must be a string or a mapping, got {type(name_or_config).__name__}")

    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _NAMES:
        raise ValueError(f"unknown criterion {name!r}; valid names: {', '.join(_NAMES)}")
    kw = {**config, **kwargs}

    if key in _BUILDERS:
        return _BUILDERS[key](class_counts, num_images, kw)
    if key == "rw":
        _need("rw", "class_counts", class_counts)
        return ReweightedBCE(class_counts, **kw)
    if key == "ldam":
        _need("ldam", "class_counts", class_counts)
        return LDAMLoss(class_counts, **kw)
    if key == "db":
        _need("db", "class_counts", class_counts)
        _need("db", "num_images", num_images)
        return DBLoss(class_counts, num_images, **kw)
    return _build_oltr(class_counts, kw)
