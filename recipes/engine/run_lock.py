"""One live process per run folder (or sweep folder): a lock file ``FOLDER/.lock``.

A run (``recipes.train``) or a sweep (``recipes.table3``) takes the lock of its folder before it touches anything
there, and only then removes the temporary files a killed predecessor left::

    with RunLock(out_dir, command=sys.argv) as lock:
        if lock.took_over is not None:          # a killed run's lock: its temporaries may go now
            ...remove_stale_temporaries(out_dir)...
        ...the run...

The lock file is JSON, written completely before it becomes visible (a temporary file hard-linked to
``.lock``; ``link`` fails if ``.lock`` exists, atomically)::

    {"pid": 4242, "host": "node7", "started": "2026-12-02T02:19:55+00:00", "started_unix": 1796...,
     "process_start": "183734", "command": "python -m recipes.train ...", "token": "9f3c..."}

A second process on the same folder:

* owner on this host and alive (``os.kill(pid, 0)``, and on Linux the same process start time in
  ``/proc/<pid>/stat``, so a recycled PID is not taken for the owner): refused with
  :class:`RunLockedError` naming the owner's pid, host, start time and command;
* owner on this host and gone (killed, crashed, a reboot): the lock is taken over, and said so
  (``took_over`` holds the old owner; a message goes to stderr); only then may its temporaries go;
* owner on another host: its liveness cannot be checked from here, so refused, naming host, pid and
  start time and saying how to force it (delete ``FOLDER/.lock`` once that process is known to be
  gone);
* an unreadable lock (empty or not JSON: a writer on a file system without hard links killed
  mid-write, or a hand-made file): refused, naming the file to delete.

Releasing (``release()`` / leaving the ``with`` block) removes the lock only if it still holds our
token; a lock that is not ours any more is left alone, with a warning.

Limits, as far as the information allows:

* Same host: reliable, including PID reuse on Linux (process start time); on other systems a
  recycled PID held by another live process makes a dead owner look alive (refused, with the
  command to delete the lock).
* Across hosts sharing a file system: the lock excludes a second process as long as the file system
  makes ``link`` (or, as a fallback, ``O_CREAT | O_EXCL``) atomic: true for local file systems and
  NFSv3+ (link is checked by the link count, the classic NFS-safe recipe). A lock of another host is
  never taken over automatically: a crashed remote owner needs a person to delete ``.lock``. Hosts
  are told apart by ``socket.gethostname()``: two machines with the same host name (containers)
  look like one host; then a live owner in another container looks dead and its lock is taken
  over. Give containers distinct host names when they share run folders.
* The lock is advisory: a program that does not take it (an older checkout) is not stopped.
* torchrun: take the lock on rank 0 only (the other ranks are the same run).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import secrets
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rskd_loss.errors import RSKDError

__all__ = ["LOCK_NAME", "RunLock", "RunLockedError", "read_lock"]

LOCK_NAME = ".lock"
_TAKEOVER_NAME = ".lock.takeover"
_TAKEOVER_STALE_S = 60.0  # a takeover guard older than this was left by a killed process


class RunLockedError(RSKDError, RuntimeError):
    """The folder is locked by another live (or unverifiable) process; the message names it."""


def _host() -> str:
    return socket.gethostname()


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc/<pid>/stat`` field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    try:
        return stat[stat.rindex(")") + 2:].split()[19]  # fields after "pid (comm) ": state is field 3
    except (ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def read_lock(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The owner recorded in ``folder/.lock`` (a dict), ``None`` if there is no lock.

    Raises ``ValueError`` naming the file when it exists but does not hold a lock record.
    """
    path = Path(folder) / LOCK_NAME
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("pid"), int) or not isinstance(doc.get("host"), str):
        raise ValueError(f"{path}: expected a lock record (JSON with pid, host, started), got "
                         f"{raw[:80]!r}; if no process is running in {path.parent}, delete {path}")
    return doc


def _describe(owner: dict[str, Any]) -> str:
    cmd = owner.get("command") or "?"
    return (f"pid {owner.get('pid')} on host {owner.get('host')!r}, started {owner.get('started', '?')}, "
            f"command: {cmd}")


