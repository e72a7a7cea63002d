"""pcapd/core/atomic.py: a published file is whole, never replaces one it
must not, and leaves no temporary file behind when writing fails; the same
through a directory held open (`OpenDirectory`), with and without O_TMPFILE,
which follows its path when the directory is replaced."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcapd.core.atomic import FILE_MODE, OpenDirectory, write_atomic
from tests.helpers import needs_root, run, wait_for


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


def _open_fds_on(directory: Path) -> int:
    """This process's descriptors open on `directory` (or on it deleted)."""
    names = (str(directory), f"{directory} (deleted)")
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}") in names
        except FileNotFoundError:  # the listing's own descriptor, closed since
            continue
    return found


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "temporary-name"])
def test_through_an_open_directory_files_are_whole_with_their_mode_and_never_replaced(
    tmp_path: Path, unnamed: bool
) -> None:
    old_umask = os.umask(0o077)  # the mode must not depend on the daemon's umask
    try:
        opened = OpenDirectory(tmp_path, unnamed=unnamed)
        opened.write("a.pcap", memoryview(b"x" * 70_000), overwrite=False)
        with pytest.raises(FileExistsError):
            opened.write("a.pcap", b"ours", overwrite=False)
        opened.write("a.pcap.json", b"old")
        inode = (tmp_path / "a.pcap.json").stat().st_ino
        opened.write("a.pcap.json", b"new", check=False)
        assert opened.unnamed == unnamed  # O_TMPFILE was used where asked
        opened.close()
    finally:
        os.umask(old_umask)
    assert (tmp_path / "a.pcap").read_bytes() == b"x" * 70_000
    assert stat.S_IMODE((tmp_path / "a.pcap").stat().st_mode) == FILE_MODE
    json_file = tmp_path / "a.pcap.json"
    assert json_file.read_bytes() == b"new" and json_file.stat().st_ino != inode
    assert stat.S_IMODE(json_file.stat().st_mode) == FILE_MODE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pcap", "a.pcap.json"]
    assert _open_fds_on(tmp_path) == 0


def test_an_open_directory_follows_its_path_when_the_directory_is_replaced(
    tmp_path: Path,
) -> None:
    target, moved = tmp_path / "captures", tmp_path / "captures.old"
    target.mkdir()
    opened = OpenDirectory(target)
    opened.write("one", b"1", overwrite=False)
    with opened.held() as old:
        target.rename(moved)  # rotated away by an operator: not written into any more
        with pytest.raises(FileNotFoundError):
            opened.write("two", b"2", overwrite=False)
        target.mkdir()
        opened.write("two", b"2", overwrite=False)  # while a writer holds the old one
        assert os.fstat(old).st_ino == moved.stat().st_ino  # still open: it is held
        assert _open_fds_on(moved) == 1 and _open_fds_on(target) == 1
    assert sorted(os.listdir(moved)) == ["one"] and sorted(os.listdir(target)) == ["two"]
    assert _open_fds_on(moved) == 0 and _open_fds_on(target) == 1  # its last writer closed it
    opened.close()
    assert _open_fds_on(target) == 0


def test_an_idle_open_directory_lets_go_of_its_descriptor_and_opens_it_again(
    tmp_path: Path,
) -> None:
    """Held open for good, it would keep its file system busy (no umount)."""
    opened = OpenDirectory(tmp_path, idle_close=0.3)
    opened.write("one", b"1", overwrite=False)
    assert _open_fds_on(tmp_path) == 1
    wait_for(lambda: _open_fds_on(tmp_path) == 0, timeout=10)
    opened.write("two", b"2", overwrite=False)  # opened again by the next write
    assert _open_fds_on(tmp_path) == 1
    with opened.held():
        time.sleep(0.6)  # idle twice over, but held by a writer: stays open
        assert _open_fds_on(tmp_path) == 1
    wait_for(lambda: _open_fds_on(tmp_path) == 0, timeout=10)
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]


