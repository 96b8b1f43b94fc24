"""File helpers: atomic writes (a reader sees the old file or the new one, never a part) and hashes.

Everything this project writes (partitions, teacher-logit banks, checkpoints, splits, tables, images)
goes through here: the data go to a temporary file in the target's folder (same file system, so the
final ``os.replace`` is atomic), and only a complete file is renamed onto the target. A writer that
fails or is killed leaves the target as it was and, except for a hard kill, no temporary file.

A write that fails for a reason the user must fix outside the program (a full disk or quota:
``ENOSPC`` / ``EDQUOT``; no permission: ``EACCES`` / ``EPERM``; a read-only file system: ``EROFS``) is
raised as one :class:`DiskWriteError` (an ``OSError`` with the same ``errno``) whose one-line
message names the file, the cause and the folder to fix, e.g. ``cannot write runs/a/last.pt: disk
full (ENOSPC) on the file system of runs/a (0 B free); free space there or choose another output
folder; runs/a/last.pt is unchanged``. ``torch.save`` reports a short write as ``RuntimeError:
[enforce fail at inline_container.cc:...] . unexpected pos ...`` (PyTorch's zip writer), which does
not say why; such an error raised inside :func:`atomic_path` is recognised by its text and reported
the same way, as disk full when the file system has less than :data:`LOW_SPACE_BYTES` free (measured
before the temporary file is removed), else as a failed write quoting torch's message.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import RSKDError

__all__ = ["DiskWriteError", "LOW_SPACE_BYTES", "atomic_path", "atomic_write_bytes", "atomic_write_text",
           "file_sha256", "disk_write_error", "reserve_space"]

#: below this many free bytes a failed ``torch.save`` is reported as a full disk
LOW_SPACE_BYTES = 64 << 20

_CAUSES = {
    errno.ENOSPC: ("disk full (ENOSPC)", "free space there or choose another output folder"),
    errno.EDQUOT: ("disk quota exceeded (EDQUOT)", "free space in your quota or choose another output folder"),
    errno.EACCES: ("permission denied (EACCES)", "make the folder writable for this user or choose another "
                                                "output folder"),
    errno.EPERM: ("operation not permitted (EPERM)", "make the folder writable for this user or choose another "
                                                    "output folder"),
    errno.EROFS: ("read-only file system (EROFS)", "choose an output folder on a writable file system"),
}
# the text of torch.save's errors for a write that stopped short (caffe2/serialize/inline_container.cc)
_TORCH_WRITE_MARKERS = ("inline_container", "PytorchStreamWriter", "unexpected pos", "file write failed")


class DiskWriteError(RSKDError, OSError):
    """A file could not be written for a reason to fix outside the program: full disk or quota, no
    permission, read-only file system. ``errno`` is the cause; ``filename`` the target; the message is
    one line naming the file, the cause and where to fix it; the previous file is intact."""

    def __str__(self) -> str:  # OSError's own would print "[Errno 28] ...: 'file'"; keep the one line
        return self.strerror or OSError.__str__(self)


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def disk_write_error(exc: BaseException, path: str | os.PathLike[str],
                     free: int | None = None) -> DiskWriteError | None:
    """The :class:`DiskWriteError` for ``exc`` raised while writing ``path``, or ``None`` if it is not
    one of the causes above (then the caller re-raises ``exc`` as it is).

    ``free``: the free bytes of the target's file system measured while the failed temporary file
    still existed (a ``RuntimeError`` of ``torch.save`` counts as a full disk below
    :data:`LOW_SPACE_BYTES`).
    """
    if isinstance(exc, DiskWriteError):
        return exc
    target = Path(path)
    folder = _existing(target.parent)
    if free is None:
        free = _free_bytes(folder)
    free_txt = "" if free is None else f" ({_fmt_bytes(free)} free)"
    kept = (f"{target} is unchanged" if target.exists() else f"nothing was written to {target}")
    if isinstance(exc, OSError) and exc.errno in _CAUSES:
        code = exc.errno
        detail = ""
    elif isinstance(exc, RuntimeError) and any(m in str(exc) for m in _TORCH_WRITE_MARKERS):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if free is not None and free < LOW_SPACE_BYTES:
            code, detail = errno.ENOSPC, f" (torch.save: {first})"
        else:
            return DiskWriteError(errno.EIO, (
                f"cannot write {target}: the write stopped short (torch.save: {first}) on the file system of "
                f"{folder}{free_txt}; check that file system (quota, network mount, I/O errors) or choose "
                f"another output folder; {kept}"), str(target))
    else:
        return None
    cause, fix = _CAUSES[code]
    where = f"the file system of {folder}{free_txt}" if code in (errno.ENOSPC, errno.EDQUOT) else f"{folder}"
    msg = f"cannot write {target}: {cause}{detail} on {where}; {fix}; {kept}"
    return DiskWriteError(code, msg, str(target))



def _temp_path(path: Path) -> Path:
    """A unique hidden name beside ``path``."""
    return path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the block to write; rename it onto ``path`` at the end.

    On a normal exit the temporary file (which the block must have created) is optionally flushed to
    disk (``fsync=True``: durable across a power cut, for checkpoints and banks) and renamed onto
    ``path``. On an exception it is removed and ``path`` is untouched. The file gets the usual
    permissions (``0o666`` minus the umask). A full disk, missing permission or read-only file system
    (also when ``torch.save`` in the block stops short) is raised as :class:`DiskWriteError`.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        err = disk_write_error(exc, path)
        if err is None:
            raise
        raise err from exc
    tmp = _temp_path(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        free = _free_bytes(_existing(path.parent))  # measured while the temporary file still holds its space
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        err = disk_write_error(exc, path, free)
        if err is None or err is exc:
            raise
        raise err from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def reserve_space(path: str | os.PathLike[str], nbytes: int | None = None) -> None:
    """Allocate ``nbytes`` (default: the file's size) of ``path`` on disk now (``posix_fallocate``).

    For a memory-mapped file (``np.lib.format.open_memmap``) written inside :func:`atomic_path`: the
    mapping is a sparse file, and a full disk would surface as a ``SIGBUS`` crash at some later page
    write; reserved first, it is an ``OSError(ENOSPC)`` here, which :func:`atomic_path` reports as a
    :class:`DiskWriteError`. A no-op where the file system or platform cannot preallocate.
    """
    if not hasattr(os, "posix_fallocate"):
        return
    size = os.path.getsize(path) if nbytes is None else int(nbytes)
    if size <= 0:
        return
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
            raise
    finally:
        os.close(fd)


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
