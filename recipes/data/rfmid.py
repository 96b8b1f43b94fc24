"""RFMiD (Retinal Fundus Multi-disease Image Dataset, Pachade et al., Data 2021; the RIADD / ISBI 2021
challenge data) read through the generic :class:`~recipes.data.csv_dataset.MultiLabelCSVDataset`.

Official layout (as distributed for the challenge and used, e.g., by the RIADD entries
github.com/frankkramer-lab/riadd.aucmedi ``scripts/classifier_DenseNet201.py`` (``Training_Set/
Training`` + ``Training_Set/RFMiD_Training_Labels.csv``) and github.com/Linquan25/ISBI-RIADD-Challenge
``boosting_validation.py`` (``Evaluation_Set/Validation`` + ``Evaluation_Set/RFMiD_Validation_Labels.csv``))::

    ROOT/Training_Set/RFMiD_Training_Labels.csv      ROOT/Training_Set/Training/1.png ...
    ROOT/Evaluation_Set/RFMiD_Validation_Labels.csv  ROOT/Evaluation_Set/Validation/1.png ...
    ROOT/Test_Set/RFMiD_Testing_Labels.csv           ROOT/Test_Set/Test/1.png ...

``layout="kaggle"`` is the same with each split folder nested twice (``Training_Set/Training_Set/...``,
as the public Kaggle mirror unpacks); any other arrangement is given as a mapping
``{"train": (csv, image_dir), ...}`` relative to ``root``.

CSV columns: ``ID, Disease_Risk`` then the 45 conditions of :data:`RFMID_CLASSES` in this order (the
order of the paper's Table and of the CSV header). ``ID`` restarts at 1 in every split, so ids are only
unique within a split: :func:`write_rfmid_merged_csv` names each image by its path relative to
``root`` (``Training_Set/Training/1.png``), which is unique across splits.

``Disease_Risk`` (any abnormality) is a summary, not a condition; it is dropped unless
``keep_disease_risk=True`` (then it is the first class). The RIADD challenge scored 28 columns: the 27
conditions with enough images plus ``OTHER`` (the rest pooled), as in the challenge CSVs read by
frankkramer-lab/riadd.aucmedi ``scripts/classifier_DenseNet201.py`` (``cols = [... "RP", "OTHER"]``);
such a CSV is detected and read as the ``"challenge"`` variant (:data:`RFMID_CHALLENGE_CLASSES`).
"""
from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rskd_loss.fileio import atomic_write_text

from .csv_dataset import CSVDataError, MultiLabelCSVDataset, read_label_csv

__all__ = [
    "RFMID_CLASSES",
    "RFMID_CHALLENGE_CLASSES",
    "DISEASE_RISK",
    "ID_COLUMN",
    "RFMID_SPLITS",
    "RFMID_LAYOUTS",
    "rfmid_split_files",
    "detect_rfmid_variant",
    "rfmid_class_names",
    "load_rfmid",
    "write_rfmid_merged_csv",
    "load_rfmid_merged",
]

ID_COLUMN = "ID"
DISEASE_RISK = "Disease_Risk"
RFMID_SPLITS = ("train", "val", "test")

#: the 45 conditions, in the order of the official CSV header
RFMID_CLASSES: tuple[str, ...] = (
    "DR", "ARMD", "MH", "DN", "MYA", "BRVO", "TSLN", "ERM", "LS", "MS", "CSR", "ODC", "CRVO", "TV",
    "AH", "ODP", "ODE", "ST", "AION", "PT", "RT", "RS", "CRS", "EDN", "RPEC", "MHL", "RP", "CWS", "CB",
    "ODPM", "PRH", "MNF", "HR", "CRAO", "TD", "CME", "PTCR", "CF", "VH", "MCA", "VS", "BRAO", "PLQ",
    "HPED", "CL",
)
#: the RIADD challenge's 28 scored columns: the first 27 conditions plus OTHER
RFMID_CHALLENGE_CLASSES: tuple[str, ...] = RFMID_CLASSES[:27] + ("OTHER",)

_VARIANTS = {"full": RFMID_CLASSES, "challenge": RFMID_CHALLENGE_CLASSES}

