"""File helpers: atomic writes (a reader sees the old file or the new one, never a part) and hashes.

Everything this project writes (partitions, teacher-logit banks, checkpoints, splits, tables, images)
goes through here: the data go to a temporary file in the target's folder (same file system, so the
final ``os.replace`` is atomic), and only a complete file is renamed onto the target. A writer that
fails or is killed leaves the target as it was and, except for a hard kill, no temporary file.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "file_sha256"]


def _temp_path(path: Path) -> Path:
    """A unique hidden name beside ``path``."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the block to write; rename it onto ``path`` at the end.

    On a normal exit the temporary file (which the block must have created) is optionally flushed to
    disk (``fsync=True``: durable across a power cut, for checkpoints and banks) and renamed onto
    ``path``. On an exception it is removed and ``path`` is untouched. The file gets the usual
    permissions (``0o666`` minus the umask).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "xb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False) -> None:
    """Write ``text`` as UTF-8 to ``path`` atomically (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes (e.g. a teacher checkpoint or a labels CSV), read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
