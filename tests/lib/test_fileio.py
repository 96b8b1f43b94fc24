"""Atomic writes: the target is the old file or the new one, never a part; nothing is left behind."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections import namedtuple

import pytest

from rskd_loss import fileio
from rskd_loss.fileio import DiskWriteError, atomic_path, atomic_write_bytes, atomic_write_text, file_sha256


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


_Usage = namedtuple("_Usage", "total used free")


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_one_line_naming_file_cause_and_folder(tmp_path, monkeypatch) -> None:
    p = tmp_path / "run" / "last.pt"
    atomic_write_bytes(p, b"previous checkpoint")
    monkeypatch.setattr(os, "fsync", _no_space)  # the data reach the disk at the fsync
    with pytest.raises(DiskWriteError) as info:
        atomic_write_bytes(p, b"new checkpoint, larger", fsync=True)
    msg = str(info.value)
    assert msg.startswith(f"cannot write {p}: disk full (ENOSPC) on the file system of {p.parent} (")
    assert "free space there or choose another output folder" in msg and f"{p} is unchanged" in msg
    assert "\n" not in msg and info.value.errno == errno.ENOSPC and isinstance(info.value, OSError)
    assert p.read_bytes() == b"previous checkpoint"
    assert sorted(q.name for q in p.parent.iterdir()) == ["last.pt"]  # no temporary file left


def test_full_disk_inside_the_block_and_without_a_previous_file(tmp_path) -> None:
    p = tmp_path / "bank.pt"
    with pytest.raises(DiskWriteError, match=rf"cannot write {p}: disk full .*nothing was written to {p}$"):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            _no_space()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, cause, fix", [
    (errno.EACCES, "permission denied (EACCES)", "make the folder writable"),
    (errno.EROFS, "read-only file system (EROFS)", "writable file system"),
    (errno.EDQUOT, "disk quota exceeded (EDQUOT)", "quota"),
])
def test_unwritable_folder_causes(tmp_path, monkeypatch, code, cause, fix) -> None:
    p = tmp_path / "table3.md"
    atomic_write_text(p, "old table")

    def refuse(src, dst):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(DiskWriteError, match=rf"cannot write {p}: {__import__('re').escape(cause)}.*{fix}") as info:
        atomic_write_text(p, "new table")
    assert info.value.errno == code
    assert p.read_text() == "old table" and sorted(q.name for q in tmp_path.iterdir()) == ["table3.md"]


def test_unwritable_parent_folder_is_reported_at_mkdir(tmp_path, monkeypatch) -> None:
    def refuse(self, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(fileio.Path, "mkdir", refuse)
    with pytest.raises(DiskWriteError, match=r"cannot write .*/new/x.txt: permission denied \(EACCES\)"):
        atomic_write_text(tmp_path / "new" / "x.txt", "x")


TORCH_SHORT_WRITE = ("[enforce fail at inline_container.cc:672] . unexpected pos 4864 vs 4752\n"
                     "frame #0: c10::ThrowEnforceNotMet(...)")


def test_torch_short_write_on_a_full_disk(tmp_path, monkeypatch) -> None:
    p = tmp_path / "last.pt"
    atomic_write_bytes(p, b"old")
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: _Usage(10 << 30, 10 << 30, 4096))
    with pytest.raises(DiskWriteError) as info:
        with atomic_path(p, fsync=True) as tmp:
            tmp.write_bytes(b"partial zip")
            raise RuntimeError(TORCH_SHORT_WRITE)
    msg = str(info.value)
    assert msg.startswith(f"cannot write {p}: disk full (ENOSPC) (torch.save: [enforce fail at "
                          f"inline_container.cc:672] . unexpected pos 4864 vs 4752) on the file system of "
                          f"{tmp_path} (4.0 KiB free)")
    assert "frame #0" not in msg and p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["last.pt"]
    # with space left it is still one line, but not called a full disk
    monkeypatch.setattr(shutil, "disk_usage", lambda folder: _Usage(10 << 30, 1 << 30, 9 << 30))
    with pytest.raises(DiskWriteError, match=r"the write stopped short \(torch.save: .*quota, network mount"):
        with atomic_path(p) as tmp:
            raise RuntimeError(TORCH_SHORT_WRITE)
    assert p.read_bytes() == b"old"


def test_other_errors_pass_through_unchanged(tmp_path) -> None:
    with pytest.raises(RuntimeError, match="^cannot pickle"):
        with atomic_path(tmp_path / "a.pt"):
            raise RuntimeError("cannot pickle 'generator' object")
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "b.pt"):
            raise FileNotFoundError(errno.ENOENT, "gone")
    assert list(tmp_path.iterdir()) == []


def test_reserve_space_turns_a_full_disk_into_diskwriteerror(tmp_path, monkeypatch) -> None:
    import numpy as np

    p = tmp_path / "decoded.npy"
    with atomic_path(p) as tmp:  # enough space: the memory-mapped file is allocated, then written
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(4, 1024))
        fileio.reserve_space(tmp)
        arr[:] = 7
        arr.flush()
        del arr
    assert os.stat(p).st_blocks * 512 >= 4096 and np.load(p).sum() == 7 * 4096
    monkeypatch.setattr(os, "posix_fallocate", _no_space)
    with pytest.raises(DiskWriteError, match=rf"cannot write {p}: disk full \(ENOSPC\).*{p} is unchanged"):
        with atomic_path(p) as tmp:
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(4, 1024))
            fileio.reserve_space(tmp)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["decoded.npy"]