RFMID_LAYOUTS: dict[str, dict[str, tuple[str, str]]] = {
    "official": {
        "train": ("Training_Set/RFMiD_Training_Labels.csv", "Training_Set/Training"),
        "val": ("Evaluation_Set/RFMiD_Validation_Labels.csv", "Evaluation_Set/Validation"),
        "test": ("Test_Set/RFMiD_Testing_Labels.csv", "Test_Set/Test"),
    },
    "kaggle": {
        "train": ("Training_Set/Training_Set/RFMiD_Training_Labels.csv", "Training_Set/Training_Set/Training"),
        "val": ("Evaluation_Set/Evaluation_Set/RFMiD_Validation_Labels.csv",
                "Evaluation_Set/Evaluation_Set/Validation"),
        "test": ("Test_Set/Test_Set/RFMiD_Testing_Labels.csv", "Test_Set/Test_Set/Test"),
    },
}

Layout = str | Mapping[str, tuple[str, str]]


def rfmid_split_files(root: str | os.PathLike[str], split: str, layout: Layout = "official") -> tuple[Path, Path]:
    """``(csv_path, image_dir)`` of one split under ``root``; both must exist."""
    if split not in RFMID_SPLITS:
        raise ValueError(f"split must be one of {RFMID_SPLITS}, got {split!r}")
    if isinstance(layout, str):
        if layout not in RFMID_LAYOUTS:
            raise ValueError(f"layout must be one of {tuple(RFMID_LAYOUTS)} or a mapping, got {layout!r}")
        table = RFMID_LAYOUTS[layout]
    else:
        table = dict(layout)
        if split not in table:
            raise ValueError(f"layout mapping must have an entry for split {split!r}, got keys {list(table)}")
    csv_rel, img_rel = table[split]
    root = Path(root)
    csv_path, image_dir = root / csv_rel, root / img_rel
    if not csv_path.is_file():
        other = [n for n in RFMID_LAYOUTS if isinstance(layout, str) and n != layout]
        hint = f" (a different arrangement? try layout={other[0]!r} or a mapping)" if other else ""
        raise FileNotFoundError(f"RFMiD {split} labels not found: expected {csv_path}{hint}")
    if not image_dir.is_dir():
        raise FileNotFoundError(f"RFMiD {split} image folder not found: expected {image_dir}")
    return csv_path, image_dir


def _header(csv_path: Path) -> list[str]:
    text = csv_path.read_bytes().decode("utf-8-sig")
    try:
        return [h.strip() for h in next(csv.reader(io.StringIO(text, newline="")))]
    except StopIteration:
        raise CSVDataError(f"{csv_path}: expected a header line, got an empty file") from None


def detect_rfmid_variant(header: Sequence[str], *, source: str = "header") -> str:
    """``"full"`` (45 conditions) or ``"challenge"`` (27 + ``OTHER``) from a CSV header.

    Raises :class:`CSVDataError` naming the columns that are missing for the closer variant.
    """
    cols = set(header)
    if ID_COLUMN not in cols:
        raise CSVDataError(f"{source}: expected an RFMiD header starting with {ID_COLUMN!r}, got {list(header)}")
    missing = {v: [c for c in names if c not in cols] for v, names in _VARIANTS.items()}
    for v in ("full", "challenge"):
        if not missing[v]:
            return v
    best = min(missing, key=lambda v: len(missing[v]))
    raise CSVDataError(f"{source}: expected the RFMiD columns of the {best!r} variant, missing "
                       f"{missing[best]}")


def rfmid_class_names(variant: str = "full", *, keep_disease_risk: bool = False) -> tuple[str, ...]:
    """The class columns read for a variant (``"full"`` | ``"challenge"``)."""
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {tuple(_VARIANTS)}, got {variant!r}")
    return ((DISEASE_RISK,) if keep_disease_risk else ()) + _VARIANTS[variant]


def _resolve_variant(csv_path: Path, variant: str) -> str:
    if variant != "auto" and variant not in _VARIANTS:
        raise ValueError(f"variant must be 'auto' or one of {tuple(_VARIANTS)}, got {variant!r}")
    found = detect_rfmid_variant(_header(csv_path), source=str(csv_path))
    if variant == "auto":
        return found
    if variant == "full" and found != "full":
        raise CSVDataError(f"{csv_path}: expected the 45-condition ('full') RFMiD columns, got the "
                           f"{found!r} variant")
    return variant


