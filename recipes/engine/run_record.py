"""A finished run's record: everything its results rest on, small enough to commit.

The run folder's checkpoints are far too big for a repository; the record is what a sweep's tables,
figures and evidence are recomputed from once they are gone (``python -m recipes.table3 --collect-only
--from-records``). Two files, written atomically by :func:`write_record` before ``result.json`` (so a
finished run always has its record):

* ``record.npz`` (compressed): ``classes``; per part (``test``, ``val``) ``<part>_logits`` as float32 (as
  ``predictions.npz``: float16 was tried and merged close logits into ties, 294 distinct test logits of a
  class into 121 in a 2-epoch demo run, moving pooled APs by up to 0.7 points), ``<part>_targets`` as uint8
  and ``<part>_rows`` (the CSV rows) as int32;
* ``record.json``: ``version``, ``result`` (exactly what ``result.json`` holds: per-class AP, group mAP,
  class counts, the task's entries), ``metrics`` (the lines of ``metrics.jsonl``: KD weights and
  gradients per epoch), ``config`` (the resolved config), ``code`` (the checkout's commit and whether
  its tracked files differed from it), ``command``, ``machine``, ``started`` / ``ended`` (UTC, ISO
  8601) and ``seconds``.

Measured: a demo run's record (12 classes, 294 test and 144 validation images) is about 25 kB, a 16-class
run's on 1,000 test and 375 validation images about 90 kB.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recipes.engine.checkpoints import json_default
from rskd_loss.errors import RSKDError
from rskd_loss.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["RECORD_VERSION", "RECORD_JSON", "RECORD_NPZ", "RecordError", "code_version", "machine_info",
           "record_arrays", "record_json_text", "write_record", "read_record_json", "read_record_arrays", "REPO_ROOT"]

RECORD_VERSION = 1
RECORD_JSON, RECORD_NPZ = "record.json", "record.npz"
REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout the recipes run from
PARTS = ("test", "val")


class RecordError(RSKDError, ValueError):
    """A record file is not what :func:`write_record` writes (the message names the file)."""


def _git(args: Sequence[str], cwd: Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def code_version(root: str | os.PathLike[str] = REPO_ROOT) -> dict[str, Any]:
    """{commit, dirty, reason} of the checkout at ``root``: ``git rev-parse HEAD`` and whether a tracked
    file differs from it (``git status --porcelain --untracked-files=no``: untracked files, such as run
    folders, do not count). Not a git checkout, or no git: commit and dirty None, with the reason."""
    try:
        commit = _git(["rev-parse", "HEAD"], Path(root))
        dirty = bool(_git(["status", "--porcelain", "--untracked-files=no"], Path(root)))
    except FileNotFoundError:
        return {"commit": None, "dirty": None, "reason": "git is not installed"}
    except subprocess.CalledProcessError as exc:
        why = (exc.stderr or "").strip().splitlines()
        return {"commit": None, "dirty": None, "reason": f"not a git checkout: {why[0] if why else exc}"}
    except subprocess.TimeoutExpired:
        return {"commit": None, "dirty": None, "reason": "git did not answer within 30 s"}
    return {"commit": commit, "dirty": dirty, "reason": None}


def machine_info(device: str | torch.device) -> dict[str, Any]:
    """Platform, Python, CPU count, torch version and the run's device (with the GPU's name on CUDA)."""
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "device": str(device)}
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(timespec="seconds")


def record_arrays(classes: Sequence[int], parts: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The arrays of a record: ``parts[part]`` holds ``logits`` (N, C), ``targets`` (N, C), ``rows`` (N,).

    The logits are kept exactly (float32: every AP recomputed from the record equals the run folder's); the
    targets are 0/1, as uint8, which the npz compresses to almost nothing.
    """
    arrays = {"classes": np.asarray(classes, dtype=np.int32)}
    for part, res in parts.items():
        arrays[f"{part}_logits"] = np.asarray(res["logits"], dtype=np.float32)
        arrays[f"{part}_targets"] = (np.asarray(res["targets"]) > 0).astype(np.uint8)
        arrays[f"{part}_rows"] = np.asarray(res["rows"], dtype=np.int32)
    return arrays


def record_json_text(doc: Mapping[str, Any]) -> str:
    """Compact JSON with one line per top-level key (small, and a diff shows which part changed). NaN as
    in ``metrics.jsonl`` (Python's JSON reads it back)."""
    items = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True, separators=(',', ':'), default=json_default)}"
             for k, v in sorted(doc.items())]
    return "{\n" + ",\n".join(items) + "\n}\n"


def _metrics_lines(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(s) for s in path.read_text("utf-8").splitlines() if s.strip()]


def write_record(out_dir: str | os.PathLike[str], result: Mapping[str, Any], arrays: Mapping[str, np.ndarray],
                 cfg: Mapping[str, Any], *, command: Sequence[str] | None, started: float,
                 ended: float) -> None:
    """Write ``record.npz`` then ``record.json`` into ``out_dir`` (each atomically); the run's
    ``metrics.jsonl`` is read from there. ``arrays``: :func:`record_arrays`; ``started`` / ``ended``: epoch
    seconds."""
    out_dir = Path(out_dir)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(out_dir / RECORD_NPZ, buf.getvalue())
    doc = {"version": RECORD_VERSION, "result": result, "metrics": _metrics_lines(out_dir / "metrics.jsonl"),
           "config": cfg, "code": code_version(), "command": list(command) if command is not None else None,
           "machine": machine_info(result.get("device", "cpu")), "started": _utc(started), "ended": _utc(ended),
           "seconds": ended - started}
    atomic_write_text(out_dir / RECORD_JSON, record_json_text(doc))


def read_record_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``record.json``, checked for the keys collection reads (:class:`RecordError` naming the file if not)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise RecordError(f"{path}: expected a JSON run record, got invalid JSON ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("result"), dict):
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise RecordError(f"{path}: expected a run record (keys version, result, metrics, code, ...), got {got}")
    if doc.get("version") != RECORD_VERSION:
        raise RecordError(f"{path}: expected record version {RECORD_VERSION}, got {doc.get('version')!r}")
    return doc


def read_record_arrays(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """A ``record.npz`` as ``predictions.npz`` holds them: float32 logits and targets, int64 classes and rows."""
    path = Path(path)
    try:
        with np.load(path) as z:
            raw = dict(z)
    except (OSError, ValueError) as exc:
        raise RecordError(f"{path}: expected a run record's npz, got an unreadable file ({exc})") from exc
    out = {"classes": raw["classes"].astype(np.int64)} if "classes" in raw else {}
    for part in PARTS:
        if f"{part}_logits" in raw:
            out[f"{part}_logits"] = raw[f"{part}_logits"].astype(np.float32)
            out[f"{part}_targets"] = raw[f"{part}_targets"].astype(np.float32)
            out[f"{part}_rows"] = raw[f"{part}_rows"].astype(np.int64)
    if "classes" not in out or "test_logits" not in out:
        raise RecordError(f"{path}: expected arrays classes and test_logits / _targets / _rows, got {sorted(raw)}")
    return out
