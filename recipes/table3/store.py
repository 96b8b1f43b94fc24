"""Where the sweep's collection reads each run: its run folder, or its record (:mod:`recipes.engine.run_record`).

Every finished run writes ``record.json`` + ``record.npz`` into its folder; :func:`gather_records` copies
them into ``<out>/records/<run id>/`` (the run id is the run folder relative to ``<out>``, e.g.
``fold0/seed1/ours_shot``; a rule's ``partition.json`` goes to ``records/fold0/seed1/teachers_shot/``), so
that ``records/`` alone is a complete, committable result. :class:`RunStore` reads a run by its id from
either place with the same answers: the result (``result.json`` / the record's ``result``), the
predictions (``predictions.npz`` / ``record.npz``, the same float32 logits), the per-epoch metrics and
the record itself (for :func:`provenance`). Imports :mod:`recipes.table3.rows` only, of this package.
"""
from __future__ import annotations

import datetime
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from recipes.engine.run_record import (
    RECORD_JSON,
    RECORD_NPZ,
    code_version,
    machine_info,
    read_record_arrays,
    read_record_json,
)
from recipes.table3.rows import SweepError
from rskd_loss.fileio import atomic_write_bytes
from rskd_loss.partition import Partition

__all__ = ["RECORDS", "RunStore", "gather_records", "provenance"]

RECORDS = "records"  # the records' folder under a sweep's --out
PARTITION = "partition.json"


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text("utf-8"))
    except ValueError as exc:
        raise SweepError(f"{path}: expected a JSON result, got invalid JSON ({exc})") from exc


class RunStore:
    """Cached reads of a sweep's runs by run id, from the run folders under ``out`` or (``records``) from
    the records folder; every file not found is noted in ``missing`` (relative to the folder read)."""

    def __init__(self, out: str | os.PathLike[str], records: str | os.PathLike[str] | None = None) -> None:
        self.out = Path(out)
        self.records = Path(records) if records is not None else None
        self.base = self.records if self.records is not None else self.out
        self.missing: list[str] = []
        self._cache: dict[Path, Any] = {}

    def _load(self, path: Path, reader: Any, note: bool = True) -> Any:
        if path not in self._cache:
            if path.is_file():
                self._cache[path] = reader(path)
            else:
                if note:
                    self.missing.append(path.relative_to(self.base).as_posix())
                self._cache[path] = None
        return self._cache[path]

    def where(self, rid: str) -> Path:
        """The file a run's result is read from (for messages)."""
        return self.base / rid / (RECORD_JSON if self.records is not None else "result.json")

    def record(self, rid: str, note: bool = False) -> dict | None:
        """The run's ``record.json`` (None if it has none: a run older than the records)."""
        return self._load(self.base / rid / RECORD_JSON, read_record_json, note)

    def result(self, rid: str) -> dict | None:
        if self.records is not None:
            rec = self.record(rid, note=True)
            return None if rec is None else rec["result"]
        return self._load(self.base / rid / "result.json", _json)

    def preds(self, rid: str) -> dict | None:
        if self.records is not None:
            return self._load(self.base / rid / RECORD_NPZ, read_record_arrays)
        return self._load(self.base / rid / "predictions.npz", lambda p: dict(np.load(p)))

    def metrics(self, rid: str) -> list[dict] | None:
        if self.records is not None:
            rec = self.record(rid, note=True)
            return None if rec is None else rec["metrics"]
        return self._load(self.base / rid / "metrics.jsonl",
                          lambda p: [json.loads(s) for s in p.read_text("utf-8").splitlines() if s.strip()])

    def partition(self, teachers_rid: str) -> Partition | None:
        """The ``partition.json`` of a rule's teachers folder (``fold0/seed0/teachers_shot``)."""
        return self._load(self.base / teachers_rid / PARTITION, Partition.from_json)

    def has_dir(self, rid: str) -> bool:
        return (self.base / rid).is_dir()

    def finished(self, prefix: str) -> list[str]:
        """Ids of the finished runs below ``prefix`` (a cell, ``fold0/seed1``), sorted."""
        name = RECORD_JSON if self.records is not None else "result.json"
        return sorted(p.parent.relative_to(self.base).as_posix() for p in (self.base / prefix).glob(f"**/{name}")
                      if RECORDS not in p.relative_to(self.base).parts[:1])


