"""Publishing a file atomically: readers see nothing or the whole file, even
across a crash. Written under a temporary name in the same directory,
fsynced, then renamed (or linked, to refuse an existing name), and the
directory fsynced so the new name itself survives a power loss."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

FILE_MODE = 0o640
TMP_PREFIX = "."
TMP_SUFFIX = ".tmp"

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
    tmp = temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            # On the descriptor, no file object: each system call lets go of
            # the GIL, and under load every one costs a wait to get it back.
            _write_all(fd, data)
            os.fchmod(fd, mode)  # O_CREAT's mode is reduced by the umask
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.rename(tmp, path)
        else:
            os.link(tmp, path)
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of `data`: a regular file takes it in one write, a short one goes on."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view) :]


def fsync_dir(directory: Path) -> None:
    """Make renames and unlinks in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