class RunLock:
    """The lock of one run or sweep folder; see the module doc.

    Args:
        folder: the folder (created if missing).
        command: the command line recorded for whoever is refused (default ``sys.argv``).
        quiet: do not print the takeover message to stderr (it is in ``took_over`` either way).

    Attributes:
        path: ``folder/.lock``.
        took_over: the record of a dead owner whose lock this one replaced, else ``None``.
        held: whether this object holds the lock now.
    """

    def __init__(self, folder: str | os.PathLike[str], *, command: Sequence[str] | str | None = None,
                 quiet: bool = False) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        if command is None:
            command = [Path(sys.executable).name, *sys.argv]
        self.command = command if isinstance(command, str) else shlex.join(str(c) for c in command)
        self.quiet = quiet
        self.took_over: dict[str, Any] | None = None
        self.held = False
        self._token = secrets.token_hex(16)

    # -- the record ---------------------------------------------------------------------------
    def _record(self) -> bytes:
        now = time.time()
        pid = os.getpid()
        doc = {"pid": pid, "host": _host(),
               "started": _dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(timespec="seconds"),
               "started_unix": now, "process_start": _process_start(pid), "command": self.command,
               "token": self._token}
        return (json.dumps(doc, indent=1) + "\n").encode("utf-8")

    def _create(self, target: Path, data: bytes) -> bool:
        """Make ``target`` hold ``data`` if it does not exist; ``False`` if it exists (atomic)."""
        tmp = target.parent / f"{target.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}.new"
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            try:
                os.link(tmp, target)
                return True
            except FileExistsError:
                return False
            except OSError as exc:
                if exc.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    return self._create_excl(target, data)  # a file system without hard links
                # NFS: the link may have been made although the reply was lost
                with contextlib.suppress(OSError):
                    if os.stat(tmp).st_nlink == 2:
                        return True
                raise
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    @staticmethod
    def _create_excl(target: Path, data: bytes) -> bool:
        try:
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def _owner_state(self, owner: dict[str, Any]) -> str:
        """``"alive"``, ``"dead"`` or ``"remote"`` (another host: cannot tell)."""
        if owner.get("host") != _host():
            return "remote"
        pid = owner["pid"]
        if pid == os.getpid() and owner.get("token") != self._token:
            return "alive"  # this very process, through another RunLock object
        if not _pid_alive(pid):
            return "dead"
        recorded, now = owner.get("process_start"), _process_start(pid)
        if recorded is not None and now is not None and recorded != now:
            return "dead"  # the PID was recycled by another process
        return "alive"

    # -- acquire / release --------------------------------------------------------------------
    def acquire(self) -> RunLock:
        """Take the lock (see the module doc); raises :class:`RunLockedError` if another process holds it."""
        if self.held:
            raise RuntimeError(f"{self.path}: this RunLock already holds the lock")
        self.folder.mkdir(parents=True, exist_ok=True)
        data = self._record()
        for _ in range(5):  # a lock released or taken over between our steps: look again
            if self._create(self.path, data):
                self.held = True
                return self
            try:
                owner = read_lock(self.folder)
            except ValueError as exc:
                raise RunLockedError(f"{self.folder} is locked by an unreadable lock file: {exc}") from None
            if owner is None:
                continue  # released meanwhile
            state = self._owner_state(owner)
            if state == "alive":
                raise RunLockedError(
                    f"{self.folder} is in use by another live process ({_describe(owner)}); wait for it to "
                    f"finish or stop it, or choose another output folder")
            if state == "remote":
                raise RunLockedError(
                    f"{self.folder} is locked by a process on another host ({_describe(owner)}); its "
                    f"liveness cannot be checked from host {_host()!r}: if that process is no longer "
                    f"running, delete {self.path} and start again")
            if self._take_over(owner, data):
                self.held = True
                self.took_over = owner
                if not self.quiet:
                    print(f"run lock: took over {self.path} from a process that is gone ({_describe(owner)})",
                          file=sys.stderr, flush=True)
                return self
        raise RunLockedError(f"{self.folder}: could not take the lock {self.path} (other processes keep "
                             f"taking it); try again")

    def _take_over(self, owner: dict[str, Any], data: bytes) -> bool:
        """Replace the dead ``owner``'s lock by ours; ``False`` if someone else changed it meanwhile."""
        guard = self.folder / _TAKEOVER_NAME
        if not self._create(guard, data):
            with contextlib.suppress(OSError):
                if time.time() - guard.stat().st_mtime > _TAKEOVER_STALE_S:
                    guard.unlink()  # left by a process killed during its takeover
            time.sleep(0.05)
            return False
        try:
            try:
                current = read_lock(self.folder)
            except ValueError:
                return False
            if current is None:
                return self._create(self.path, data)
            if current != owner:
                return False  # another process took it over first
            self.path.unlink()
            return self._create(self.path, data)
        finally:
            with contextlib.suppress(OSError):
                guard.unlink()

    def release(self) -> None:
        """Remove the lock if it is still ours; a lock that is not ours is left, with a warning."""
        if not self.held:
            return
        self.held = False
        try:
            owner = read_lock(self.folder)
        except ValueError:
            owner = None
        if owner is not None and owner.get("token") == self._token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        elif not self.quiet:
            print(f"run lock: {self.path} is no longer ours (now: "
                  f"{_describe(owner) if owner else 'no readable lock'}); left as it is", file=sys.stderr)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"RunLock({str(self.folder)!r}, held={self.held})"
