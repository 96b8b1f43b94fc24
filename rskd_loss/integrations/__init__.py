"""Integrations of RSKD with training frameworks; each imported only when used.

* :mod:`rskd_loss.integrations.lightning`: ``RSKDWeightCallback``, Eq. 3 after every validation of a
  Lightning ``Trainer`` (predictions gathered over every DDP process).
* :mod:`rskd_loss.integrations.mmpretrain`: registered loss, head and hook for an mmpretrain config
  (``custom_imports = dict(imports=["rskd_loss.integrations.mmpretrain"])``).
* timm needs no module: see docs/integrations.md.

This package imports neither Lightning nor mmpretrain nor timm; :mod:`.common` holds the
framework-free helpers (``load_per_class_metric``, ``gather_rows``, ``first_per_index``).
"""
from .common import first_per_index, gather_rows, load_per_class_metric

__all__ = ["load_per_class_metric", "gather_rows", "first_per_index"]
