"""Resize-once image cache (file writes through :mod:`rskd_loss.fileio`'s atomic writers, plus
:func:`atomic_copy`).

Fundus photographs come at 2-4k pixels with a wide black border around the circular field; decoding
and resizing them every epoch costs more than the network. ``build_cache`` does it once::

    python -m recipes.data.cache --src DIR --csv DIR/labels.csv --out DIR2 --size 288

For each image named in the CSV it crops the black border (a square centred on the field), resizes
so the short side is ``size`` (288 by default: the paper trains at 256 x 256, Sec. 3.1, and the
margin leaves room for the random crop), writes it under ``DIR2`` at the same relative path, then
copies the CSV to ``DIR2/<csv name>``. The result is read by ``MultiLabelCSVDataset(DIR2/labels.csv,
DIR2)`` exactly as the source was.

* Idempotent: an output that is newer than its source and was written with the same settings
  (``cache_meta.json``) is skipped; changed settings rebuild every file.
* Atomic: every file is written to a temporary file in the same folder, then ``os.replace``-d
  (:mod:`rskd_loss.fileio`), so an interrupted run never leaves a half-written image or CSV.
* Border crop: the field is the set of pixels whose grey level (PIL ``"L"``, ITU-R 601-2 luma) is
  above ``threshold`` (default 7, the tolerance of the widely copied "Ben's cropping" function
  ``crop_image_from_gray(img, tol=7)`` of the Kaggle APTOS 2019 kernels); a row/column counts as
  inside the field only if at least 2 and at least ``min_fraction`` (1 %) of its pixels are, so an
  isolated hot pixel or a small burnt-in caption does not widen the box (that function keeps any row
  with a single bright pixel). Unlike that function, an image with no field at all is an error,
  not a silent pass-through. The crop is the square of side ``max(field height, field width)``
  centred on the field; where it leaves the image (a field cut off at the top and bottom) it is
  padded with black, so the field stays round.
* Failures (undecodable image, no field) are collected; the run then raises listing the first few and
  the CSV is not written, so an incomplete cache cannot be mistaken for a complete one.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rskd_loss.fileio import DiskWriteError, atomic_path, atomic_write_bytes, atomic_write_text, file_sha256

__all__ = [
    "atomic_copy",
    "find_field_box",
    "crop_to_field",
    "resize_short_side",
    "CacheReport",
    "build_cache",
    "main",
    "DEFAULT_SIZE",
    "DEFAULT_THRESHOLD",
]

DEFAULT_SIZE = 288
DEFAULT_THRESHOLD = 7
DEFAULT_MIN_FRACTION = 0.01
FORMATS = {"png": ".png", "jpeg": ".jpg"}
META_NAME = "cache_meta.json"
CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------
# atomic copy (the other atomic writes are rskd_loss.fileio's)
# --------------------------------------------------------------------------------------------
def atomic_copy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Copy a file byte for byte, atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


# --------------------------------------------------------------------------------------------
# border crop and resize
# --------------------------------------------------------------------------------------------
def find_field_box(gray: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                   min_fraction: float = DEFAULT_MIN_FRACTION) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, bottom, right)`` (end-exclusive) of the bright field of a grey image.

    Raises ``ValueError`` when no row or column has ``min_fraction`` of its pixels above
    ``threshold`` (an all-black image).
    """
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {gray.shape}")
    mask = gray > threshold
    h, w = mask.shape
    rows = np.flatnonzero(mask.sum(axis=1) >= max(2.0, min_fraction * w))
    cols = np.flatnonzero(mask.sum(axis=0) >= max(2.0, min_fraction * h))
    if rows.size == 0 or cols.size == 0:
        raise ValueError(f"expected a bright field (grey level > {threshold}), got none: the image is "
                         f"black or nearly so (max grey level {int(gray.max()) if gray.size else 0})")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def crop_to_field(image: Any, threshold: float = DEFAULT_THRESHOLD,
                  min_fraction: float = DEFAULT_MIN_FRACTION) -> Any:
    """Crop a PIL RGB image to the black-padded square centred on its circular field."""
    gray = np.asarray(image.convert("L"))
    top, left, bottom, right = find_field_box(gray, threshold, min_fraction)
    side = max(bottom - top, right - left)
    cy2, cx2 = top + bottom, left + right  # twice the centre, to stay in integers
    x0 = (cx2 - side) // 2
    y0 = (cy2 - side) // 2
    # PIL fills the part of a crop box outside the image with zeros (black)
    return image.crop((x0, y0, x0 + side, y0 + side))


