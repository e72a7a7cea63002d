"""Publishing a file atomically: readers see nothing or the whole file, even
across a crash. Written under a temporary name in the same directory,
fsynced, then renamed (or linked, to refuse an existing name), and the
directory fsynced so the new name itself survives a power loss."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pcapd.core.logs import event

log = logging.getLogger("pcapd.core.atomic")

FILE_MODE = 0o640
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"
# s without a write after which an `OpenDirectory` closes its descriptor, so
# an idle directory does not pin its file system (umount: "target is busy").
IDLE_CLOSE = 5.0
PROC_FD = "/proc/self/fd"  # how an unnamed file is linked in (`_link_unnamed_at`)

# The temporary name's random part: seeded once from the system, so a name
# costs no system call (uuid4 reads urandom each time; a storm writes two
# files per capture). O_EXCL refuses a name in use all the same.
_names = random.Random()


def temporary_name(path: Path) -> Path:
    """Hidden, unique per writer, and recognisable as unfinished (`*.tmp`)."""
    return path.with_name(
        f"{TMP_PREFIX}{path.name}.{os.getpid()}.{_names.getrandbits(32):08x}{TMP_SUFFIX}"
    )


def write_atomic(
    path: Path,
    data: bytes | bytearray | memoryview,
    mode: int = FILE_MODE,
    *,
    overwrite: bool = True,
) -> None:
    """With overwrite=False an existing file is never replaced (FileExistsError),
    even by a concurrent writer of the same name: the file is published with
    link(), which fails if the name exists, instead of rename()."""
    if overwrite:
        _replace_at(None, path, data, mode)
    else:
        _link_named_at(None, path, data, mode)
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of `data`: a regular file takes it in one write, a short one goes on."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


class OpenDirectory:
    """A directory held open by descriptor, for `write_atomic`'s promise
    with fewer system calls (a storm stores two files per capture): names
    are resolved from the descriptor, not walked from `/` each time, the
    directory is fsynced without an open and a close, and a file that must
    not replace another is written unnamed (`O_TMPFILE`) and linked in once
    fsynced: nothing to unlink, nothing left behind by a crash.

    `held(check=True)` first compares the path with the descriptor (one
    `stat`): a directory removed or renamed away is opened anew, and one
    that is missing raises FileNotFoundError. A replaced descriptor is
    closed once no writer holds it. Thread-safe; one descriptor open, more
    only while replaced ones are still being written through, none after
    `idle_close` seconds without a write (opened again by the next one)."""

    def __init__(self, path: Path, *, unnamed: bool = True, idle_close: float = IDLE_CLOSE) -> None:
        self.path = path
        self.idle_close = idle_close
        self._last_use = 0.0  # monotonic: when a writer last let go of it
        self._closer: threading.Timer | None = None  # armed while a descriptor is open
        # O_TMPFILE for files that must not replace another; turned off for
        # good the first time the file system refuses it.
        self.unnamed = unnamed
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity = (0, 0)  # (st_dev, st_ino) of what _fd holds
        self._users: dict[int, int] = {}  # fd -> writers holding it
        self._retired: set[int] = set()  # replaced, closed by their last writer

    @contextlib.contextmanager
    def held(self, *, check: bool = True) -> Iterator[int]:
        fd = self._take(check)
        try:
            yield fd
        finally:
            closer = None
            with self._lock:
                self._users[fd] -= 1
                close = not self._users[fd] and fd in self._retired
                if close:
                    del self._users[fd]
                    self._retired.discard(fd)
                self._last_use = time.monotonic()
                if self._closer is None and self._fd is not None:
                    closer = self._closer_locked(self.idle_close)
            try:
                if close:
                    os.close(fd)
            finally:  # else `_closer` stays set, never started, and none is armed again
                self._start(closer)

    def _closer_locked(self, delay: float) -> threading.Timer:
        # One timer at a time, re-armed for what is left: under a storm one
        # timer thread per `idle_close`, not one per write.
        self._closer = threading.Timer(delay, self._close_if_idle)
        self._closer.daemon = True
        return self._closer

    def _start(self, closer: threading.Timer | None) -> None:
        """Start `closer` outside the lock. One that cannot start (no thread
        to be had) fails no write, done already: the descriptor stays open
        until a later write arms another."""
        if closer is None:
            return
        try:
            closer.start()
        except RuntimeError as exc:
            with self._lock:
                if self._closer is closer:
                    self._closer = None
            event(log, "directory_closer_failed", logging.WARNING, path=str(self.path),
                  error=repr(exc))  # fmt: skip

    def _close_if_idle(self) -> None:
        closer = None
        with self._lock:
            self._closer = None
            fd = self._fd
            if fd is None:
                return
            left = self._last_use + self.idle_close - time.monotonic()
            if left > 0 or self._users.get(fd):
                closer = self._closer_locked(max(left, 0.0) or self.idle_close)
            else:
                self._fd = None
                self._users.pop(fd, None)
        if closer is not None:
            self._start(closer)
        else:
            os.close(fd)

    def _take(self, check: bool) -> int:
        found = os.stat(self.path) if check or self._fd is None else None
        with self._lock:
            fd = self._fd
            if fd is None or (found is not None and (found.st_dev, found.st_ino) != self._identity):
                fd = self._open_locked(fd)
            self._users[fd] = self._users.get(fd, 0) + 1
            return fd

    def _open_locked(self, old: int | None) -> int:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        opened = os.fstat(fd)
        self._fd, self._identity = fd, (opened.st_dev, opened.st_ino)
        if old is not None:
            if self._users.get(old):
                self._retired.add(old)
            else:
                self._users.pop(old, None)
                os.close(old)
        return fd

    def write(
        self,
        name: str,
        data: bytes | bytearray | memoryview,
        mode: int = FILE_MODE,
        *,
        overwrite: bool = True,
        check: bool = True,
    ) -> None:
        """`write_atomic(self.path / name, ...)`, from the descriptor."""
        with self.held(check=check) as dir_fd:
            if overwrite:
                _replace_at(dir_fd, name, data, mode)
            elif not (self.unnamed and _link_unnamed_at(dir_fd, name, data, mode)):
                self.unnamed = False
                _link_named_at(dir_fd, name, data, mode)
            os.fsync(dir_fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, None
            if fd is not None and self._users.get(fd):
                self._retired.add(fd)
                fd = None
        if fd is not None:
            os.close(fd)


def _filled(fd: int, data: bytes | bytearray | memoryview, mode: int) -> None:
    # On the descriptor, no file object: each system call lets go of the
    # GIL, and under load every one costs a wait to get it back.
    _write_all(fd, data)
    os.fchmod(fd, mode)  # O_CREAT's mode is reduced by the umask
    os.fsync(fd)


def _link_unnamed_at(
    dir_fd: int, name: str, data: bytes | bytearray | memoryview, mode: int
) -> bool:
    """Written unnamed, fsynced, then linked as `name` (FileExistsError if it
    exists); False, nothing named, where the file system has no O_TMPFILE
    or there is no /proc to link it from."""
    try:
        fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, mode, dir_fd=dir_fd)
    except IsADirectoryError:  # a kernel without it: the flag holds O_DIRECTORY
        return False
    except OSError as exc:
        if exc.errno == errno.EOPNOTSUPP:  # a file system without it (NFS)
            return False
        raise
    try:
        _filled(fd, data, mode)
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N: how an unnamed file
        # gets a name without CAP_DAC_READ_SEARCH (AT_EMPTY_PATH needs it).
        try:
            os.link(f"{PROC_FD}/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        except FileNotFoundError:
            if os.path.isdir(PROC_FD):
                raise  # the directory itself is gone
            return False  # no /proc here: unnamed files cannot be named
    finally:
        os.close(fd)
    return True


def _link_named_at(
    dir_fd: int | None, name: str | Path, data: bytes | bytearray | memoryview, mode: int
) -> None:
    """Written under a temporary name, fsynced, linked as `name`
    (FileExistsError if it exists), the temporary name removed. `name` is
    resolved from `dir_fd`, or as a path when it is None."""
    tmp = temporary_name(Path(name))
    _named_at(dir_fd, tmp, data, mode)
    try:
        os.link(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    finally:
        # Gone already (removed by hand, say): the link's own error, if any, tells.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)


def _replace_at(
    dir_fd: int | None, name: str | Path, data: bytes | bytearray | memoryview, mode: int
) -> None:
    """Written under a temporary name, fsynced, renamed over `name` (from
    `dir_fd`, or a path when it is None)."""
    tmp = temporary_name(Path(name))
    _named_at(dir_fd, tmp, data, mode)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def _named_at(
    dir_fd: int | None, tmp: Path, data: bytes | bytearray | memoryview, mode: int
) -> None:
    """`tmp` created (never an existing one) and filled; removed on failure."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, dir_fd=dir_fd)
    try:
        try:
            _filled(fd, data, mode)
        finally:
            os.close(fd)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
