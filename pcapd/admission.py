"""Admission: what a capture must fit before it starts, and the `Reservation`
that holds it until the capture is stored.

Four bounds, checked together under one lock, so two requests racing for
the last room cannot both get it:

- slots: at most `general.max_concurrent` captures running;
- memory: the `bytes` bound of every capture running, and the size of every
  file awaiting upload, within `general.max_memory` less what the lookback
  rings hold (reserved once, at start);
- spool: with remote sinks, each admitted capture must fit the spool should
  they fail, alongside what running captures were promised (the spool never
  drops what it holds, so new captures are refused instead);
- disk: real free space (statvfs) on each filesystem the capture is written
  to (local disk, spool), less what was promised to captures not yet stored.
  The free space is looked at most every `DISK_LOOK_INTERVAL` (two syscalls
  per target, each a wait for the GIL under a storm); in between, what
  captures released (stored, so written) counts as gone, and a refusal is
  made only on a fresh look.

Nothing queues: over a bound, `reserve` raises `Refused` with the reason the
sender reads. A `Reservation` is released exactly once, whichever of the
paths that end a capture (stored, rejected, crashed, shut down) gets there
first; the rest find it released. Memory: one small object per capture and
two integers per filesystem.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence

from pcapd.core.config import GeneralConfig
from pcapd.core.errors import PcapdError
from uploaders.spool import Spool, SpoolError

# (st_dev, bytes free) for a directory: `disk_space`, or a stand-in in tests.
DiskSpace = Callable[[str], tuple[int, int]]

DISK_LOOK_INTERVAL = 0.25  # s between looks at a target's free space


class Refused(PcapdError):
    """A capture does not fit a bound now; the message names the bound."""


def disk_space(directory: str) -> tuple[int, int]:
    """(st_dev, bytes free to unprivileged writers) for `directory`, or for its
    nearest existing parent when it is not made yet (LocalUploader makes it).
    One stat and one statvfs; no scan."""
    path = os.path.abspath(directory)
    while True:
        try:
            st, vfs = os.stat(path), os.statvfs(path)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                raise
            path = parent
            continue
        return st.st_dev, vfs.f_bavail * vfs.f_frsize


class Admission:
    """The counters behind the bounds; thread-safe. `targets` are the
    (label, directory) pairs a capture is written to before it is stored;
    `spool` is the spool remote sinks fail into, or None without remote sinks."""

    def __init__(
        self,
        general: GeneralConfig,
        spool: Spool | None,
        targets: Sequence[tuple[str, str]],
        space: DiskSpace = disk_space,
        rings: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rings`: bytes the lookback rings hold for good, out of max_memory."""
        if rings > general.max_memory:
            raise Refused(f"lookback rings need {rings} bytes, more than "
                          f"max_memory={general.max_memory}")  # fmt: skip
        self.max_concurrent = general.max_concurrent
        self.max_memory = general.max_memory
        self.rings = rings
        self.spool = spool
        self.targets = tuple(targets)
        self._space = space
        self._lock = threading.Lock()
        self._accepting = True
        self.active = 0  # slots taken
        self.reserved = 0  # bytes of max_memory held
        self.spool_promised = 0  # spool bytes admitted captures may still need
        self.disk_promised: dict[int, int] = {}  # st_dev -> bytes promised, not yet stored
        self._disk_free: dict[int, int] = {}  # st_dev -> bytes free at the last look
        self._clock = clock
        self._looked: dict[str, tuple[float, int]] = {}  # directory -> (when, st_dev)
        # st_dev -> bytes released since its last look: promised, so maybe written.
        self._disk_since: dict[int, int] = {}

    def free_slots(self) -> int:
        with self._lock:
            return max(0, self.max_concurrent - self.active) if self._accepting else 0

    def close(self) -> None:
        """Shutting down: every later `reserve` is refused."""
        with self._lock:
            self._accepting = False

    @property
    def idle(self) -> bool:
        """Nothing reserved: no slot, no memory, no spool or disk promise."""
        with self._lock:
            return not (
                self.active or self.reserved or self.spool_promised
                or any(self.disk_promised.values())
            )  # fmt: skip

    def reserve(self, nbytes: int) -> Reservation:
        """A slot, `nbytes` of memory, as much on each disk the capture is
        written to and, with remote sinks, in the spool; or Refused, saying why."""
        with self._lock:
            if not self._accepting:
                raise Refused("shutting down: not taking new captures")
            if self.active >= self.max_concurrent:
                raise Refused(f"max_concurrent={self.max_concurrent} captures already running")
            if self.rings + self.reserved + nbytes > self.max_memory:
                rings = f" and {self.rings} by lookback rings" if self.rings else ""
                raise Refused(
                    f"bytes={nbytes} does not fit: {self.reserved} of "
                    f"max_memory={self.max_memory} held by captures running or "
                    f"awaiting upload{rings}"
                )
            self._check_spool(nbytes)
            disk = self._check_disk(nbytes)
            reservation = Reservation(self, nbytes, nbytes if self.spool else 0, disk)
            self.active += 1
            self.reserved += nbytes
            self.spool_promised += reservation.spool
            self._promise_disk(reservation, nbytes)
        return reservation

    def _check_spool(self, nbytes: int) -> None:
        """Refused unless `nbytes` more fits the spool beside what was promised.
        Lock held."""
        if self.spool is None:
            return
        try:
            self.spool.check_room(nbytes + self.spool_promised)
        except SpoolError as exc:
            promised = self.spool_promised
            why = f" ({promised} of them promised to running captures)" if promised else ""
            raise Refused(f"{exc}{why}") from None

    def _check_disk(self, nbytes: int) -> tuple[tuple[int, int], ...]:
        """(st_dev, copies) for every filesystem written to, each with room for
        its copies; Refused when one has not, on a fresh look. Lock held."""
        copies = self._copies(fresh=False)
        if self._disk_short(copies, nbytes) is not None:
            copies = self._copies(fresh=True)
            if (short := self._disk_short(copies, nbytes)) is not None:
                raise Refused(short)
        return tuple((dev, count) for dev, (count, _) in copies.items())

    def _copies(self, *, fresh: bool) -> dict[int, tuple[int, list[str]]]:
        """st_dev -> (copies, target names) of every target, each filesystem's
        free space looked at again if `fresh` or last seen too long ago."""
        copies: dict[int, tuple[int, list[str]]] = {}
        now = self._clock()
        for label, directory in self.targets:
            when, dev = self._looked.get(directory, (None, 0))
            if fresh or when is None or now - when >= DISK_LOOK_INTERVAL:
                try:
                    dev, free = self._space(directory)
                except OSError as exc:  # what cannot be measured cannot be promised
                    raise Refused(
                        f"cannot check free space in {directory} ({label}): {exc}"
                    ) from None
                self._looked[directory] = (now, dev)
                self._disk_free[dev] = free
                self._disk_since[dev] = 0
            count, names = copies.get(dev, (0, []))
            copies[dev] = (count + 1, [*names, f"{directory} ({label})"])
        return copies

    def _disk_short(self, copies: dict[int, tuple[int, list[str]]], nbytes: int) -> str | None:
        """Why one filesystem of `copies` has no room for `nbytes` a copy; None: all have."""
        for dev, (count, names) in copies.items():
            need, promised = count * nbytes, self.disk_promised.get(dev, 0)
            free = self._disk_free[dev] - self._disk_since.get(dev, 0)
            if need > free - promised:
                return (
                    f"disk full: {free} bytes free on the filesystem of "
                    f"{', '.join(names)}, bytes={nbytes} needs {need}"
                    + (f" ({promised} promised to captures not yet stored)" if promised else "")
                )  # fmt: skip
        return None

    def _promise_disk(self, reservation: Reservation, nbytes: int) -> None:
        """Promise `nbytes` per copy on each disk of `reservation`. Lock held."""
        for dev, count in reservation.disk:
            change = count * (nbytes - reservation.disk_each)
            self.disk_promised[dev] = self.disk_promised.get(dev, 0) + change
        reservation.disk_each = nbytes