def resize_short_side(image: Any, size: int) -> Any:
    """Resize a PIL image so that its shorter side is ``size`` (aspect ratio kept; Lanczos)."""
    from PIL import Image

    w, h = image.size
    if min(w, h) == size:
        return image
    if w <= h:
        new = (size, max(1, round(h * size / w)))
    else:
        new = (max(1, round(w * size / h)), size)
    return image.resize(new, Image.Resampling.LANCZOS)


# --------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------
@dataclass
class CacheReport:
    """What :func:`build_cache` did."""

    out_dir: Path
    csv_path: Path
    written: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Job:
    src: str
    dst: str
    size: int
    fmt: str
    quality: int
    threshold: float
    min_fraction: float
    force: bool


def _process(job: _Job) -> tuple[str, str, str]:
    """Returns ``(status, src, message)`` with status ``written | skipped | failed``."""
    from PIL import Image

    src, dst = Path(job.src), Path(job.dst)
    try:
        if (not job.force and dst.is_file()
                and dst.stat().st_mtime_ns >= src.stat().st_mtime_ns):
            return "skipped", job.src, ""
        with Image.open(src) as im:
            im.load()
            rgb = im.convert("RGB")
        out = resize_short_side(crop_to_field(rgb, job.threshold, job.min_fraction), job.size)
        import io

        buf = io.BytesIO()
        if job.fmt == "png":
            out.save(buf, format="PNG", optimize=False)
        else:
            out.save(buf, format="JPEG", quality=job.quality, subsampling=0)
        atomic_write_bytes(dst, buf.getvalue())
        return "written", job.src, ""
    except DiskWriteError as exc:  # the same for every image: stop the build, say it once
        return f"unwritable:{exc.errno}", job.src, str(exc)
    except Exception as exc:  # collected and reported together at the end
        return "failed", job.src, f"{type(exc).__name__}: {exc}"


def _read_image_column(csv_path: Path, image_column: str | None) -> tuple[list[str], list[list[str]], list[str], int]:
    import csv
    import io

    text = csv_path.read_bytes().decode("utf-8-sig")
    rows = [r for r in csv.reader(io.StringIO(text, newline=""))]
    if not rows:
        raise ValueError(f"{csv_path}: expected a header line, got an empty file")
    header = [h.strip() for h in rows[0]]
    if image_column is None:
        pos = 0
    elif image_column in header:
        pos = header.index(image_column)
    else:
        raise ValueError(f"{csv_path}: expected an image column {image_column!r}, got columns {header}")
    ids = [r[pos].strip() for r in rows[1:] if r and any(c.strip() for c in r)]
    return header, rows, ids, pos


