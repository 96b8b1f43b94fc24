"""One live process per run folder: a live owner refuses a second process, a killed one is taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.engine.run_lock import LOCK_NAME, RunLock, RunLockedError, read_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = ("import sys, time; sys.path.insert(0, sys.argv[2]); from recipes.engine.run_lock import RunLock; "
        "lock = RunLock(sys.argv[1], command=['train.py', '--out-dir', sys.argv[1]]).acquire(); "
        "print('held', flush=True); time.sleep(120)")


@pytest.fixture
def holder(tmp_path):
    """A second process holding the lock of tmp_path/run."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(ROOT)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout.readline().strip() == "held"
        yield folder, proc
    finally:
        proc.kill()
        proc.wait(timeout=30)


def test_lock_records_the_owner_and_is_removed_on_release(tmp_path):
    folder = tmp_path / "run"
    with RunLock(folder, command=["train.py", "--profile", "demo"]) as lock:
        doc = json.loads((folder / LOCK_NAME).read_text())
        assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname()
        assert doc["command"] == "train.py --profile demo" and doc["started"].endswith("+00:00")
        assert lock.held and lock.took_over is None and read_lock(folder) == doc
        with pytest.raises(RunLockedError, match=rf"in use by another live process \(pid {os.getpid()}"):
            RunLock(folder).acquire()  # a second run in this very process
    assert not (folder / LOCK_NAME).exists() and not lock.held
    assert sorted(p.name for p in folder.iterdir()) == []  # nothing else was left


def test_a_live_owner_refuses_a_second_process_and_nothing_is_touched(holder):
    folder, proc = holder
    tmp = folder / ".last.pt.1234.abcd.tmp"  # the owner's checkpoint being written
    tmp.write_bytes(b"half a checkpoint")
    before = (folder / LOCK_NAME).read_bytes()
    with pytest.raises(RunLockedError) as info:
        RunLock(folder).acquire()
    msg = str(info.value)
    assert f"{folder} is in use by another live process (pid {proc.pid} on host {socket.gethostname()!r}" in msg
    assert f"command: train.py --out-dir {folder}" in msg and "started 20" in msg
    assert (folder / LOCK_NAME).read_bytes() == before and tmp.read_bytes() == b"half a checkpoint"
    assert sorted(p.name for p in folder.iterdir()) == sorted([LOCK_NAME, tmp.name])


def test_a_killed_owners_lock_is_taken_over_and_said_so(holder, capsys):
    folder, proc = holder
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with RunLock(folder) as lock:
        assert lock.took_over is not None and lock.took_over["pid"] == proc.pid
        assert read_lock(folder)["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"run lock: took over {folder / LOCK_NAME} from a process that is gone (pid {proc.pid}" in err
    assert not (folder / LOCK_NAME).exists()


def _write_lock(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"pid": 4242, "host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00",
           "command": "table3.py", "token": "x", **fields}
    (folder / LOCK_NAME).write_text(json.dumps(doc))


def test_another_hosts_lock_is_refused_with_how_to_force(tmp_path):
    _write_lock(tmp_path, host="gpu-node-7", pid=os.getpid())
    with pytest.raises(RunLockedError, match=r"locked by a process on another host \(pid \d+ on host 'gpu-node-7', "
                                             r"started 2026-01-01T00:00:00\+00:00.*if that process is no longer "
                                             rf"running, delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["host"] == "gpu-node-7"


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times need Linux /proc")
def test_a_recycled_pid_is_not_taken_for_the_owner(tmp_path):
    _write_lock(tmp_path, pid=os.getppid(), process_start="1")  # alive, but another process than the owner
    with RunLock(tmp_path, quiet=True) as lock:
        assert lock.took_over["pid"] == os.getppid()


def test_unreadable_lock_is_refused_naming_the_file(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"")
    with pytest.raises(RunLockedError, match=rf"unreadable lock file.*delete {tmp_path / LOCK_NAME}"):
        RunLock(tmp_path).acquire()


def test_release_leaves_a_lock_that_is_no_longer_ours(tmp_path, capsys):
    lock = RunLock(tmp_path).acquire()
    _write_lock(tmp_path, pid=1, token="someone else")
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == "someone else"
    assert "is no longer ours" in capsys.readouterr().err
