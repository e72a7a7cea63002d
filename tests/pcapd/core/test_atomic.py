"""pcapd/core/atomic.py: a published file is whole, never replaces one it
must not, and leaves no temporary file behind when writing fails."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pcapd.core.atomic import FILE_MODE, write_atomic


def test_the_file_is_published_whole_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "a.pcap"
    write_atomic(target, memoryview(b"x" * 70_000))
    assert target.read_bytes() == b"x" * 70_000
    assert stat.S_IMODE(target.stat().st_mode) == FILE_MODE
    assert [p.name for p in tmp_path.iterdir()] == ["a.pcap"]


def test_overwrite_false_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "a.pcap"
    target.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        write_atomic(target, b"ours", overwrite=False)
    assert target.read_bytes() == b"theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["a.pcap"]


def test_overwrite_replaces_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_atomic(target, b"old")
    inode = target.stat().st_ino
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_ino != inode


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "missing-dir" / "a.pcap"
    with pytest.raises(FileNotFoundError):
        write_atomic(target, b"data")
    blocked = tmp_path / "dir-in-the-way"
    blocked.mkdir()
    (blocked / "inside").write_bytes(b"")
    with pytest.raises(OSError):
        write_atomic(blocked, b"data")  # rename onto a non-empty directory fails
    assert sorted(os.listdir(tmp_path)) == ["dir-in-the-way"]
