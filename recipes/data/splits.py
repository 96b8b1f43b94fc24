"""Multi-label stratified train / val / test splits, saved next to the CSV as one JSON file per CSV and setting.

The paper (Sec. 3.1-3.2) divides each data set "training : validating : testing = 7 : 1 : 2" and
reports "results ... evaluated on test set based on 4-fold cross-validation". Two schemes:

* ``"holdout"``: one fold, train / val / test = ``ratios`` (default 0.7 / 0.1 / 0.2). The test part
  is drawn first, then val from the rest with fraction ``val / (train + val)``. Iterative
  stratification matches each class's positives to the ratios first, so the part *sizes* may
  drift from them by a few per cent (e.g. 706 / 103 / 191 of 1000 multi-label images); they are
  kept as they are, since moving images to fix sizes would unbalance the labels.
* ``"kfold"``: ``n_folds`` folds (default 4); fold k's test part is the k-th stratified quarter, so
  each image is tested exactly once. The text does not say where the validation images of a fold
  come from; here they are carved from that fold's training part with the same train : val
  proportion as the hold-out (7 : 1, i.e. 1/8 of it), giving about 65.6 / 9.4 / 25 % per fold
  (sizes drift by a few per cent in the same way).
  (``ratios[2]`` is not used by this scheme: the test share is ``1 / n_folds``.)

Both use iterative stratification for multi-label data (Sechidis et al. 2011; Szymanski & Kajdanowicz
2017) from the ``iterative-stratification`` package: ``MultilabelStratifiedShuffleSplit`` and
``MultilabelStratifiedKFold`` (github.com/trent-b/iterative-stratification,
``iterstrat/ml_stratifiers.py``), seeded with ``random_state=seed``, so a seed always gives the same
split. As a last guarantee, a class with at least ``min_train_positives`` (4) positives in the whole
data set that ends up with none in a fold's training part gets one positive image moved there from
that fold's val (else test) part; such moves are recorded in ``Splits.moves``.

**The test part is never used for model selection**: early stopping, learning-rate schedule, the
KD weights of Eq. 3 (per-class validation AP) and any threshold are chosen on ``val`` only; ``test`` is
read once, for the reported numbers.

The JSON file records a fingerprint of the CSV it was made from (its name, SHA-256 of its bytes and
its size) and the label columns it was stratified on; :func:`load_splits` refuses a split file made
from another CSV. Its default name, :func:`default_splits_path`, is keyed by the CSV and the
setting, ``splits_<csv stem>_<holdout|kfold4>_seed<k>.json`` beside the CSV, so several CSVs (and
several seeds or schemes) share a folder. A CSV changed after its splits were made is refused with
the command that replaces them (``python -m recipes.data.splits --csv ... --replace``) or the file to
delete; runs made with the old splits cannot be resumed on the new ones (their data id changes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rskd_loss.errors import RSKDError
from rskd_loss.fileio import atomic_write_text, file_sha256

__all__ = [
    "Fold",
    "Splits",
    "SCHEMES",
    "make_splits",
    "csv_fingerprint",
    "save_splits",
    "load_splits",
    "splits_for_csv",
    "default_splits_path",
    "SplitsMismatchError",
]

SCHEMES = ("holdout", "kfold")
FORMAT = "rskd-splits/1"
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class Fold:
    """Row indices (0-based data rows of the CSV, sorted) of one fold's three parts."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def part(self, name: str) -> np.ndarray:
        if name not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {name!r}")
        return getattr(self, name)


@dataclass(frozen=True)
class Splits:
    """The folds of a split scheme plus how they were made."""

    scheme: str
    seed: int
    ratios: tuple[float, float, float]
    n_folds: int
    num_samples: int
    folds: tuple[Fold, ...]
    moves: tuple[dict[str, Any], ...] = field(default=())

    def __len__(self) -> int:
        return len(self.folds)

    def __getitem__(self, k: int) -> Fold:
        return self.folds[k]

    def params(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "seed": self.seed, "ratios": list(self.ratios),
                "n_folds": self.n_folds}

    def to_json_dict(self) -> dict[str, Any]:
        return {**self.params(), "num_samples": self.num_samples,
                "folds": [{p: fold.part(p).tolist() for p in PARTS} for fold in self.folds],
                "moves": list(self.moves),
                "note": "indices are 0-based data rows of the CSV; the test part is never used for "
                        "model selection"}


class SplitsMismatchError(RSKDError, ValueError):
    """A split file made from another CSV (other bytes) than the one it is loaded for."""


