"""Data layer of the recipes: one path (a folder of images + a labels CSV) for every data set.

Submodules: ``csv_dataset`` (the generic :class:`MultiLabelCSVDataset`), ``rfmid`` (RFMiD through
it), ``synthetic`` (the synthetic long-tailed fundus benchmark), ``cache`` (resize-once image
cache), ``splits`` (stratified ``splits_<csv>_<setting>_seed<k>.json``), ``transforms``, ``describe``.

The names below are re-exported lazily (PEP 562), so ``python -m recipes.data.synthetic`` or
``recipes.data.cache`` never import torchvision or matplotlib unless they are used (torch comes in
with ``rskd_loss``, whose file writers they use).
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "csv_dataset": ("BadImageError", "CSVDataError", "EmptyClassWarning", "LabelTable", "SkippedColumn",
                    "detect_label_columns", "label_columns_message",
                    "MultiLabelCSVDataset", "load_rgb_image", "read_label_csv", "BadImage", "find_bad_images"),
    "rfmid": ("RFMID_CHALLENGE_CLASSES", "RFMID_CLASSES", "load_rfmid", "load_rfmid_merged",
              "write_rfmid_merged_csv"),
    "synthetic": ("CATALOGUE", "generate_synthetic", "synthetic_labels", "synthetic_prior",
                  "target_class_counts"),
    "cache": ("build_cache", "crop_to_field", "find_field_box"),
    "splits": ("Fold", "Splits", "load_splits", "make_splits", "save_splits", "splits_for_csv"),
    "transforms": ("train_transform", "eval_transform", "uint8_transform", "IMAGENET_MEAN", "IMAGENET_STD"),
}
# (``describe`` is not re-exported: the name is the submodule's; use recipes.data.describe.describe)
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
