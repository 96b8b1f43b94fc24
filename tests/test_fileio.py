"""Atomic writes: the target is the old file or the new one, never a part; nothing is left behind."""
from __future__ import annotations

import hashlib

import pytest

from rskd_loss.fileio import atomic_path, atomic_write_bytes, atomic_write_text, file_sha256


def test_atomic_write_replaces_whole_file(tmp_path) -> None:
    p = tmp_path / "x.bin"
    atomic_write_bytes(p, b"first version, long")
    atomic_write_bytes(p, b"second", fsync=True)
    assert p.read_bytes() == b"second"
    assert [q.name for q in tmp_path.iterdir()] == ["x.bin"]
    assert oct(p.stat().st_mode & 0o777) != oct(0o600)  # readable by others, unlike a mkstemp file


def test_failed_writer_leaves_old_file_and_no_temporary(tmp_path) -> None:
    p = tmp_path / "keep.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError, match="killed mid-write"):
        with atomic_path(p) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert p.read_text() == "old"
    assert [q.name for q in tmp_path.iterdir()] == ["keep.txt"]


def test_file_sha256(tmp_path) -> None:
    p = tmp_path / "a.bin"
    data = bytes(range(256)) * 5000  # 1.28 MB: two 1 MiB chunks
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    assert file_sha256(p, chunk=7) == hashlib.sha256(data).hexdigest()