def load_rfmid(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    layout: Layout = "official",
    variant: str = "auto",
    keep_disease_risk: bool = False,
    transform: Callable[[Any], Any] | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    empty_classes: str = "warn",
) -> MultiLabelCSVDataset:
    """One official RFMiD split as a :class:`MultiLabelCSVDataset` (ids ``ID``, files ``{ID}.png``).

    Args:
        root: folder holding the split folders (see the module doc).
        split: ``"train"`` | ``"val"`` | ``"test"``.
        layout: ``"official"`` (default) | ``"kaggle"`` | a mapping ``split -> (csv, image_dir)``.
        variant: ``"auto"`` (default: from the header) | ``"full"`` (45) | ``"challenge"`` (27 + OTHER).
        keep_disease_risk: keep ``Disease_Risk`` as the first class (default ``False``: dropped).
        transform, indices, empty_classes: passed to :class:`MultiLabelCSVDataset`. A class with no
            positive is normal in RFMiD (several of the 45 are absent from a split), hence a warning
            by default.

    Example (needs the data)::

        ds = load_rfmid("/data/RFMiD", "train")   # 1920 images, 45 classes
    """
    csv_path, image_dir = rfmid_split_files(root, split, layout)
    v = _resolve_variant(csv_path, variant)
    return MultiLabelCSVDataset(csv_path, image_dir, image_column=ID_COLUMN,
                                class_names=rfmid_class_names(v, keep_disease_risk=keep_disease_risk),
                                transform=transform, image_suffix=".png", indices=indices,
                                empty_classes=empty_classes)


def write_rfmid_merged_csv(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    splits: Sequence[str] = RFMID_SPLITS,
    layout: Layout = "official",
    variant: str = "auto",
    keep_disease_risk: bool = False,
) -> Path:
    """Merge official splits into one normalised CSV (for cross-validation); returns its path.

    The output has the generic layout: an ``image`` column holding each image's path relative to
    ``root`` (e.g. ``Training_Set/Training/1.png``, unique across splits although ``ID`` is not),
    then the class columns. Rows keep the split order given, then CSV order. Every split must be of
    the same variant. Read it with ``MultiLabelCSVDataset(out_csv, root)`` or
    :func:`load_rfmid_merged`. Written atomically.
    """
    root = Path(root)
    if isinstance(splits, str) or not splits:
        raise ValueError(f"splits must be a non-empty sequence of {RFMID_SPLITS}, got {splits!r}")
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits must be unique, got {list(splits)}")
    variants = {}
    tables = []
    for s in splits:
        csv_path, image_dir = rfmid_split_files(root, s, layout)
        variants[s] = _resolve_variant(csv_path, variant)
        names = rfmid_class_names(variants[s], keep_disease_risk=keep_disease_risk)
        tables.append((image_dir, read_label_csv(csv_path, image_column=ID_COLUMN, class_names=names)))
    if len(set(variants.values())) > 1:
        raise CSVDataError(f"expected every split to have the same RFMiD variant, got {variants}")
    names = tables[0][1].class_names
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image", *names])
    for image_dir, table in tables:
        rel = image_dir.relative_to(root).as_posix()
        for image_id, row in zip(table.image_ids, table.targets):
            w.writerow([f"{rel}/{image_id}.png", *row.tolist()])
    out = Path(out_csv)
    atomic_write_text(out, buf.getvalue())
    return out


def load_rfmid_merged(
    root: str | os.PathLike[str],
    out_csv: str | os.PathLike[str],
    *,
    splits: Sequence[str] = RFMID_SPLITS,
    layout: Layout = "official",
    variant: str = "auto",
    keep_disease_risk: bool = False,
    transform: Callable[[Any], Any] | None = None,
    empty_classes: str = "warn",
) -> MultiLabelCSVDataset:
    """Write the merged CSV (:func:`write_rfmid_merged_csv`) and read it as one data set.

    ``out_csv`` is where the normalised CSV goes (e.g. next to the data, or a writable copy when the
    data folder is read-only); the split file for cross-validation is then made next to it.
    """
    path = write_rfmid_merged_csv(root, out_csv, splits=splits, layout=layout, variant=variant,
                                  keep_disease_risk=keep_disease_risk)
    return MultiLabelCSVDataset(path, root, transform=transform, empty_classes=empty_classes)
