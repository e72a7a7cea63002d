"""One capture to every configured sink, in order, with retries and the spool.

`Deliverer.deliver(artifact, event)` runs each uploader in the configured
order under the retry policy. The capture is written ahead to the spool
before the first remote attempt; if a remote sink still fails, it stays
there with its `spooled` result for the drainer. A capture has one entry,
whoever writes it first: the store, or shutdown that cannot wait for it
(`spool_unfinished`, through the capture's `Flight`). Once shutdown has given
up waiting (`abandon`), a store tries no remote sink: local disk, then the
spool, is all it does. Without a spool entry
(spool full, disk full) the outcome is `partial` when some sink has the file
(local disk, say) and `failed` when none has. A capture that was taken is
never dropped silently: the outcome always says where it is, or why it is
nowhere.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pcapd.core import logs
from pcapd.core.events import ResultEvent
from pcapd.core.request import CaptureRequest
from uploaders.base import Artifact, Location, Uploader, UploadObserver, ignore_upload
from uploaders.deadline import NOT_ATTEMPTED, NotAttempted
from uploaders.drain import OnDelivered, hand_over
from uploaders.retry import RetryPolicy
from uploaders.spool import Spool, SpoolError
from uploaders.spool_entry import SpoolEntry, join_errors

if TYPE_CHECKING:
    pass

log = logging.getLogger("pcapd.uploaders.deliver")

OUTCOMES = ("ok", "spooled", "partial", "failed")

# What `spool_unfinished` made of a store shutdown cannot wait for.
Unfinished = Literal["spooled", "finished", "lost"]


@dataclass(slots=True, eq=False)
class Flight:
    """One capture's store, as `deliver` and shutdown (`spool_unfinished`)
    share it: its one spool entry, written ahead by the store or first by
    shutdown, whichever comes first; the sinks that have it so far; whether
    the store has its outcome; and once shutdown has spooled it and
    published `spooled`, who is told of a delivery that ends after all
    (`then`)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    entry: SpoolEntry | None = None  # held (flocked) until `Deliverer.release`
    locations: dict[str, str] = field(default_factory=dict)  # kind -> where, stored so far
    finished: bool = False  # the store's outcome is known: it publishes it
    then: OnDelivered | None = None