def test_a_closer_that_cannot_start_fails_no_write_and_the_next_write_arms_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread to be had for the idle closer (what the OS says when a
    process has too many): the file is written all the same."""

    def refused(self: threading.Timer) -> None:
        raise RuntimeError("can't start new thread")

    opened = OpenDirectory(tmp_path, idle_close=0.3)
    with monkeypatch.context() as patched:
        patched.setattr(threading.Timer, "start", refused)
        opened.write("one", b"1", overwrite=False)
    assert (tmp_path / "one").read_bytes() == b"1"
    time.sleep(0.6)  # idle twice over, but no closer: still open
    assert _open_fds_on(tmp_path) == 1
    opened.write("two", b"2", overwrite=False)  # arms one, and it starts
    wait_for(lambda: _open_fds_on(tmp_path) == 0, timeout=10)
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]


def test_a_replaced_descriptor_that_fails_to_close_still_starts_the_idle_closer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(self: threading.Timer) -> None:
        raise RuntimeError("can't start new thread")

    target = tmp_path / "captures"
    target.mkdir()
    opened = OpenDirectory(target, idle_close=0.3)
    with pytest.raises(OSError), opened.held() as old:
        target.rename(tmp_path / "captures.old")
        target.mkdir()
        with monkeypatch.context() as patched:
            patched.setattr(threading.Timer, "start", refused)
            opened.write("two", b"2", overwrite=False)  # the new one open, no closer
        os.close(old)  # so closing it, once its writer lets go, fails (EBADF)
    # The closer armed as it let go was started all the same.
    wait_for(lambda: _open_fds_on(target) == 0, timeout=10)
    assert sorted(os.listdir(target)) == ["two"]


@contextlib.contextmanager
def no_tmpfile(tmp_path: Path) -> Iterator[Path]:
    """A directory on a file system without O_TMPFILE (bindfs, FUSE): its
    `open` says EOPNOTSUPP."""
    source, mounted = tmp_path / "source", tmp_path / "mounted"
    source.mkdir()
    mounted.mkdir()
    fuse = subprocess.Popen(["bindfs", "-f", str(source), str(mounted)])
    try:
        wait_for(lambda: os.path.ismount(mounted), timeout=20)
        yield mounted
    finally:
        if os.path.ismount(mounted):
            run("fusermount", "-u", str(mounted))
        fuse.wait(10)


@needs_root
def test_without_o_tmpfile_an_open_directory_falls_back_to_a_temporary_name(
    tmp_path: Path,
) -> None:
    with no_tmpfile(tmp_path) as mounted:
        opened = OpenDirectory(mounted)
        opened.write("a.pcap", b"x" * 1000, overwrite=False)
        assert opened.unnamed is False  # turned off for good
        with pytest.raises(FileExistsError):
            opened.write("a.pcap", b"ours", overwrite=False)
        opened.write("b.pcap", b"y", overwrite=False)
        opened.close()
        assert (mounted / "a.pcap").read_bytes() == b"x" * 1000
        assert sorted(os.listdir(mounted)) == ["a.pcap", "b.pcap"]


@needs_root
def test_without_proc_an_open_directory_falls_back_to_a_temporary_name(tmp_path: Path) -> None:
    """/proc hidden (a tmpfs over it, in a mount namespace of its own): the
    unnamed file cannot be linked from /proc/self/fd, and that is not taken
    for the directory missing."""
    script = (
        "import os, sys; from pathlib import Path; from pcapd.core.atomic import OpenDirectory\n"
        "assert not os.path.isdir('/proc/self/fd')\n"
        "d = OpenDirectory(Path(sys.argv[1])); d.write('a.pcap', b'x' * 1000, overwrite=False)\n"
        "print(d.unnamed)\n"
    )
    done = run(
        "unshare", "--mount", "sh", "-c", 'mount -t tmpfs none /proc && exec "$0" -c "$1" "$2"',
        sys.executable, script, str(tmp_path), check=False,
    )  # fmt: skip
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr
    assert (tmp_path / "a.pcap").read_bytes() == b"x" * 1000
    assert os.listdir(tmp_path) == ["a.pcap"]


def test_a_failed_write_through_an_open_directory_leaves_nothing(tmp_path: Path) -> None:
    for unnamed in (True, False):
        opened = OpenDirectory(tmp_path, unnamed=unnamed)
        with pytest.raises(TypeError):
            opened.write("x.pcap", object(), overwrite=False)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            opened.write("x.json", object())  # type: ignore[arg-type]
        opened.close()
    assert list(tmp_path.iterdir()) == []