def _as_targets(targets: Any) -> np.ndarray:
    try:
        import torch

        if isinstance(targets, torch.Tensor):
            targets = targets.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    y = np.asarray(targets)
    if y.ndim != 2:
        raise ValueError(f"targets must be 2-D (N, C), got shape {y.shape}")
    if y.shape[0] == 0 or y.shape[1] == 0:
        raise ValueError(f"targets must have at least one sample and one class, got shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        bad = y[~np.isin(y, (0, 1))].flat[0]
        raise ValueError(f"targets must be multi-hot with values in {{0, 1}}, got {bad.item()!r}")
    return y.astype(np.uint8)


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    r = tuple(float(x) for x in ratios)
    if len(r) != 3:
        raise ValueError(f"ratios must be (train, val, test), got {len(r)} numbers: {ratios!r}")
    if any(not np.isfinite(x) or x < 0 for x in r) or r[0] <= 0:
        raise ValueError(f"ratios must be >= 0 with train > 0, got {r}")
    if abs(sum(r) - 1.0) > 1e-6:
        raise ValueError(f"ratios must sum to 1, got {r} (sum {sum(r):g})")
    return r  # type: ignore[return-value]


def _shuffle_split(y: np.ndarray, rows: np.ndarray, frac: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``rows`` into (keep, taken) with ``frac`` of them taken, multi-label stratified."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if frac <= 0:
        return rows, rows[:0]
    n_take = int(round(frac * len(rows)))
    if n_take < 1 or n_take >= len(rows):
        raise ValueError(f"cannot take a fraction {frac:g} of {len(rows)} samples (gives {n_take}); "
                         f"use more samples or other ratios")
    mss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=frac, random_state=seed)
    keep, taken = next(mss.split(np.zeros((len(rows), 1)), y[rows]))
    return rows[keep], rows[taken]


def make_splits(
    targets: Any,
    *,
    seed: int = 0,
    scheme: str = "holdout",
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    n_folds: int = 4,
    min_train_positives: int = 4,
) -> Splits:
    """Multi-label stratified splits of ``targets`` (N, C) in {0, 1}; see the module doc.

    Args:
        targets: ``(N, C)`` 0/1 array or tensor (e.g. ``dataset.targets``).
        seed: ``random_state`` of the stratifiers (default 0).
        scheme: ``"holdout"`` (default) or ``"kfold"``.
        ratios: train / val / test (default 0.7 / 0.1 / 0.2, paper Sec. 3.2).
        n_folds: folds of ``"kfold"`` (default 4, paper Sec. 3.1).
        min_train_positives: classes with at least this many positives overall are guaranteed a
            positive in every fold's training part (default 4, one per fold of a 4-fold split).

    Example::

        >>> import numpy as np
        >>> y = (np.random.default_rng(0).random((200, 3)) < 0.3).astype(np.uint8)
        >>> s = make_splits(y, scheme="kfold", seed=0)
        >>> len(s), sorted(np.concatenate([f.test for f in s.folds]).tolist()) == list(range(200))
        (4, True)
    """
    y = _as_targets(targets)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    r = _check_ratios(ratios)
    n = y.shape[0]
    all_rows = np.arange(n, dtype=np.int64)
    val_frac = r[1] / (r[0] + r[1])
    raw: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if scheme == "holdout":
        trainval, test = _shuffle_split(y, all_rows, r[2], seed)
        train, val = _shuffle_split(y, trainval, val_frac, seed)
        raw.append((train, val, test))
        n_folds_used = 1
    else:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
            raise ValueError(f"n_folds must be an int >= 2, got {n_folds!r}")
        if n < n_folds:
            raise ValueError(f"n_folds={n_folds} needs at least {n_folds} samples, got {n}")
        kf = MultilabelStratifiedKFold(n_splits=int(n_folds), shuffle=True, random_state=seed)
        for trainval, test in kf.split(np.zeros((n, 1)), y):
            train, val = _shuffle_split(y, all_rows[trainval], val_frac, seed)
            raw.append((train, val, all_rows[test]))
        n_folds_used = int(n_folds)

    totals = y.sum(axis=0)
    folds: list[Fold] = []
    moves: list[dict[str, Any]] = []
    for k, (train, val, test) in enumerate(raw):
        train, val, test = list(train), list(val), list(test)
        for c in np.flatnonzero(totals >= min_train_positives):
            if y[train, c].any():
                continue
            for name, part in (("val", val), ("test", test)):
                pos = [i for i in part if y[i, c]]
                if pos:
                    part.remove(pos[0])
                    train.append(pos[0])
                    moves.append({"fold": k, "class": int(c), "row": int(pos[0]), "from": name})
                    break
        folds.append(Fold(*(np.sort(np.asarray(p, dtype=np.int64)) for p in (train, val, test))))
    return Splits(scheme=scheme, seed=seed, ratios=r, n_folds=n_folds_used, num_samples=n,
                  folds=tuple(folds), moves=tuple(moves))


def csv_fingerprint(csv_path: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"name", "sha256", "num_bytes"}`` identifying a CSV by its exact bytes."""
    p = Path(csv_path)
    return {"name": p.name, "sha256": file_sha256(p), "num_bytes": p.stat().st_size}


def _setting_tag(scheme: str, n_folds: int) -> str:
    return "holdout" if scheme == "holdout" else f"kfold{int(n_folds)}"


def _csv_key(csv_path: Path) -> str:
    """A file-name-safe key of the CSV's name: its stem, or the whole name when not ``.csv``.

    Characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``; when that changed the
    name, 6 hex digits of the name's SHA-1 are appended so that ``"a b.csv"`` and ``"a_b.csv"`` differ.
    """
    raw = csv_path.stem if csv_path.suffix.lower() == ".csv" else csv_path.name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", raw)
    if safe != raw:
        safe += "-" + hashlib.sha1(csv_path.name.encode("utf-8")).hexdigest()[:6]
    return safe


def default_splits_path(csv_path: str | os.PathLike[str], scheme: str = "holdout", seed: int = 0,
                        n_folds: int = 4) -> Path:
    """The split file of ``csv_path`` and a setting: ``splits_<csv stem>_<tag>_seed<seed>.json`` beside it.

    ``<tag>`` is ``holdout`` or ``kfold<n_folds>``. Example: ``data/odir/labels.csv``, 4-fold, seed 0
    -> ``data/odir/splits_labels_kfold4_seed0.json``.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    p = Path(csv_path)
    return p.parent / f"splits_{_csv_key(p)}_{_setting_tag(scheme, n_folds)}_seed{int(seed)}.json"


def save_splits(splits: Splits, csv_path: str | os.PathLike[str],
                path: str | os.PathLike[str] | None = None,
                label_columns: Sequence[str] | None = None) -> Path:
    """Write ``splits`` as JSON (atomically) with the fingerprint of ``csv_path``; returns the path.

    ``path`` defaults to :func:`default_splits_path` for the splits' setting; ``label_columns`` (the
    columns the splits were stratified on) is recorded for the reader.
    """
    out = default_splits_path(csv_path, splits.scheme, splits.seed, splits.n_folds) if path is None else Path(path)
    doc = {"format": FORMAT, "csv": csv_fingerprint(csv_path), **splits.to_json_dict()}
    if label_columns is not None:
        doc["label_columns"] = list(label_columns)
    atomic_write_text(out, json.dumps(doc, indent=1) + "\n")
    return out


def load_splits(path: str | os.PathLike[str], csv_path: str | os.PathLike[str]) -> Splits:
    """Read a split file and check it was made from ``csv_path`` (same bytes), else ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file not found: {path}")
    try:
        doc = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise ValueError(f"{path}: expected a JSON split file, got invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: expected format {FORMAT!r}, got {got!r}")
    want = csv_fingerprint(csv_path)
    have = doc.get("csv", {})
    if have.get("sha256") != want["sha256"]:
        same_name = have.get("name") == want["name"]
        what = (f"{csv_path} has changed since" if same_name
                else f"it was made from another CSV, {have.get('name')!r}, not from")
        raise SplitsMismatchError(
            f"{path}: expected splits of {csv_path} (sha256 {want['sha256'][:16]}..., "
            f"{want['num_bytes']} bytes), got splits of {have.get('name')!r} (sha256 "
            f"{str(have.get('sha256'))[:16]}..., {have.get('num_bytes')} bytes): {what} the splits "
            f"were made; to make new splits for this CSV, delete {path} (runs made with the old "
            f"splits cannot be resumed on the new ones)")
    n = int(doc["num_samples"])
    folds = []
    for k, f in enumerate(doc["folds"]):
        parts = [np.asarray(f[p], dtype=np.int64) for p in PARTS]
        joined = np.concatenate(parts)
        if joined.size != n or not np.array_equal(np.sort(joined), np.arange(n)):
            raise ValueError(f"{path}: fold {k} must cover rows 0..{n - 1} exactly once")
        folds.append(Fold(*parts))
    return Splits(scheme=doc["scheme"], seed=int(doc["seed"]), ratios=tuple(doc["ratios"]),  # type: ignore[arg-type]
                  n_folds=int(doc["n_folds"]), num_samples=n, folds=tuple(folds),
                  moves=tuple(doc.get("moves", ())))


def splits_for_csv(
    csv_path: str | os.PathLike[str],
    *,
    seed: int = 0,
    scheme: str = "holdout",
    ratios: Sequence[float] = (0.7, 0.1, 0.2),
    n_folds: int = 4,
    path: str | os.PathLike[str] | None = None,
    image_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    replace: bool = False,
) -> Splits:
    """Load the split file of ``csv_path`` if it exists with these settings, else make and save it.

    ``path`` defaults to :func:`default_splits_path` (keyed by the CSV's name and the setting).
    The splits are stratified on the label columns that :func:`~recipes.data.csv_dataset.read_label_csv`
    takes with ``image_column`` / ``label_columns`` / ``class_names`` (default: detected, the columns of
    0/1 values; metadata columns such as an age are never read as labels).

    A split file that exists but was made with other settings is refused (``ValueError``) rather
    than overwritten; pass another ``path`` to keep both. One made from other CSV bytes (the CSV
    changed) is refused with a :class:`SplitsMismatchError` naming the file to delete and the
    command that replaces it; ``replace=True`` (the command's ``--replace``) makes new splits and
    writes them over it (atomically).
    """
    from .csv_dataset import read_label_csv

    out = default_splits_path(csv_path, scheme, seed, n_folds) if path is None else Path(path)
    want = {"scheme": scheme, "seed": int(seed), "ratios": list(_check_ratios(ratios)),
            "n_folds": 1 if scheme == "holdout" else int(n_folds)}
    if out.is_file() and not replace:
        try:
            s = load_splits(out, csv_path)
        except SplitsMismatchError as exc:
            cmd = ["python", "-m", "recipes.data.splits", "--csv", str(csv_path), "--scheme", scheme,
                   "--seed", str(int(seed))]
            if scheme == "kfold":
                cmd += ["--n-folds", str(int(n_folds))]
            if tuple(want["ratios"]) != (0.7, 0.1, 0.2):
                cmd += ["--ratios", *map(str, want["ratios"])]
            if path is not None:
                cmd += ["--out", str(out)]
            if class_names is not None or label_columns is not None:
                cmd += ["--class-names", *(class_names if class_names is not None else label_columns)]
            cmd.append("--replace")
            raise SplitsMismatchError(f"{exc}, or replace it with: {shlex.join(cmd)}") from None
        if s.params() != want:
            raise ValueError(f"{out} holds splits made with {s.params()}, expected {want}; pass "
                             f"path= to write these elsewhere")
        return s
    table = read_label_csv(csv_path, image_column=image_column, label_columns=label_columns,
                           class_names=class_names)
    s = make_splits(table.targets, seed=seed, scheme=scheme, ratios=ratios, n_folds=n_folds)
    save_splits(s, csv_path, out, label_columns=table.class_names)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.data.splits",
                                description="Write stratified splits (splits_<csv>_<setting>_seed<k>.json) "
                                            "next to a labels CSV.")
    p.add_argument("--csv", required=True)
    p.add_argument("--scheme", choices=SCHEMES, default="holdout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=4)
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2))
    p.add_argument("--out", default=None,
                   help="default: splits_<csv stem>_<holdout|kfoldN>_seed<k>.json next to the CSV")
    p.add_argument("--class-names", nargs="+", default=None, metavar="COLUMN",
                   help="the label columns (default: every column of 0/1 values)")
    p.add_argument("--replace", action="store_true",
                   help="make new splits even if the file exists (e.g. the CSV changed)")
    a = p.parse_args(argv)
    s = splits_for_csv(a.csv, seed=a.seed, scheme=a.scheme, ratios=a.ratios, n_folds=a.n_folds,
                       path=a.out, class_names=a.class_names, replace=a.replace)
    out = a.out or default_splits_path(a.csv, a.scheme, a.seed, a.n_folds)
    print(f"splits: {out}")
    for k, f in enumerate(s.folds):
        print(f"fold {k}: train {len(f.train)}  val {len(f.val)}  test {len(f.test)}")
    return 0


if __name__ == "__main__":
    import sys

    try:
        raise SystemExit(main())
    except (ValueError, OSError) as exc:  # CSVDataError, SplitsMismatchError, DiskWriteError, not found
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
