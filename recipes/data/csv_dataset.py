"""The one data path of the recipes: a folder of images plus a multi-label CSV.

Every data set (the synthetic benchmark, RFMiD, a hospital's own export) is read by
:class:`MultiLabelCSVDataset`; nothing downstream knows which one it got.

CSV layout::

    image,DR,ARMD,MH          <- header: the image column, then one 0/1 column per class
    1.png,1,0,0
    2.png,0,0,1

Decisions where the brief was silent (each one documented where it applies):

* The file is read as UTF-8; a leading byte-order mark (Excel's "CSV UTF-8") is dropped, and header
  cells are stripped of surrounding spaces (``" DR"`` is the class ``DR``).
* With neither ``label_columns`` nor ``class_names`` given, the label columns are detected: every
  column other than the image column whose values are *all* 0 or 1 is a label; every other column
  (a patient's age, a free-text note, a 0/1/2 quality grade) is left out. A column that is 0/1 in
  all but at most 1 % of its rows looks like a label column with a bad value and is refused, naming
  the cell, rather than dropped with the whole class. Nothing is left out silently:
  :attr:`LabelTable.skipped_columns` lists them with the first offending cell, and
  :func:`label_columns_message` is the one line the recipes print ("labels: took 16 column(s) ...;
  skipped 2 ..."). A 0/1 metadata column (sex as 0/1, a left-eye
  flag) cannot be told from a label: choose the labels explicitly then.
* Explicit ``class_names`` (the recipes' ``data.class_names``) or ``label_columns`` choose the label
  columns; every other column is ignored, and a named column with a value other than 0/1 is an error
  naming the file, CSV line, column and value.
* A label cell is 0 or 1 after stripping spaces; ``0.0`` / ``1.0`` (what pandas writes for an integer
  column that once held a NaN) are read as 0 / 1. Anything else (``2``, ``-1``, empty, ``x``,
  ``true``) is refused with the file, CSV line (1-based, the header is line 1) and column.
* Blank lines are skipped; a row with the wrong number of cells is refused.
* A class with no positive among the selected rows is common (a tail class of an RFMiD training
  split), so by default it raises an :class:`EmptyClassWarning`; ``empty_classes="error"`` makes it a
  :class:`CSVDataError`, ``"ignore"`` silences it.
* ``indices`` selects rows (0-based data-row numbers, e.g. one part of a split file);
  ``.targets`` / ``.class_counts`` / ``.image_ids`` describe the selected rows, and ``__getitem__``
  returns the *global* row number as its third element, so a teacher-logit bank computed once over
  the whole CSV can be indexed with it whatever split is being trained.
"""
from __future__ import annotations

import csv
import io
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from rskd_loss.errors import RSKDError

__all__ = [
    "CSVDataError",
    "BadImageError",
    "EmptyClassWarning",
    "LabelTable",
    "SkippedColumn",
    "read_label_csv",
    "detect_label_columns",
    "label_columns_message",
    "load_rgb_image",
    "MultiLabelCSVDataset",
    "BadImage",
    "find_bad_images",
    "EMPTY_CLASS_POLICIES",
]

EMPTY_CLASS_POLICIES = ("warn", "error", "ignore")
_MAX_LISTED = 5  # how many offending items an error message lists before "and N more"


class CSVDataError(RSKDError, ValueError):
    """Bad data in a labels CSV or its image folder; the message names file, line and column."""


class BadImageError(RSKDError, OSError):
    """An image file that exists but cannot be decoded (truncated, not an image)."""


class EmptyClassWarning(UserWarning):
    """A label column has no positive among the selected rows."""


def _where(path: Path, line: int | None = None, column: str | None = None) -> str:
    out = str(path)
    if line is not None:
        out += f", line {line}"
    if column is not None:
        out += f", column {column!r}"
    return out


def _parse_label(cell: str) -> int | None:
    """Return 0 or 1 for a valid label cell, ``None`` for anything else."""
    s = cell.strip()
    if s in ("0", "1"):
        return int(s)
    try:
        v = float(s)
    except ValueError:
        return None
    if math.isfinite(v) and v in (0.0, 1.0) and s.lower() not in ("nan", "inf", "-inf"):
        return int(v)
    return None