@dataclass(frozen=True, slots=True)
class DeliveryOutcome:
    status: str  # one of OUTCOMES
    locations: Mapping[str, str] = field(default_factory=dict)  # kind -> path/URI/URL
    error: str | None = None  # every sink's failure, `sink: reason; ...`
    spool_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in OUTCOMES:
            raise ValueError(f"status {self.status!r} not one of {OUTCOMES}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def durable(self) -> bool:
        """Stored somewhere that survives a restart: the request may be acked."""
        return bool(self.locations) or self.spool_id is not None

    def apply(self, event: ResultEvent) -> ResultEvent:
        """`event` with this outcome's locations, and status/error unless all
        went well (after the capture's own error, if it failed mid-way)."""
        if self.ok:
            return dataclasses.replace(event, locations=dict(self.locations))
        return dataclasses.replace(
            event, status=self.status, error=_after(event, self.error),
            locations=dict(self.locations),
        )  # fmt: skip


def _after(event: ResultEvent, error: str | None) -> str | None:
    """The event's own error (a capture that failed mid-way), then the sinks'."""
    return "; ".join(e for e in (event.error, error) if e) or None


class Deliverer:
    """Thread-safe as long as its uploaders are (the provided ones are): the
    controller calls `deliver` from its bounded pool of upload workers."""

    def __init__(
        self,
        uploaders: Sequence[Uploader],
        retry: RetryPolicy,
        spool: Spool | None,
        abandon: threading.Event | None = None,
    ) -> None:
        names = [u.name for u in uploaders]
        if len(set(names)) != len(names):
            raise ValueError(f"uploaders: duplicate names in {names}")
        self.uploaders = tuple(uploaders)
        self.retry = retry
        self.spool = spool
        # Set when shutdown can wait no longer: Deadlined attempts give up at once.
        self.abandon = abandon if abandon is not None else threading.Event()
        self.observe: UploadObserver = ignore_upload

    @property
    def has_remote(self) -> bool:
        return any(u.remote for u in self.uploaders)

    @property
    def remote_names(self) -> list[str]:
        """The sinks a spool entry waits for."""
        return [u.name for u in self.uploaders if u.remote]

    def check(self, request: CaptureRequest) -> None:
        """RequestError from the first sink that will not take `request` as
        asked (a message's S3 fields the site does not allow)."""
        for uploader in self.uploaders:
            uploader.check(request)

    def disk_targets(self) -> tuple[tuple[str, str], ...]:
        """(label, directory) for every place on this node a capture is written
        before it is stored: sinks on local disk, and the spool when remote
        sinks may fail into it. Admission checks their free space."""
        local = tuple(
            (u.name, directory) for u in self.uploaders if (directory := u.writes_to()) is not None
        )
        spool = (("spool", str(self.spool.directory)),) if self.spool and self.has_remote else ()
        return local + spool

    def deliver(
        self, artifact: Artifact, event: ResultEvent | None = None, flight: Flight | None = None
    ) -> DeliveryOutcome:
        """Upload to every sink; spool for remote sinks that still fail.

        Before the first remote attempt the capture is written ahead to the
        spool (held, so the drainer leaves it alone): a process killed while
        an upload hangs leaves an entry the next run's drainer delivers. It is
        removed once every remote sink has the file, or rewritten with what is
        still pending. `event` is the result the controller is about to
        publish; it is stored with the entry so the drainer can publish it as
        `delivered`, and, final, handed to each sink that has a copy (`stored`).
        `flight`: the capture's, when shutdown may spool it meanwhile; its
        entry is then this store's write-ahead one, and a delivery that ends
        after shutdown published `spooled` is told to `flight.then`. Given a
        flight, the entry stays held until the caller has published the
        outcome (`release`): no drainer says `delivered` before it.
        """
        own = flight is None
        flight = flight if flight is not None else Flight()
        # The one list of where it is so far; shutdown reads it (under the lock).
        locations = flight.locations
        copies: list[tuple[Uploader, Location]] = []
        failures: dict[str, str] = {}  # sink -> why it failed (or was not tried)
        failed_remote: list[str] = []
        skipped: list[str] = []  # remote sinks not tried at all: shutdown
        spool_error: str | None = None
        tried_ahead = False
        try:
            for uploader in self.uploaders:
                if uploader.remote and not tried_ahead:
                    tried_ahead = True
                    spool_error = self._write_ahead(artifact, event, flight)
                began = time.monotonic()
                try:
                    if uploader.remote and self.abandon.is_set():
                        raise NotAttempted()  # any sink, Deadlined or not
                    location = self.retry.run(
                        functools.partial(uploader.upload, artifact),
                        f"{uploader.name}:{artifact.filename}",
                    )
                except NotAttempted as exc:  # no upload, so no failed one: said once, below
                    failures[uploader.name] = str(exc)
                    failed_remote.append(uploader.name)
                    skipped.append(uploader.name)
                    continue
                except Exception as exc:  # any failure: spool it, never lose the capture
                    self.observe(uploader.name, "failed", time.monotonic() - began)
                    failures[uploader.name] = str(exc)
                    logs.event(
                        log, "upload_failed", logging.WARNING, sink=uploader.name,
                        file=artifact.filename, error=str(exc),
                    )  # fmt: skip
                    if uploader.remote:
                        failed_remote.append(uploader.name)
                    continue
                self.observe(uploader.name, "ok", time.monotonic() - began)
                with flight.lock:
                    locations[location.kind] = location.url
                copies.append((uploader, location))
            ahead, then = self._finished(flight)
            error = join_errors(failures)
            spool_id = self._settle_ahead(
                ahead, failed_remote, locations, failures, error, event, then
            )
        finally:
            self._finished(flight)
            if own:
                self.release(flight)
        if not failures:
            outcome = DeliveryOutcome("ok", dict(locations))
        else:
            if spool_id is not None:
                # In the spool (its `spooled` line names the sinks pending):
                # written ahead, or by shutdown after a write-ahead found no room.
                status = "spooled"
            else:
                if failed_remote and spool_error is not None:
                    error += f"; not spooled: {spool_error}"
                if skipped:
                    logs.event(
                        log, "upload_skipped", logging.WARNING, file=artifact.filename,
                        sinks=",".join(skipped), error=NOT_ATTEMPTED,
                    )  # fmt: skip
                # Stored somewhere, not everywhere, and not spooled: or nowhere.
                status = "partial" if locations else "failed"
            outcome = DeliveryOutcome(status, dict(locations), error, spool_id)
        if event is not None:
            self._stored(copies, outcome.apply(event))
        return outcome

    @staticmethod
    def _finished(flight: Flight) -> tuple[SpoolEntry | None, OnDelivered | None]:
        """The store's outcome is known: from now on shutdown leaves it to the
        store. Its entry, and whom shutdown asked to tell of a delivery."""
        with flight.lock:
            flight.finished = True
            return flight.entry, flight.then

    def release(self, flight: Flight) -> None:
        """Let the drainer have `flight`'s entry, if it has one: once the
        store's outcome is published (`deliver` given a flight)."""
        with flight.lock:
            entry = flight.entry
        if entry is not None:
            assert self.spool is not None
            self.spool.release(entry.id)

    @staticmethod
    def _stored(copies: Sequence[tuple[Uploader, Location]], result: ResultEvent) -> None:
        """Each sink that has a copy keeps what it keeps beside it (the local
        sidecar); a failure there costs a log line, not the capture."""
        for uploader, location in copies:
            try:
                uploader.stored(location, result)
            except OSError as exc:
                logs.event(log, "sidecar_failed", logging.ERROR, id=result.id, error=str(exc))

    def spool_unfinished(
        self, artifact: Artifact, event: ResultEvent, flight: Flight, then: OnDelivered
    ) -> tuple[Unfinished, ResultEvent]:
        """A store under way that shutdown cannot wait for, in the spool for
        every remote sink: "spooled", with `event` as its `spooled` result,
        now with the locations the store has so far. Its one entry: written
        ahead already, or now (held, for the store to take as its own);
        `then` is told if the store delivers after all. "finished": the
        store has its outcome and publishes it. "lost" (logged): no spool,
        or it cannot take the capture."""
        with flight.lock:
            if flight.finished:
                return "finished", event
            event = dataclasses.replace(event, locations=dict(flight.locations))
            if self.spool is None or not self.has_remote:
                why = "no spool configured" if self.has_remote else "no remote sink, so no spool"
                return self._lost(artifact, event, why), event
            if flight.entry is None:
                try:
                    flight.entry = self.spool.put(
                        artifact, self.remote_names, locations=flight.locations,
                        event=event.as_dict(), note=event.error, hold=True,
                    )  # fmt: skip
                except SpoolError as exc:
                    return self._lost(artifact, event, str(exc)), event
            flight.then = then
        return "spooled", event

    @staticmethod
    def _lost(artifact: Artifact, event: ResultEvent, why: str) -> Unfinished:
        """Shutdown cannot keep a store still under way: said, with where the
        capture is so far, since no result may follow (the process exits)."""
        logs.event(
            log, "capture_lost", logging.ERROR, id=event.id, interface=event.interface,
            file=artifact.filename, locations=dict(event.locations),
            error=f"not spooled at shutdown ({why}) while its store still runs: "
            "what that store has not stored when the process exits is lost",
        )  # fmt: skip
        return "lost"

    def _write_ahead(
        self, artifact: Artifact, event: ResultEvent | None, flight: Flight
    ) -> str | None:
        """None once `flight` has its entry, or why not: a full or failing
        spool does not stop the upload, it only means nothing is left if the
        upload fails too. An entry shutdown wrote first is taken as it is,
        with the locations so far."""
        if self.spool is None:
            return "no spool configured"
        with flight.lock:
            locations = dict(flight.locations)
            if flight.entry is not None:
                entry = dataclasses.replace(flight.entry, locations=locations)
                try:
                    self.spool.update(entry)
                except OSError as exc:  # the entry stands, without them
                    logs.event(
                        log, "spool_update_failed", logging.ERROR, id=entry.id, error=str(exc)
                    )
                    return None
                flight.entry = entry
                return None
            error = "write-ahead: upload under way (the process stopped before it finished)"
            try:
                flight.entry = self.spool.put(
                    artifact, self.remote_names, locations=locations, note=error, hold=True,
                    event=self._spooled(event, error, locations),
                )  # fmt: skip
            except SpoolError as exc:
                logs.event(
                    log, "spool_failed", logging.ERROR, file=artifact.filename, error=str(exc)
                )
                return str(exc)
        return None

    def _settle_ahead(
        self,
        ahead: SpoolEntry | None,
        failed_remote: list[str],
        locations: dict[str, str],
        failures: Mapping[str, str],
        error: str,
        event: ResultEvent | None,
        then: OnDelivered | None,
    ) -> str | None:
        """Remove the write-ahead entry, or rewrite it with the sinks still pending;
        the spool id of what is left, if anything. Spooled by shutdown, which
        published `spooled`, a delivery after all is told to `then` as the
        drainer tells it (`delivered`), and the entry kept with no sink
        pending: the publisher may yet drop it at the exit, and the next
        run's drainer sends the same event again (readers dedupe by event_id)."""
        if ahead is None or self.spool is None:
            return None
        if not failed_remote:
            try:
                if then is None:
                    self.spool.remove(ahead)
                else:  # kept: the result sent now may be lost at the process's exit
                    hand_over(self.spool, ahead, locations, then, keep=True)
            except OSError as exc:  # delivered all the same; the drainer resends it
                logs.event(log, "spool_remove_failed", logging.ERROR, id=ahead.id, error=str(exc))
            return None
        # A failed local sink is never pending: its error is the note, so the
        # entry's last error reads as `error`, the result's, until the drainer's.
        local = join_errors({s: why for s, why in failures.items() if s not in failed_remote})
        entry = dataclasses.replace(
            ahead, pending=tuple(failed_remote), locations=dict(locations),
            event=self._spooled(event, error, locations), errors=failures, note=local or None,
        )  # fmt: skip
        try:
            self.spool.update(entry)
        except OSError as exc:
            # The write-ahead sidecar still stands (every remote sink pending):
            # the drainer sends the file again to the sinks that have it.
            logs.event(log, "spool_update_failed", logging.ERROR, id=ahead.id, error=str(exc))
        logs.event(
            log, "spooled", logging.WARNING, id=entry.id, file=entry.filename,
            pending=",".join(entry.pending), error=error,
        )  # fmt: skip
        return entry.id

    @staticmethod
    def _spooled(
        event: ResultEvent | None, error: str, locations: Mapping[str, str]
    ) -> dict[str, Any] | None:
        if event is None:
            return None
        return dataclasses.replace(
            event, status="spooled", error=_after(event, error), locations=dict(locations)
        ).as_dict()