class Reservation:
    """What one admitted capture holds: a slot while it captures; memory and
    disk for its `bytes` bound, then for its file once captured; spool room
    until it is stored. Changed only under the admission's lock."""

    def __init__(
        self, admission: Admission, nbytes: int, spool: int, disk: tuple[tuple[int, int], ...]
    ) -> None:
        self._admission = admission
        self.has_slot = True
        self.held = nbytes  # bytes of max_memory
        self.spool = spool  # bytes of spool room promised
        self.disk = disk  # (st_dev, copies written there)
        self.disk_each = 0  # bytes promised per copy
        self.released = False

    def free_slot(self) -> None:
        """The capture ended: its slot goes to the next one (idempotent)."""
        with self._admission._lock:
            self._free_slot()

    def _free_slot(self) -> None:
        """Lock held. Each method takes the lock once: under a storm a taken
        lock costs the caller a wait for the GIL too."""
        if self.has_slot:
            self.has_slot = False
            self._admission.active -= 1

    def keep(self, nbytes: int) -> None:
        """The capture ended with a file of `nbytes`: its slot is free, and it
        holds that much memory and disk from now on, not its `bytes` bound.
        Only the slot once released."""
        admission = self._admission
        with admission._lock:
            self._free_slot()
            if self.released:
                return
            admission.reserved += nbytes - self.held
            self.held = nbytes
            admission._promise_disk(self, nbytes)

    def release(self) -> bool:
        """Give everything back; True only for the call that did (exactly once)."""
        admission = self._admission
        with admission._lock:
            self._free_slot()
            if self.released:
                return False
            self.released = True
            admission.reserved -= self.held
            admission.spool_promised -= self.spool
            for dev, count in self.disk:  # written now, unless it was never stored
                since = admission._disk_since
                since[dev] = since.get(dev, 0) + count * self.disk_each
            admission._promise_disk(self, 0)
            self.held = self.spool = 0
        return True