class SkippedColumn(NamedTuple):
    """A column that automatic detection did not take as a label, and why."""

    name: str
    bad_cells: int      # data rows whose cell is not 0/1
    first_value: str    # the first such cell, as written
    first_line: int     # its CSV line (1-based, the header is line 1)

    def describe(self) -> str:
        return f"{self.name!r} ({self.first_value!r} on line {self.first_line}" + (
            f", {self.bad_cells} non-0/1 cells)" if self.bad_cells > 1 else ")")


@dataclass(frozen=True)
class LabelTable:
    """The parsed content of a labels CSV (no image is touched).

    Attributes:
        path: the CSV file.
        image_column: name of the image-id column.
        class_names: label column names, in the order of ``targets``' columns.
        image_ids: one id per data row, as written in the CSV (stripped).
        targets: ``(N, C)`` uint8 array of 0/1 (read-only).
        line_numbers: 1-based CSV line of each data row (the header is line 1).
        skipped_columns: columns that automatic detection left out (not 0/1), in header order;
            empty when the label columns were chosen explicitly.
        detected: ``True`` when the label columns were detected (neither ``label_columns`` nor
            ``class_names`` given).
    """

    path: Path
    image_column: str
    class_names: tuple[str, ...]
    image_ids: tuple[str, ...]
    targets: np.ndarray
    line_numbers: tuple[int, ...]
    skipped_columns: tuple[SkippedColumn, ...] = ()
    detected: bool = False


def label_columns_message(table: LabelTable, limit: int = 20) -> str:
    """One line saying which columns ``table`` took as labels and which it skipped (for a run's log).

    Example: ``labels.csv: took 3 label column(s) (every column of 0/1 values): ['DR', 'ARMD', 'MH'];
    skipped 1 column(s) with other values: 'age' ('63' on line 2); set data.class_names to choose
    the label columns``.
    """
    names = list(table.class_names)
    shown = names if len(names) <= limit else names[:limit] + [f"... {len(names) - limit} more"]
    how = "every column of 0/1 values" if table.detected else "as named"
    out = f"{table.path.name}: took {len(names)} label column(s) ({how}): {shown}"
    if table.skipped_columns:
        sk = [c.describe() for c in table.skipped_columns]
        if len(sk) > limit:
            sk = sk[:limit] + [f"... {len(sk) - limit} more"]
        out += (f"; skipped {len(table.skipped_columns)} column(s) with other values: {', '.join(sk)}")
    if table.detected:
        out += "; set data.class_names (class_names=) to choose the label columns"
    return out


def detect_label_columns(
    csv_path: str | os.PathLike[str], *, image_column: str | None = None
) -> tuple[list[str], list[SkippedColumn]]:
    """``(taken, skipped)``: the columns of ``csv_path`` that hold only 0/1, and the others.

    The image column (default the first) is in neither list. See :func:`read_label_csv`.
    """
    table = read_label_csv(csv_path, image_column=image_column)
    return list(table.class_names), list(table.skipped_columns)


