"""The spool: captures a remote sink could not take yet, kept on disk until it can.

Each entry is two files in `delivery.spool_dir`, named by a sortable id
(oldest first): `<id>.cap`, the capture bytes, and `<id>.json`, the sidecar
holding the result event, the request and which sinks still need the file.
Both are written under a temporary name, fsynced, then renamed, data first:
an entry exists once its sidecar does, so a crash never leaves a half entry
that looks whole. Entries outlive the process; a new `Spool` on the same
directory sees them.

The deliverer writes each capture here *before* its first remote attempt
(`put(hold=True)`) and removes it once delivered, so an upload cut short by
a crash is found by the next run's drainer.

The spool is bounded by `spool_max_bytes`, counted as files come and go.
When a capture does not fit, `put` raises `SpoolFull` and the caller rejects
*new* captures with that reason; spooled files are never deleted to make
room.

Several processes may share a spool (the daemon's drainer and `pcapd spool
retry`): an entry is worked on only under an exclusive `flock` on its data
file, taken without waiting.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import stat
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pcapd.core import logs
from pcapd.core.atomic import write_atomic
from pcapd.core.errors import PcapdError
from uploaders.base import Artifact
from uploaders.spool_entry import ENTRY_ID, SpoolEntry

log = logging.getLogger("pcapd.uploaders.spool")

DATA_SUFFIX = ".cap"
SIDECAR_SUFFIX = ".json"
TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 3600  # a temp file this old belongs to a writer that died
DIR_MODE = 0o700
FILE_MODE = 0o600
READ_CHUNK = 4 * 1024 * 1024
# A sidecar put writes is a few KB (the request, the event, errors of at
# most MAX_ERROR_LEN each); one larger is no sidecar of ours.
MAX_SIDECAR_BYTES = 1 << 20


class SpoolError(PcapdError):
    """The spool cannot store or hand back an entry."""


class SpoolFull(SpoolError):
    """No room for another capture: new captures are rejected with this message."""


class SpoolCorrupt(SpoolError):
    """An entry's files are unreadable or its bytes no longer match its sha256."""