def build_cache(
    src_dir: str | os.PathLike[str],
    csv_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    size: int = DEFAULT_SIZE,
    fmt: str = "png",
    quality: int = 95,
    threshold: float = DEFAULT_THRESHOLD,
    min_fraction: float = DEFAULT_MIN_FRACTION,
    image_column: str | None = None,
    image_suffix: str = "",
    workers: int | None = None,
    progress: bool = True,
) -> CacheReport:
    """Crop, resize and re-save every image named in ``csv_path``; copy the CSV next to them.

    Args:
        src_dir: folder the CSV's image ids are relative to.
        csv_path: the labels CSV (first column = image id unless ``image_column``).
        out_dir: the cache folder (created); must differ from ``src_dir``.
        size: short side after resizing (default 288 for 256 training; see module doc).
        fmt: ``"png"`` (default, lossless) or ``"jpeg"``. With JPEG, a file name's ``.png`` /
            ``.jpeg`` / ... extension becomes ``.jpg`` and the CSV's image column is rewritten
            accordingly (every other cell is kept); with bare ids, use ``image_suffix=".jpg"`` when
            reading the cache.
        quality: JPEG quality (default 95).
        threshold, min_fraction: border detection, see the module doc (defaults 7 and 0.01).
        image_column, image_suffix: as in :class:`~recipes.data.csv_dataset.MultiLabelCSVDataset`.
        workers: processes (default ``min(4, cpu_count)``; ``0`` or ``1`` runs in this process).
        progress: print a progress count to stderr.

    Returns:
        A :class:`CacheReport`. Raises ``RuntimeError`` listing the first failures if any image
        failed (the CSV is then not written).
    """
    t0 = time.perf_counter()
    src_dir, csv_path, out_dir = Path(src_dir), Path(csv_path), Path(out_dir)
    _check_build_args(src_dir, csv_path, out_dir, size=size, fmt=fmt, quality=quality)
    header, rows, ids, pos = _read_image_column(csv_path, image_column)
    if len(set(ids)) != len(ids):
        raise ValueError(f"{csv_path}: expected unique image ids, got duplicates")

    settings = {"version": CACHE_VERSION, "size": size, "format": fmt,
                "quality": int(quality) if fmt == "jpeg" else None,
                "threshold": threshold, "min_fraction": min_fraction}
    meta_path = out_dir / META_NAME
    force = _settings_changed(meta_path, settings)
    jobs = [_Job(str(src_dir / (i + image_suffix)), str(out_dir / _out_name(i, fmt, image_suffix)), size,
                 fmt, int(quality), float(threshold), float(min_fraction), force) for i in ids]
    out_dir.mkdir(parents=True, exist_ok=True)
    if force and meta_path.is_file():
        meta_path.unlink()  # until this run completes, no file counts as up to date for the new settings
    report = CacheReport(out_dir=out_dir, csv_path=out_dir / csv_path.name)
    n_workers = min(4, os.cpu_count() or 1) if workers is None else int(workers)
    _run_jobs(jobs, n_workers, report, progress)
    report.seconds = time.perf_counter() - t0
    _raise_if_failed(report, len(jobs))

    _write_cache_csv(csv_path, report.csv_path, rows, ids, pos, fmt=fmt, image_suffix=image_suffix)
    _write_meta(meta_path, settings, csv_path, len(ids))
    return report


def _check_build_args(src_dir: Path, csv_path: Path, out_dir: Path, *, size: int, fmt: str,
                      quality: int) -> None:
    """Refuse bad settings, a missing source folder or CSV, and a cache folder equal to the source."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {tuple(FORMATS)}, got {fmt!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality!r}")
    if not src_dir.is_dir():
        raise FileNotFoundError(f"source image folder not found: {src_dir}")
    if not csv_path.is_file():
        raise FileNotFoundError(f"labels CSV not found: {csv_path}")
    if out_dir.resolve() == src_dir.resolve():
        raise ValueError(f"out_dir must differ from src_dir (the cache never overwrites its source), "
                         f"got {out_dir}")


def _settings_changed(meta_path: Path, settings: dict[str, Any]) -> bool:
    """``True`` (rebuild every file) unless ``meta_path`` exists and records exactly ``settings``."""
    force = True
    if meta_path.is_file():
        try:
            force = json.loads(meta_path.read_text("utf-8")).get("settings") != settings
        except (ValueError, OSError):
            force = True
    return force


def _out_name(image_id: str, fmt: str, image_suffix: str) -> str:
    """The cached file's path relative to the cache folder (a ``.jpg`` extension with JPEG)."""
    name = image_id + image_suffix
    if fmt == "jpeg" and not image_suffix:
        stem, ext = os.path.splitext(name)
        if ext.lower() in (".png", ".jpeg", ".jpg", ".tif", ".tiff", ".bmp"):
            name = stem + ".jpg"
    elif fmt == "jpeg" and image_suffix:
        name = image_id + ".jpg"
    return name