def read_label_csv(
    csv_path: str | os.PathLike[str],
    *,
    image_column: str | None = None,
    label_columns: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> LabelTable:
    """Read and check a multi-label CSV without opening any image.

    Args:
        csv_path: the CSV file (UTF-8, optional BOM).
        image_column: the image-id column; default: the first column.
        label_columns: the label columns, in this order; default: detected, every column but the
            image column whose values are all 0/1 (the others are listed in ``skipped_columns``).
        class_names: the expected classes; each must be a column (a missing one is an error naming
            it) and they become the label columns in this order. If ``label_columns`` is also given
            the two must be equal.

    Raises:
        FileNotFoundError: no such CSV.
        CSVDataError: empty file, duplicated or missing column, no label column (none detected), a
            row of the wrong length, an empty or duplicated image id, a named label that is not 0/1.
    """
    path = Path(csv_path)
    reader, header, seen = _read_header(path)
    image_column = _choose_image_column(path, header, seen, image_column)
    candidates, detected = _choose_label_candidates(path, header, seen, image_column, label_columns,
                                                    class_names)
    ids, lines, rows, bad = _parse_rows(path, reader, header, seen, image_column, candidates, detected)
    _refuse_nearly_label_columns(path, candidates, bad, len(rows))
    keep, skipped = _keep_label_columns(path, image_column, candidates, bad)
    label_columns = [candidates[j] for j in keep]
    targets = np.asarray([[r[j] for j in keep] for r in rows], dtype=np.uint8)
    targets = targets.reshape(len(rows), len(label_columns))
    targets.setflags(write=False)
    return LabelTable(path=path, image_column=image_column, class_names=tuple(label_columns),
                      image_ids=tuple(ids), targets=targets, line_numbers=tuple(lines),
                      skipped_columns=skipped, detected=detected)


def _read_header(path: Path) -> tuple[Any, list[str], dict[str, int]]:
    """Open ``path`` and read its header: ``(reader positioned on the first data row, header, seen)``.

    ``header`` holds the stripped column names, ``seen`` maps each name to its 0-based position;
    an empty or duplicated name is refused.
    """
    if not path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {path}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # drops a UTF-8 byte-order mark if there is one
    except UnicodeDecodeError as exc:
        raise CSVDataError(f"{path}: expected a UTF-8 text file, got undecodable bytes ({exc})") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise CSVDataError(f"{path}: expected a header line, got an empty file") from None
    header = [h.strip() for h in header]
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if not name:
            raise CSVDataError(f"{_where(path, 1)}: expected a name for every column, got an empty name "
                               f"for column {i + 1}")
        if name in seen:
            raise CSVDataError(f"{_where(path, 1, name)}: expected unique column names, got {name!r} "
                               f"twice (columns {seen[name] + 1} and {i + 1})")
        seen[name] = i
    return reader, header, seen


def _choose_image_column(path: Path, header: list[str], seen: dict[str, int],
                         image_column: str | None) -> str:
    """The image-id column: ``image_column`` if it is in the header, else (``None``) the first."""
    if image_column is None:
        return header[0]
    if image_column not in seen:
        raise CSVDataError(f"{_where(path, 1)}: expected an image column {image_column!r}, "
                           f"got columns {header}")
    return image_column


def _choose_label_candidates(
    path: Path,
    header: list[str],
    seen: dict[str, int],
    image_column: str,
    label_columns: Sequence[str] | None,
    class_names: Sequence[str] | None,
) -> tuple[list[str], bool]:
    """``(candidates, detected)``: the columns to read as labels, and whether they are to be detected.

    Detected (neither ``label_columns`` nor ``class_names`` given): every column but the image
    column, each kept only if all its values are 0/1. Otherwise the named columns, checked against
    the header.
    """
    if class_names is not None:
        wanted = list(class_names)
        if label_columns is not None and list(label_columns) != wanted:
            raise ValueError(f"label_columns and class_names must agree when both are given, got "
                             f"label_columns={list(label_columns)} and class_names={wanted}")
        label_columns = wanted
    detected = label_columns is None
    candidates = [h for h in header if h != image_column] if detected else list(label_columns)
    if not detected:
        missing = [c for c in candidates if c not in seen]
        if missing:
            raise CSVDataError(f"{_where(path, 1)}: expected label column(s) {missing}, not found in "
                               f"the header {header}")
        if image_column in candidates:
            raise CSVDataError(f"{_where(path, 1, image_column)}: the image column cannot also be a "
                               f"label column")
        dup = sorted({c for c in candidates if candidates.count(c) > 1})
        if dup:
            raise ValueError(f"label columns must be unique, got {dup} more than once")
    if not candidates:
        raise CSVDataError(f"{path}: expected at least one label column after the image column "
                           f"{image_column!r}, got the header {header}")
    return candidates, detected


def _parse_rows(
    path: Path,
    reader: Any,
    header: list[str],
    seen: dict[str, int],
    image_column: str,
    candidates: Sequence[str],
    detected: bool,
) -> tuple[list[str], list[int], list[list[int | None]], list[list[Any]]]:
    """Read the data rows: ``(image ids, CSV lines, label rows, bad)``.

    A label row holds one 0/1 (or ``None`` for a non-0/1 cell of a detected column) per candidate;
    ``bad`` holds, per candidate column, ``[non-0/1 count, first bad value, its line]``. A non-0/1
    cell of a named label column is an error.
    """
    img_pos = seen[image_column]
    pos = [seen[c] for c in candidates]
    ids: list[str] = []
    lines: list[int] = []
    rows: list[list[int | None]] = []
    first_line_of: dict[str, int] = {}
    # per candidate column: [non-0/1 count, first bad value, its line]
    bad: list[list[Any]] = [[0, "", 0] for _ in candidates]
    for cells in reader:
        line = reader.line_num
        if not cells or all(not c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise CSVDataError(f"{_where(path, line)}: expected {len(header)} cells (as in the header), "
                               f"got {len(cells)}")
        image_id = cells[img_pos].strip()
        if not image_id:
            raise CSVDataError(f"{_where(path, line, image_column)}: expected an image id, got an "
                               f"empty cell")
        if image_id in first_line_of:
            raise CSVDataError(f"{_where(path, line, image_column)}: expected unique image ids, got "
                               f"{image_id!r} again (first on line {first_line_of[image_id]})")
        first_line_of[image_id] = line
        row: list[int | None] = []
        for j, (c, p) in enumerate(zip(candidates, pos)):
            v = _parse_label(cells[p])
            if v is None:
                if not detected:
                    raise CSVDataError(f"{_where(path, line, c)}: expected a label 0 or 1, got "
                                       f"{cells[p]!r} (the column is named as a label column)")
                if bad[j][0] == 0:
                    bad[j][1], bad[j][2] = cells[p], line
                bad[j][0] += 1
            row.append(v)
        ids.append(image_id)
        lines.append(line)
        rows.append(row)
    return ids, lines, rows, bad


def _keep_label_columns(path: Path, image_column: str, candidates: Sequence[str],
                        bad: Sequence[Sequence[Any]]) -> tuple[list[int], tuple[SkippedColumn, ...]]:
    """``(keep, skipped)``: positions in ``candidates`` of the all-0/1 columns, and the others.

    Refuses a table where no candidate column holds only 0/1.
    """
    keep = [j for j in range(len(candidates)) if bad[j][0] == 0]
    skipped = tuple(SkippedColumn(candidates[j], bad[j][0], bad[j][1], bad[j][2])
                    for j in range(len(candidates)) if bad[j][0])
    if not keep:
        listed = ", ".join(c.describe() for c in skipped[:_MAX_LISTED])
        raise CSVDataError(f"{path}: expected at least one label column holding only 0/1 besides the "
                           f"image column {image_column!r}, got none: {listed}; name the label columns "
                           f"with class_names= (data.class_names) to see the first bad cell of each")
    return keep, skipped


#: a detected column with at most this share of non-0/1 cells (and at least one) is a label column
#: with bad values, not metadata: refused rather than dropped (below 100 rows, no column qualifies)
NEARLY_LABEL_SHARE = 0.01


def _refuse_nearly_label_columns(path: Path, candidates: Sequence[str], bad: Sequence[Sequence[Any]],
                                 num_rows: int) -> None:
    for name, (count, value, line) in zip(candidates, bad):
        if 0 < count <= NEARLY_LABEL_SHARE * num_rows:
            raise CSVDataError(f"{_where(path, line, name)}: expected a label 0 or 1, got {value!r}: the "
                               f"column is 0/1 in all but {count} of {num_rows} rows, so it looks like a "
                               f"label column with a bad value; fix the value, or name the label columns "
                               f"with data.class_names (class_names=) to leave this column out")


def load_rgb_image(path: str | os.PathLike[str]) -> Any:
    """Decode an image file, fully, and return it as an RGB ``PIL.Image``.

    Decoded with mmcv's ``imread`` (OpenCV; the ``mmcv-lite`` distribution of the recipes extra) when
    it is installed, else with PIL: on 2 CPU cores mmcv decoded a 64 px PNG 1.6x and a 2048 px JPEG
    1.9x faster than PIL (``recipes/benchmark/image_decode.py``). Raises :class:`BadImageError`
    naming the file if it is truncated or not an image, with either decoder (PIL's
    ``LOAD_TRUNCATED_IMAGES`` global is left alone, so a truncated file always fails here).
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    if _mmcv_imread is not None:
        import cv2

        try:
            array = _mmcv_imread(os.fspath(path), channel_order="rgb")
        except cv2.error as exc:  # OpenCV gave an empty image to a colour conversion
            raise BadImageError(f"cannot decode image {path}: not an image, or truncated") from exc
        if array is None or array.ndim not in (2, 3):
            raise BadImageError(f"cannot decode image {path}: not an image, or truncated")
        return Image.fromarray(array).convert("RGB")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(f"cannot decode image {path}: {exc}") from exc


def _find_mmcv_imread():
    try:
        import cv2

        cv2.setLogLevel(0) if hasattr(cv2, "setLogLevel") else None  # no libpng chatter on bad files
        from mmcv import imread
    except ImportError:
        return None
    return imread


_mmcv_imread = _find_mmcv_imread()


class MultiLabelCSVDataset(Dataset):
    """A multi-label image data set read from a folder of images and a labels CSV.

    Everything that can be checked without decoding pixels is checked at construction: the CSV
    (see :func:`read_label_csv`), that every image file exists (the first few missing ones are
    listed), and classes without any positive (see ``empty_classes``). A file that exists but cannot
    be decoded is reported when it is read, by :meth:`__getitem__`, naming the file.

    Args:
        csv_path: the labels CSV.
        image_dir: the folder the image ids are relative to.
        image_column: image-id column; default the first column.
        label_columns: label columns; default: detected (every other column holding only 0/1;
            the rest are listed in ``skipped_columns``).
        class_names: expected class list (missing column -> error naming it); see
            :func:`read_label_csv`.
        transform: called on the RGB ``PIL.Image``; default ``None`` returns the PIL image.
        image_suffix: appended to each id to form the file name, e.g. ``".png"`` when the CSV holds
            bare ids (RFMiD); default ``""`` (the CSV holds file names).
        indices: 0-based data rows to keep (e.g. a split); default all rows.
        empty_classes: ``"warn"`` (default) | ``"error"`` | ``"ignore"`` for a class with no
            positive among the kept rows.
        check_images: check at construction that every image file exists (default ``True``).

    Attributes:
        class_names (tuple[str, ...]), image_ids (tuple[str, ...]), image_paths (tuple[Path, ...]),
        targets (``(N, C)`` uint8 numpy, read-only), class_counts (``(C,)`` int64 numpy),
        indices (``(N,)`` int64 numpy of global row numbers), num_classes.

    Shape:
        ``dataset[i]`` returns ``(image, target, index)``: ``image`` as returned by ``transform``
        (e.g. a float tensor ``(3, H, W)``), ``target`` float32 tensor ``(C,)``, ``index`` the int
        global CSV row number (0-based, header excluded).

    Example::

        >>> import tempfile, pathlib
        >>> from PIL import Image
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> Image.new("RGB", (8, 8)).save(d / "a.png")
        >>> _ = (d / "labels.csv").write_text("image,DR,AMD\\na.png,1,0\\n")
        >>> ds = MultiLabelCSVDataset(d / "labels.csv", d, empty_classes="ignore")
        >>> ds.class_names, ds.targets.tolist(), ds[0][1].tolist(), ds[0][2]
        (('DR', 'AMD'), [[1, 0]], [1.0, 0.0], 0)
    """

    def __init__(
        self,
        csv_path: str | os.PathLike[str],
        image_dir: str | os.PathLike[str],
        image_column: str | None = None,
        label_columns: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
        transform: Callable[[Any], Any] | None = None,
        image_suffix: str = "",
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        empty_classes: str = "warn",
        check_images: bool = True,
    ) -> None:
        if empty_classes not in EMPTY_CLASS_POLICIES:
            raise ValueError(f"empty_classes must be one of {EMPTY_CLASS_POLICIES}, got {empty_classes!r}")
        if not isinstance(image_suffix, str):
            raise TypeError(f"image_suffix must be a str, got {type(image_suffix).__name__}")
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable or None, got {type(transform).__name__}")
        table = read_label_csv(csv_path, image_column=image_column, label_columns=label_columns,
                               class_names=class_names)
        self.csv_path = table.path
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_dir} (for {table.path})")
        self.image_column = table.image_column
        self.class_names: tuple[str, ...] = table.class_names
        self.skipped_columns: tuple[SkippedColumn, ...] = table.skipped_columns
        self.label_columns_message: str = label_columns_message(table)
        self.image_suffix = image_suffix
        self.transform = transform
        n_total = len(table.image_ids)

        if indices is None:
            idx = np.arange(n_total, dtype=np.int64)
        else:
            idx = _as_indices(indices, n_total, table.path)
        idx.setflags(write=False)
        self.indices: np.ndarray = idx
        self.num_rows_total = n_total
        self.image_ids: tuple[str, ...] = tuple(table.image_ids[i] for i in idx)
        self.line_numbers: tuple[int, ...] = tuple(table.line_numbers[i] for i in idx)
        self.image_paths: tuple[Path, ...] = tuple(self.image_dir / (i + image_suffix)
                                                    for i in self.image_ids)
        targets = np.ascontiguousarray(table.targets[idx])
        targets.setflags(write=False)
        self.targets: np.ndarray = targets
        counts = targets.sum(axis=0, dtype=np.int64)
        counts.setflags(write=False)
        self.class_counts: np.ndarray = counts

        if check_images:
            self._check_images_exist()
        self._check_empty_classes(empty_classes)

    # -- construction-time checks -------------------------------------------------------------
    def _check_images_exist(self) -> None:
        missing = [(line, p) for line, p in zip(self.line_numbers, self.image_paths) if not p.is_file()]
        if missing:
            listed = "; ".join(f"line {line}: {p}" for line, p in missing[:_MAX_LISTED])
            more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
            raise CSVDataError(
                f"{_where(self.csv_path, column=self.image_column)}: expected every image to exist in "
                f"{self.image_dir} (suffix {self.image_suffix!r}), got {len(missing)} missing: "
                f"{listed}{more}")

    def _check_empty_classes(self, policy: str) -> None:
        if policy == "ignore" or len(self.class_names) == 0:
            return
        empty = [c for c, n in zip(self.class_names, self.class_counts) if n == 0]
        if not empty:
            return
        msg = (f"{self.csv_path}: expected at least one positive per label column among the "
               f"{len(self)} selected rows, got none for column(s) {empty}")
        if policy == "error":
            raise CSVDataError(msg)
        warnings.warn(msg + " (empty_classes='error' makes this an error)", EmptyClassWarning,
                      stacklevel=3)

    # -- Dataset protocol ---------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def targets_tensor(self) -> torch.Tensor:
        """``targets`` as a new ``(N, C)`` uint8 tensor (a copy; the dataset's array is untouched)."""
        return torch.from_numpy(self.targets.copy())

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor, int]:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(i).__name__}")
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"index {int(i)} out of range for a data set of {n} images")
        i = int(i) % n
        path = self.image_paths[i]
        try:
            image = load_rgb_image(path)
        except (BadImageError, FileNotFoundError) as exc:
            image = self._on_bad_image(i, path, exc)
        if self.transform is not None:
            image = self.transform(image)
        target = torch.from_numpy(self.targets[i].astype(np.float32))
        return image, target, int(self.indices[i])

    def _on_bad_image(self, i: int, path: Path, exc: Exception) -> Any:
        """Hook for an unreadable image: raises, naming the file and its CSV line.

        A later ``skip_bad_images`` option (substitute another sample and log it) belongs here;
        it is deliberately not built yet.
        """
        raise BadImageError(f"{path} (from {_where(self.csv_path, self.line_numbers[i], self.image_column)})"
                            f": {exc}") from exc

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(csv={str(self.csv_path)!r}, images={len(self)}, "
                f"classes={self.num_classes})")