def _copy_if_changed(src: Path, dst: Path) -> bool:
    data = src.read_bytes()
    if dst.is_file() and dst.read_bytes() == data:
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, data)
    return True


def gather_records(out: str | os.PathLike[str]) -> int:
    """Copy every finished run's record (and every teachers folder's ``partition.json``) under ``out`` into
    ``<out>/records/<run id>/``; returns how many files changed. A run without ``result.json`` is not
    finished and is left out; a finished run without a record (made before the records) is noted by
    :func:`provenance`, not here."""
    out = Path(out)
    changed = 0
    for cell in sorted(out.glob("fold*/seed*")):
        for res in sorted(cell.glob("**/result.json")):
            run = res.parent
            rid = run.relative_to(out)
            if not (run / RECORD_JSON).is_file() or not (run / RECORD_NPZ).is_file():
                continue
            changed += sum(_copy_if_changed(run / f, out / RECORDS / rid / f) for f in (RECORD_NPZ, RECORD_JSON))
        for part in sorted(cell.glob(f"teachers_*/{PARTITION}")):
            changed += _copy_if_changed(part, out / RECORDS / part.relative_to(out))
    return changed


def _collection_info() -> dict[str, Any]:
    command = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]  # orig_argv keeps "-m recipes.table3"
    return {"command": list(command), "time": datetime.datetime.now(datetime.timezone.utc)
            .isoformat(timespec="seconds"), "machine": machine_info("cpu"), "code": code_version()}


def provenance(store: RunStore, run_ids: Iterable[str]) -> dict[str, Any]:
    """Where the results of ``run_ids`` (the finished ones) come from: the distinct code commits (with a
    warning when there are several, or a dirty tree), machines and commands of their records, the span of
    their start / end times, the runs without a record, and this collection's own command, machine, time."""
    ids = [r for r in dict.fromkeys(run_ids) if store.result(r) is not None]
    recs = {r: store.record(r) for r in ids}
    commits = Counter((rec["code"].get("commit"), rec["code"].get("dirty")) for rec in recs.values() if rec)
    machines = Counter(json.dumps(rec["machine"], sort_keys=True) for rec in recs.values() if rec)
    warnings = []
    if len(commits) > 1:
        warnings.append(f"the runs come from {len(commits)} code versions (commit, dirty): "
                        + ", ".join(f"{c} {'dirty' if d else 'clean'} ({n} runs)" for (c, d), n in commits.items()))
    if any(d for (_, d) in commits):
        warnings.append("some runs were made from a checkout with uncommitted changes (dirty)")
    if any(c is None for (c, _) in commits):
        warnings.append("some runs record no commit (not a git checkout)")
    without = [r for r, rec in recs.items() if rec is None]
    if without:
        warnings.append(f"{len(without)} finished run(s) have no record (made before the records): "
                        + ", ".join(without[:10]) + (" ..." if len(without) > 10 else ""))
    times = sorted(t for rec in recs.values() if rec for t in (rec["started"], rec["ended"]))
    return {"runs": len(ids), "with_record": len(ids) - len(without), "without_record": without,
            "commits": [{"commit": c, "dirty": d, "runs": n} for (c, d), n in commits.items()],
            "machines": [{**json.loads(m), "runs": n} for m, n in machines.items()],
            "commands": sorted({" ".join(rec["command"]) for rec in recs.values() if rec and rec.get("command")}),
            "first_start": times[0] if times else None, "last_end": times[-1] if times else None,
            "warnings": warnings, "collected": _collection_info()}
