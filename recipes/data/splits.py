"""Multi-label stratified train / val / test splits, saved next to the data as ``splits.json``.

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

The JSON file records a fingerprint of the CSV it was made from (SHA-256 of its bytes and its row
count); :func:`load_splits` refuses a split file made from another CSV.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

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


def default_splits_path(csv_path: str | os.PathLike[str]) -> Path:
    """``splits.json`` in the CSV's folder."""
    return Path(csv_path).parent / "splits.json"


def save_splits(splits: Splits, csv_path: str | os.PathLike[str],
                path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``splits`` as JSON (atomically) with the fingerprint of ``csv_path``; returns the path."""
    out = default_splits_path(csv_path) if path is None else Path(path)
    doc = {"format": FORMAT, "csv": csv_fingerprint(csv_path), **splits.to_json_dict()}
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
        raise ValueError(f"{path} was made from another CSV: expected the fingerprint of {csv_path} "
                         f"(sha256 {want['sha256'][:16]}...), got {have.get('name')!r} (sha256 "
                         f"{str(have.get('sha256'))[:16]}...); make new splits for this CSV")
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
) -> Splits:
    """Load the split file of ``csv_path`` if it exists with these settings, else make and save it.

    A split file that exists but was made with other settings is refused (``ValueError``) rather
    than overwritten; pass another ``path`` to keep both.
    """
    from .csv_dataset import read_label_csv

    out = default_splits_path(csv_path) if path is None else Path(path)
    want = {"scheme": scheme, "seed": int(seed), "ratios": list(_check_ratios(ratios)),
            "n_folds": 1 if scheme == "holdout" else int(n_folds)}
    if out.is_file():
        s = load_splits(out, csv_path)
        if s.params() != want:
            raise ValueError(f"{out} holds splits made with {s.params()}, expected {want}; pass "
                             f"path= to write these elsewhere")
        return s
    table = read_label_csv(csv_path, image_column=image_column, label_columns=label_columns)
    s = make_splits(table.targets, seed=seed, scheme=scheme, ratios=ratios, n_folds=n_folds)
    save_splits(s, csv_path, out)
    return s


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recipes.data.splits",
                                description="Write stratified splits.json next to a labels CSV.")
    p.add_argument("--csv", required=True)
    p.add_argument("--scheme", choices=SCHEMES, default="holdout")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-folds", type=int, default=4)
    p.add_argument("--ratios", type=float, nargs=3, default=(0.7, 0.1, 0.2))
    p.add_argument("--out", default=None, help="default: splits.json next to the CSV")
    a = p.parse_args(argv)
    s = splits_for_csv(a.csv, seed=a.seed, scheme=a.scheme, ratios=a.ratios, n_folds=a.n_folds,
                       path=a.out)
    for k, f in enumerate(s.folds):
        print(f"fold {k}: train {len(f.train)}  val {len(f.val)}  test {len(f.test)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
