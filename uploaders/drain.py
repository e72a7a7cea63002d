"""The spool's drainer: retries spooled captures until every sink has them.

`SpoolDrainer` walks the spool (uploaders/spool.py) in a background thread,
oldest first; once an entry has reached every sink its `delivered` result
event (`delivered_event`) is handed to `on_delivered`, and the entry is
removed once that result was sent.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from uploaders.base import Uploader, UploadObserver, ignore_upload
from uploaders.deadline import NotAttempted
from uploaders.spool import Spool, SpoolCorrupt, SpoolError
from uploaders.spool_entry import MAX_ERROR_LEN, SpoolEntry

# The spool's logger: these lines were its own, and operators filter on it.
log = logging.getLogger("pcapd.uploaders.spool")  # the drainer logs as the spool

# Sends an entry's `delivered` result (to its request's reply_to too); False
# when it did not get there, and the entry is kept.
OnDelivered = Callable[[ResultEvent, SpoolEntry], bool]
DRAIN_JOIN_TIMEOUT = 30.0
# The namespace of `delivered` events' ids (uuid5 over the entry id); fixed.
DELIVERED_NAMESPACE = uuid.UUID("6f1f2b4e-4c1d-5d0e-9a51-2f6c0e2d8a11")
# After the error of a pending sink that a counted attempt did not try (down
# in that pass): the error is older than the entry's last attempt.
EARLIER = " (from an earlier attempt)"


def delivered_event(entry: SpoolEntry, locations: Mapping[str, str]) -> ResultEvent:
    """The `delivered` result for an entry: its spooled event, now with every
    location. Its `event_id` comes from the entry's id, so each time a kept
    entry's result is published again it is the same event (in the results
    stream once)."""
    if entry.event:
        base = ResultEvent.from_dict(entry.event)
    else:
        base = ResultEvent.for_request(
            entry.capture_request(), entry.node, "spooled", interface=entry.interface,
            sha256=entry.sha256, bytes=entry.size,
        )  # fmt: skip
    return dataclasses.replace(
        base, status="delivered", error=None, locations=dict(locations),
        event_id=uuid.uuid5(DELIVERED_NAMESPACE, entry.id).hex,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class DrainReport:
    delivered: tuple[str, ...] = ()  # entry ids delivered and removed
    remaining: tuple[str, ...] = ()  # entry ids still pending (failed, busy, skipped, unreadable)
    errors: tuple[str, ...] = ()
    # Entry id -> why, for each one this pass could not work on (unreadable,
    # corrupt, failed): kept on disk; also in `errors`, led by the id.
    failed: Mapping[str, str] = field(default_factory=dict)


class SpoolDrainer:
    """Retries spooled entries every `interval` seconds in a background thread.

    One pass walks the entries oldest first and tries each pending sink once;
    a sink that fails is not tried again for the rest of that pass, so a dead
    S3 costs one timeout per pass, not one per entry. When an entry has
    reached every sink, `on_delivered(event, entry)` is called with a
    `delivered` ResultEvent, and the entry is removed once it returns True.
    Memory: one entry's capture at a time (at most `general.maxbytes`).
    """

    def __init__(
        self,
        spool: Spool,
        uploaders: Mapping[str, Uploader] | Iterable[Uploader],
        on_delivered: OnDelivered,
        interval: float,
    ) -> None:
        self.spool = spool
        self.uploaders: dict[str, Uploader] = (
            dict(uploaders) if isinstance(uploaders, Mapping) else {u.name: u for u in uploaders}
        )
        self.on_delivered = on_delivered
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pass_lock = threading.Lock()
        self.observe: UploadObserver = ignore_upload

    def start(self) -> None:
        """Begin draining now (entries left by a previous run go first), then every interval."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="pcapd-spool-drainer", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Drain now instead of at the next interval."""
        self._wake.set()

    def stop(self, timeout: float = DRAIN_JOIN_TIMEOUT) -> None:
        """Stop the thread, waiting at most `timeout` s. A pass still running
        then finishes the entry it holds and leaves the rest (`_stop` is
        for good: this drainer drains no more, from any thread)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                event(log, "spool_drain_still_running", logging.WARNING, waited=timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.drain_once()
            except Exception:
                event(log, "spool_drain_failed", logging.ERROR, exc_info=True)
            self._wake.wait(self.interval)
            self._wake.clear()

    def drain_once(self, ids: Iterable[str] | None = None) -> DrainReport:
        """One pass over the spool (or over `ids`); safe to call from any thread."""
        wanted = set(ids) if ids is not None else None
        delivered: list[str] = []
        remaining: list[str] = []
        errors: list[str] = []
        down: set[str] = set()  # sinks that failed (or were not tried) in this pass
        with self._pass_lock:
            self.spool.refresh()  # here, off any caller's lock
            listing, unreadable = self.spool.scan()
            # Why each entry this pass could not work on stays (unreadable,
            # corrupt, failed): said again by `pcapd spool retry`.
            failed = {i: f"unreadable: {why}" for i, why in unreadable.items()
                      if wanted is None or i in wanted}  # fmt: skip
            remaining += failed
            errors += (f"{i}: {why}" for i, why in failed.items())
            for listed in listing:
                if wanted is not None and listed.id not in wanted:
                    continue
                if self._stop.is_set():
                    remaining.append(listed.id)
                    continue
                try:
                    done = self._drain_entry(listed.id, down, errors)
                except SpoolError as exc:  # its file is no capture put wrote, or unopenable
                    kind = "corrupt" if isinstance(exc, SpoolCorrupt) else "failed"
                    event(log, f"spool_entry_{kind}", logging.ERROR, id=listed.id, error=str(exc))
                    failed[listed.id] = str(exc)  # "spool entry ID: ..."
                    errors.append(str(exc))
                    done = False
                except Exception as exc:  # that entry's, never the ones after it
                    event(log, "spool_entry_failed", logging.ERROR, exc_info=True, id=listed.id)
                    failed[listed.id] = f"cannot drain: {type(exc).__name__}: {exc}"
                    errors.append(f"{listed.id}: {failed[listed.id]}")
                    done = False
                (delivered if done else remaining).append(listed.id)
        # Ids begin with the spooling time: sorted is oldest first, the
        # unreadable ones in their place.
        return DrainReport(tuple(delivered), tuple(sorted(remaining)), tuple(errors), failed)

    def _drain_entry(self, entry_id: str, down: set[str], errors: list[str]) -> bool:
        with self.spool.claim(entry_id) as held:
            entry = self.spool.get(entry_id) if held else None
            if entry is None:
                return False  # busy in another process, or delivered meanwhile
            if entry.pending and all(sink in down for sink in entry.pending):
                return False
            locations = dict(entry.locations)
            if entry.pending and not self._upload(entry, locations, down, errors):
                return False
            return self._deliver(entry, locations)

    def _upload(
        self, entry: SpoolEntry, locations: dict[str, str], down: set[str], errors: list[str]
    ) -> bool:
        """Try each pending sink once, adding to `locations`; True once none is pending."""
        artifact = self.spool.load(entry)  # SpoolCorrupt: drain_once says it
        pending = list(entry.pending)
        failures: dict[str, str] = {}  # sink -> why, this pass's
        uploaded = False
        for sink in entry.pending:
            if sink in down:
                continue
            uploader = self.uploaders.get(sink)
            if uploader is None:
                down.add(sink)
                failures[sink] = "no such uploader configured"
                continue
            began = time.monotonic()
            try:
                location = uploader.upload(artifact)
            except NotAttempted:
                # Shutdown came first: no upload, so no failed one (as in
                # deliver), and the entry keeps its last real error.
                down.add(sink)
                continue
            except Exception as exc:  # any failure keeps the entry; never the drainer
                self.observe(sink, "failed", time.monotonic() - began)
                down.add(sink)
                failures[sink] = str(exc)
                continue
            self.observe(sink, "ok", time.monotonic() - began)
            uploaded = True
            locations[location.kind] = location.url
            pending.remove(sink)
        del artifact
        if not pending:
            return True
        if not uploaded and not failures:
            return False  # nothing tried (shutdown): the entry is as it was
        # A pending sink not tried (shutdown, down) keeps its old error, said
        # to be older when this pass is an attempt (a failure); one just
        # delivered loses it (the entry keeps pending sinks' only).
        old = {s: _earlier(why) if failures else why for s, why in entry.errors.items()}
        entry = dataclasses.replace(
            entry, pending=tuple(pending), locations=locations,
            attempts=entry.attempts + (1 if failures else 0),
            errors={**old, **failures}, note=None,
        )  # fmt: skip
        self.spool.update(entry)
        errors.extend(f"{entry.id}: {sink}: {why}" for sink, why in failures.items())
        return False

    def _deliver(self, entry: SpoolEntry, locations: dict[str, str]) -> bool:
        """Hand over the `delivered` result (`hand_over`). Still claimed, so no
        other drainer uploads it again meanwhile."""
        return hand_over(self.spool, entry, locations, self.on_delivered)


def _earlier(error: str) -> str:
    """`error` marked EARLIER (once), the mark kept within MAX_ERROR_LEN."""
    if error.endswith(EARLIER):
        return error
    return error[: MAX_ERROR_LEN - len(EARLIER)] + EARLIER


def hand_over(
    spool: Spool,
    entry: SpoolEntry,
    locations: Mapping[str, str],
    on_delivered: OnDelivered,
    *,
    keep: bool = False,
) -> bool:
    """`entry` has reached every sink: its `delivered` result to
    `on_delivered`, and the entry goes only once that was sent; else it is
    kept with no sink pending, so the next pass (of this run or the next)
    only sends again. The drainer's, and a store's that shutdown had spooled:
    that one `keep`s the entry even once sent, as a result queued at shutdown
    may still be dropped at the exit (the next run sends it again, the same
    event_id)."""
    try:
        sent = on_delivered(delivered_event(entry, locations), entry)
    except Exception:
        event(log, "spool_on_delivered_failed", logging.ERROR, exc_info=True, id=entry.id)
        sent = False
    if sent and not keep:
        spool.remove(entry)
        event(log, "spool_delivered", id=entry.id, file=entry.filename, locations=locations)
        return True
    why = (
        "delivered at shutdown, its result sent; said again by the next run" if sent
        else "delivered, but its result could not be published"
    )  # fmt: skip
    kept = dataclasses.replace(
        entry, pending=(), locations=dict(locations), attempts=entry.attempts + 1, note=why
    )
    spool.update(kept)
    return sent