class Spool:
    """A bounded directory of captures waiting for remote sinks; thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"delivery.spool_dir: cannot create {self.directory}: {exc}") from exc
        self._put_lock = threading.Lock()  # check-then-write must not race another put
        self._count_lock = threading.Lock()
        self._used = 0
        self._held: dict[str, int] = {}  # entry id -> fd holding its flock (`hold=True`)
        # (entry id, field) logged malformed: one per bad field seen, few.
        self._dropped: set[tuple[str, str]] = set()
        self._remove_stale_tmp()
        self.refresh()

    def __repr__(self) -> str:
        return f"Spool({str(self.directory)!r}, max_bytes={self.max_bytes})"

    # -- paths and sizes ---------------------------------------------------
    def data_path(self, entry_id: str) -> Path:
        return self.directory / (entry_id + DATA_SUFFIX)

    def sidecar_path(self, entry_id: str) -> Path:
        return self.directory / (entry_id + SIDECAR_SUFFIX)

    def used_bytes(self) -> int:
        """Bytes on disk in the spool: a running count, so admission costs no
        directory scan. Another process (`pcapd spool retry`) may empty the
        spool meanwhile; the count then errs high (refusing early, never
        overfilling) until the next `refresh()`, which the drainer runs each pass."""
        with self._count_lock:
            return self._used

    def refresh(self) -> int:
        """Recount from the directory (a stat per file); returns the new count."""
        total = 0
        with os.scandir(self.directory) as it:
            for item in it:
                with contextlib.suppress(FileNotFoundError):
                    if item.is_file(follow_symlinks=False):
                        total += item.stat(follow_symlinks=False).st_size
        with self._count_lock:
            self._used = total
        return total

    def _count(self, delta: int) -> None:
        with self._count_lock:
            self._used = max(0, self._used + delta)

    def check_room(self, size: int) -> None:
        """Raise SpoolFull unless a capture of `size` bytes would fit now."""
        used = self.used_bytes()
        if used + size > self.max_bytes:
            raise SpoolFull(
                f"spool full: {used} of {self.max_bytes} bytes used in {self.directory} "
                f"(delivery.spool_max_bytes), no room for {size} more; spooled captures "
                "are kept until delivered, so new captures are refused"
            )

    # -- writing -----------------------------------------------------------
    def put(
        self,
        artifact: Artifact,
        pending: Sequence[str],
        *,
        locations: Mapping[str, str] | None = None,
        event: Mapping[str, Any] | None = None,
        errors: Mapping[str, str] | None = None,
        note: str | None = None,
        hold: bool = False,
    ) -> SpoolEntry:
        """Store `artifact` for the sinks in `pending`; SpoolFull if it does not fit.
        `errors`: why each sink failed (by name); `note`: the entry's own error.

        With `hold`, the entry is claimed (its flock taken) before its sidecar
        makes it visible, so no drainer works on it until `release(entry.id)`:
        the write-ahead entry of an upload still under way."""
        if not pending:
            raise ValueError("pending: a spool entry needs at least one sink")
        with self._put_lock:
            self.check_room(artifact.size + len(json.dumps(event or {})))
            entry = SpoolEntry(
                id=f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}",
                filename=artifact.filename,
                format=artifact.format,
                sha256=artifact.sha256,
                size=artifact.size,
                node=artifact.node,
                interface=artifact.interface,
                request=artifact.request.to_dict(),
                pending=tuple(pending),
                locations=dict(locations or {}),
                event=dict(event) if event is not None else None,
                spooled_at=time.time(),
                errors=dict(errors or {}),
                note=note,
            )
            try:
                self._write_atomic(self.data_path(entry.id), artifact.data)
                if hold:
                    fd = os.open(self.data_path(entry.id), os.O_RDONLY)
                    fcntl.flock(fd, fcntl.LOCK_EX)  # new file: nobody else can hold it
                    self._held[entry.id] = fd
                self._write_atomic(self.sidecar_path(entry.id), entry.to_json().encode())
            except OSError as exc:
                self.release(entry.id)
                self._unlink(self.data_path(entry.id))
                raise SpoolError(
                    f"cannot spool {artifact.filename} in {self.directory}: {exc}"
                ) from exc
        logs.event(
            log, "spooled", logging.DEBUG if hold else logging.WARNING, id=entry.id,
            file=entry.filename, bytes=entry.size, pending=",".join(entry.pending),
            error=entry.last_error,
        )  # fmt: skip
        return entry

    def release(self, entry_id: str) -> None:
        """Let go of an entry taken with `put(hold=True)`; the drainer may take it."""
        fd = self._held.pop(entry_id, None)
        if fd is not None:
            os.close(fd)

    def update(self, entry: SpoolEntry) -> None:
        """Rewrite an entry's sidecar (progress, attempts, last error)."""
        self._write_atomic(self.sidecar_path(entry.id), entry.to_json().encode())

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a delivered entry: sidecar first, so it is never listed half-gone."""
        self._unlink(self.sidecar_path(entry.id))
        self._unlink(self.data_path(entry.id))
        self._fsync_dir()

    def _unlink(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return  # removed by another process; its count is fixed by refresh()
        self._count(-size)

    def _write_atomic(self, path: Path, data: bytes | bytearray | memoryview) -> None:
        try:
            replaced = path.stat().st_size
        except FileNotFoundError:
            replaced = 0
        write_atomic(path, data, FILE_MODE)
        self._count(memoryview(data).nbytes - replaced)

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - STALE_TMP_SECONDS
        for path in (*self.directory.glob(TMP_PREFIX + "*"), *self.directory.glob(".*.tmp")):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.unlink()

    # -- reading -----------------------------------------------------------
    def list(self) -> list[SpoolEntry]:
        """Every readable entry, oldest first; unreadable sidecars are logged."""
        return self.scan()[0]

    def scan(self) -> tuple[builtins.list[SpoolEntry], dict[str, str]]:
        """Every readable entry, oldest first, and each unreadable one's id ->
        why (logged too): kept on disk, so still spooled for whoever counts."""
        entries: builtins.list[SpoolEntry] = []
        unreadable: dict[str, str] = {}
        for path in sorted(self.directory.glob("*" + SIDECAR_SUFFIX)):
            if path.name.startswith(TMP_PREFIX):
                continue
            entry_id = path.name[: -len(SIDECAR_SUFFIX)]
            entry = self._read(entry_id, unreadable)
            if entry is not None:
                entries.append(entry)
        return entries, unreadable

    def holds(self, entry_id: str) -> bool:
        """An entry of that id is here (readable or not)."""
        return ENTRY_ID.fullmatch(entry_id) is not None and self.sidecar_path(entry_id).exists()

    def get(self, entry_id: str) -> SpoolEntry | None:
        return self._read(entry_id, {})

    def _read(self, entry_id: str, unreadable: dict[str, str]) -> SpoolEntry | None:
        """The entry, or None: gone (delivered meanwhile by another process),
        or unreadable (logged, and why in `unreadable`)."""
        try:
            text = read_regular(self.sidecar_path(entry_id), MAX_SIDECAR_BYTES)
            entry, dropped = SpoolEntry.from_sidecar(text, entry_id)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, RecursionError, SpoolError) as exc:
            why = "sidecar: JSON nested too deep" if isinstance(exc, RecursionError) else str(exc)
            unreadable[entry_id] = why
            logs.event(log, "spool_entry_unreadable", logging.ERROR, id=entry_id, error=why)
            return None
        for name, why in dropped.items():
            # Once per entry and field: each pass reads an entry twice, and one
            # whose sinks are all down is not rewritten (without the field).
            if (entry_id, name) not in self._dropped:
                self._dropped.add((entry_id, name))
                logs.event(
                    log, "spool_entry_field_dropped", logging.WARNING, id=entry_id,
                    field=name, error=f"{why}; dropped, the entry drains without it",
                )  # fmt: skip
        return entry

    def depth(self) -> tuple[int, float | None]:
        """(entries waiting, when the oldest was captured: its file's mtime, or
        None when empty), from one directory scan: what /metrics shows."""
        count, oldest = 0, None
        with os.scandir(self.directory) as it:
            for item in it:
                if item.name.startswith(TMP_PREFIX) or not item.name.endswith(DATA_SUFFIX):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    mtime = item.stat(follow_symlinks=False).st_mtime
                    count += 1
                    oldest = mtime if oldest is None else min(oldest, mtime)
        return count, oldest

    def orphans(self) -> builtins.list[Path]:
        """Data files without a sidecar: a writer died between the two renames."""
        return [
            path
            for path in sorted(self.directory.glob("*" + DATA_SUFFIX))
            if not path.name.startswith(TMP_PREFIX)
            and not self.sidecar_path(path.name[: -len(DATA_SUFFIX)]).exists()
        ]

    def load(self, entry: SpoolEntry) -> Artifact:
        """The entry's capture as an Artifact, its bytes checked against sha256."""
        path = self.data_path(entry.id)
        try:
            # As claim() opened it: the file may have been swapped since.
            with os.fdopen(open_regular(path), "rb") as handle:
                data = bytearray(os.fstat(handle.fileno()).st_size)
                view = memoryview(data)
                offset = 0
                while offset < len(data):
                    got = handle.readinto(view[offset : offset + READ_CHUNK])
                    if not got:
                        break
                    offset += got
                view.release()
        except SpoolCorrupt as exc:
            raise SpoolCorrupt(f"spool entry {entry.id}: {exc}") from None
        except OSError as exc:
            raise SpoolCorrupt(f"spool entry {entry.id}: cannot read {path}: {exc}") from exc
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry.sha256 or len(data) != entry.size:
            raise SpoolCorrupt(
                f"spool entry {entry.id}: {path} has sha256 {digest} ({len(data)} bytes), "
                f"expected {entry.sha256} ({entry.size} bytes)"
            )
        return Artifact(
            data=data,
            filename=entry.filename,
            format=entry.format,
            sha256=entry.sha256,
            request=entry.capture_request(),
            node=entry.node,
            interface=entry.interface,
        )

    @contextlib.contextmanager
    def claim(self, entry_id: str) -> Iterator[bool]:
        """Exclusive hold on one entry across threads and processes; yields False
        when someone else holds it (or it is gone), without waiting."""
        path = self.data_path(entry_id)
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            yield False
            return
        except SpoolCorrupt as exc:
            raise SpoolCorrupt(f"spool entry {entry_id}: {exc}") from None
        except OSError as exc:  # EACCES, EMFILE ...: the file may be fine
            raise SpoolError(f"spool entry {entry_id}: cannot open {path}: {exc}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


def open_regular(path: Path) -> int:
    """A read-only descriptor of `path`, a regular file: never waiting on a
    FIFO nor following a link (only put's own files are spool files);
    SpoolCorrupt for anything else, OSError as os.open raises it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SpoolCorrupt(f"{path} is a symbolic link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise SpoolCorrupt(f"{path} is not a regular file")
    return fd


def read_regular(path: Path, limit: int) -> bytes:
    """The bytes of `path` (a regular file, `open_regular`), ValueError past `limit`."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"sidecar: more than {limit} bytes, no sidecar pcapd writes")
    return data