def _results(jobs: Sequence[_Job], n_workers: int) -> Iterable[tuple[str, str, str]]:
    """:func:`_process` of every job, in this process or (in any order) in ``n_workers`` processes."""
    if n_workers <= 1 or len(jobs) < 2:
        yield from map(_process, jobs)
        return
    ctx = multiprocessing.get_context("spawn" if sys.platform == "darwin" else None)
    with ctx.Pool(n_workers) as pool:
        yield from pool.imap_unordered(_process, jobs, chunksize=max(1, len(jobs) // (n_workers * 16)))


def _run_jobs(jobs: Sequence[_Job], n_workers: int, report: CacheReport, progress: bool) -> None:
    """Run every job, counting the outcomes into ``report``; an unwritable cache raises at once."""
    step = max(1, len(jobs) // 20)
    for k, (status, src, msg) in enumerate(_results(jobs, n_workers), 1):
        if status == "written":
            report.written += 1
        elif status == "skipped":
            report.skipped += 1
        elif status.startswith("unwritable:"):
            raise DiskWriteError(int(status.split(":", 1)[1]), msg, src)
        else:
            report.failed.append((src, msg))
        if progress and (k % step == 0 or k == len(jobs)):
            print(f"[cache] {k}/{len(jobs)} (written {report.written}, up to date {report.skipped}, "
                  f"failed {len(report.failed)})", file=sys.stderr, flush=True)


def _raise_if_failed(report: CacheReport, num_jobs: int) -> None:
    """Raise ``RuntimeError`` listing the first failures, if any image failed."""
    if report.failed:
        listed = "; ".join(f"{s}: {m}" for s, m in report.failed[:5])
        more = f" (and {len(report.failed) - 5} more)" if len(report.failed) > 5 else ""
        raise RuntimeError(f"{len(report.failed)} of {num_jobs} images could not be cached, the CSV was "
                           f"not written: {listed}{more}")


def _write_cache_csv(csv_path: Path, dst: Path, rows: list[list[str]], ids: list[str], pos: int, *,
                     fmt: str, image_suffix: str) -> None:
    """Copy the CSV to ``dst``, rewriting its image column where JPEG renamed the files."""
    renamed = [_out_name(i, fmt, image_suffix) != i + image_suffix for i in ids]
    if fmt == "jpeg" and not image_suffix and any(renamed):
        import csv
        import io

        buf = io.StringIO(newline="")
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(rows[0])
        it = iter(ids)
        for r in rows[1:]:
            if r and any(c.strip() for c in r):
                r = list(r)
                r[pos] = _out_name(next(it), fmt, image_suffix)
            w.writerow(r)
        atomic_write_text(dst, buf.getvalue())
    else:
        atomic_copy(csv_path, dst)


def _write_meta(meta_path: Path, settings: dict[str, Any], csv_path: Path, num_images: int) -> None:
    """Write ``cache_meta.json``: the settings and source CSV of a completed run."""
    atomic_write_text(meta_path, json.dumps({"settings": settings, "source_csv": str(csv_path),
                                             "source_csv_sha256": file_sha256(csv_path),
                                             "images": num_images}, indent=2) + "\n")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m recipes.data.cache", description=__doc__.split("\n")[0])
    p.add_argument("--src", required=True, help="folder the CSV's image ids are relative to")
    p.add_argument("--csv", required=True, help="labels CSV (path as given)")
    p.add_argument("--out", required=True, help="cache folder (images + a copy of the CSV)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="short side in pixels (default 288)")
    p.add_argument("--format", choices=tuple(FORMATS), default="png")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="grey level above which a pixel is in the field (default 7)")
    p.add_argument("--image-column", default=None)
    p.add_argument("--image-suffix", default="", help="appended to each id, e.g. .png for RFMiD")
    p.add_argument("--workers", type=int, default=None, help="processes (default min(4, cpus))")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    rep = build_cache(args.src, args.csv, args.out, size=args.size, fmt=args.format,
                      quality=args.quality, threshold=args.threshold, image_column=args.image_column,
                      image_suffix=args.image_suffix, workers=args.workers)
    print(f"cache: {rep.written} written, {rep.skipped} up to date, in {rep.seconds:.1f} s -> "
          f"{rep.out_dir} (CSV {rep.csv_path})")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (DiskWriteError, FileNotFoundError, ValueError) as exc:  # one line that says what to fix
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