class BadImage(NamedTuple):
    """An image that a run cannot read: its data row, CSV line, file and the reason."""

    row: int
    line: int
    path: Path
    reason: str


class _Probe(Dataset):
    def __init__(self, dataset: MultiLabelCSVDataset) -> None:
        self.paths = dataset.image_paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, str]:
        try:
            load_rgb_image(self.paths[i])
        except FileNotFoundError:
            return i, "missing"
        except BadImageError as exc:
            return i, f"undecodable: {exc}"
        return i, ""


def find_bad_images(dataset: MultiLabelCSVDataset, num_workers: int = 0) -> list[BadImage]:
    """Every image of ``dataset`` that is missing or cannot be decoded (each file is decoded once).

    For ``data.skip_bad_images`` of the recipes: build the dataset with ``check_images=False``, find
    the bad rows here, and leave them out explicitly, with their count reported, instead of failing
    at 3 a.m. in the middle of an epoch. ``num_workers`` > 0 decodes in that many processes.
    """
    from torch.utils.data import DataLoader

    bad = []
    loader = DataLoader(_Probe(dataset), batch_size=None, num_workers=num_workers, generator=torch.Generator())
    for i, reason in loader:
        if reason:
            bad.append(BadImage(int(dataset.indices[i]), dataset.line_numbers[i], dataset.image_paths[i], reason))
    return bad


def _as_indices(indices: Sequence[int] | np.ndarray, n_total: int, path: Path) -> np.ndarray:
    arr = np.asarray(indices)
    if arr.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"indices must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = arr[(arr < 0) | (arr >= n_total)]
    if bad.size:
        raise ValueError(f"indices must be in [0, {n_total}) (data rows of {path}), got {int(bad[0])}")
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"indices must be unique, got {int(uniq[counts > 1][0])} more than once")
    return arr.copy()
