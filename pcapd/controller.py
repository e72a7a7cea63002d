"""The controller: from a delivered request to stored files and result events.

`handle(delivery)` is called by the trigger threads and returns quickly: it
parses, matches the node, checks signature, duplicates and upload policy,
resolves interfaces, admits each capture under the global bounds and starts
one capture thread per (request, interface). Nothing queues: over
`max_concurrent` or `max_memory` the capture is rejected with the reason.

A finished capture frees its slot at once and is handed to a bounded pool of
upload workers, so a slow sink never holds up capturing. Memory held by
captures, running or waiting for upload, stays within `max_memory`: each
capture reserves its `bytes` bound before it starts, keeps the size of its
file once it ends, and releases it when the file is stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from typing import Any

import pcap
import redis

from pcapd.core.config import Config
from pcapd.core.events import ResultEvent, iso_utc
from pcapd.core.logs import event
from pcapd.core.request import (
    _CHANNEL_RE,
    _ID_RE,
    CaptureRequest,
    RequestError,
    addressed_to,
    decode_body,
    parse_fields,
    resolve_interfaces,
)
from pcapd.core.results import ResultPublisher
from pcapd.dedup import RecentIds, RedisSeen, SharedSeen
from pcapd.engine import (
    CaptureError,
    CaptureLimits,
    CaptureOutcome,
    HandlePool,
    available_devices,
    capture,
    close_handle,
    set_filter,
)
from pcapd.packetdebug import packet_logger
from pcapd.signing import replayed, verify
from triggers.base import Delivery
from uploaders.base import Artifact, FileNamer, Location
from uploaders.deliver import Deliverer
from uploaders.local import LocalUploader
from uploaders.policy import check_overrides
from uploaders.spool import SpoolError

log = logging.getLogger("pcapd.controller")

# Bodies up to this size are parsed for their id and reply_to when refused
# unread (overloaded): a real request is a few hundred bytes, and parsing a
# larger one would slow the thread that drains the source.
SALVAGE_MAX_BYTES = 4096
ABANDON_WAIT = 2.0  # seconds for abandoned uploads to record what is pending


@dataclass(slots=True)
class _Job:
    """The captures one delivery started. The delivery is acked when every one
    is stored (uploaded or spooled) or reported; if one was captured and then
    stored nowhere, it is released instead, so a durable source delivers the
    request again."""

    delivery: Delivery
    remaining: int
    durable: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: Callable[[bool], None] | None = None  # called once, with `durable`

    def done(self, durable: bool) -> None:
        with self.lock:
            self.remaining -= 1
            self.durable = self.durable and durable
            finished = self.remaining == 0
        if not finished:
            return
        try:
            (self.delivery.ack if self.durable else self.delivery.release)()
        except Exception:  # the source logs its own trouble; a worker must not die
            event(
                log,
                "delivery_settle_failed",
                logging.ERROR,
                exc_info=True,
                source=self.delivery.source,
            )
        if self.finished is not None:
            self.finished(self.durable)


def _reply_to(fields: Mapping[str, Any] | None) -> str | None:
    """The body's reply_to, when it is a valid channel name, whatever else is wrong."""
    value = fields.get("reply_to") if fields else None
    return value if isinstance(value, str) and _CHANNEL_RE.fullmatch(value) else None


class Controller:
    def __init__(
        self,
        config: Config,
        *,
        publisher: ResultPublisher,
        deliverer: Deliverer,
        pool: HandlePool,
        devices: Callable[[], set[str]] = available_devices,
        clock: Callable[[], float] = time.time,
        dedup_redis: redis.Redis | None = None,
    ) -> None:
        """`dedup_redis`: where seen request ids and signatures are kept, so
        they hold across restarts (memory only when None, or while it is away)."""
        self.config = config
        self.node = config.general.node
        self._names = FileNamer(config.general.naming)
        self.publisher = publisher
        self.deliverer = deliverer
        self.pool = pool
        self.devices = devices
        self.clock = clock
        security = config.security
        # Signatures stay replayable for 2 x max_skew (a ts that far ahead is accepted).
        windows = {"id": security.dedup_window,
                   "sig": max(security.dedup_window, 2 * security.max_skew)}  # fmt: skip
        self.recent_ids: SharedSeen
        self.recent_sigs: SharedSeen
        self.recent_ids, self.recent_sigs = (
            RecentIds(windows[kind]) if dedup_redis is None
            else RedisSeen(
                dedup_redis, prefix=security.dedup_prefix, kind=kind, node=self.node,
                window_seconds=windows[kind],
            )
            for kind in ("id", "sig")
        )  # fmt: skip
        self._lock = threading.Lock()
        self._active = 0
        self._reserved = 0
        self._capturing: set[threading.Thread] = set()
        self._handling = 0  # handle() calls in progress
        # The spool, when there are remote sinks whose failures it takes.
        self._spool = deliverer.spool if deliverer.has_remote else None
        self._spool_promised = 0  # spool bytes admitted captures may still need
        # Where a capture is written before it is stored, for the free-space check.
        self._disk_targets: tuple[tuple[str, str], ...] = tuple(
            ("local", str(u.directory)) for u in deliverer.uploaders if isinstance(u, LocalUploader)
        ) + ((("spool", str(self._spool.directory)),) if self._spool is not None else ())
        self._disk_free: dict[int, int] = {}  # st_dev -> bytes free at the last look
        self._disk_promised: dict[int, int] = {}  # st_dev -> bytes promised, not yet stored
        # Stores under way, with what each holds: spooled if shutdown cannot wait.
        self._uploads: dict[Future[None], tuple[_Worker, Artifact, ResultEvent]] = {}
        self._upload_pool = ThreadPoolExecutor(
            max_workers=config.delivery.upload_workers, thread_name_prefix="upload"
        )
        self._accepting = True
        self.capture_stop = threading.Event()  # set on shutdown: captures end now
        self.capture_started = threading.Event()  # for tests and benchmarks

    # -- admission -------------------------------------------------------
    def free_slots(self) -> int:
        with self._lock:
            if not self._accepting:
                return 0
            return max(0, self.config.general.max_concurrent - self._active)

    def _admit(self, request: CaptureRequest, worker: _Worker) -> str | None:
        """Reserve for `worker` a slot, `request.bytes` of memory, as much room
        on each disk it is written to and, with remote sinks, in the spool; or
        say why not."""
        general = self.config.general
        with self._lock:
            if not self._accepting:
                return "shutting down: not taking new captures"
            if self._active >= general.max_concurrent:
                return f"max_concurrent={general.max_concurrent} captures already running"
            if self._reserved + request.bytes > general.max_memory:
                return (
                    f"bytes={request.bytes} does not fit: {self._reserved} of "
                    f"max_memory={general.max_memory} held by captures running or "
                    "awaiting upload"
                )
            refusal = self._promise_spool(request.bytes)
            if refusal is None:
                refusal = self._promise_disk(request.bytes, worker)
            if refusal is not None:
                return refusal
            self._active += 1
            self._reserved += request.bytes
            worker.has_slot, worker.held = True, request.bytes
            worker.promised = request.bytes if self._spool is not None else 0
        return None

    def _promise_spool(self, nbytes: int) -> str | None:
        """With remote sinks, every admitted capture must fit the spool should
        they fail, alongside what running captures were promised: the spool
        never drops what it holds, so new captures are refused instead.
        Called with the lock held."""
        if self._spool is None:
            return None
        try:
            self._spool.check_room(nbytes + self._spool_promised)
        except SpoolError as exc:
            promised = self._spool_promised
            return f"{exc}" + (f" ({promised} of them promised to running captures)"
                               if promised else "")  # fmt: skip
        self._spool_promised += nbytes
        return None

    def _promise_disk(self, nbytes: int, worker: _Worker) -> str | None:
        """Real free space (statvfs) on each filesystem the capture would be
        written to (local disk, spool), less what was promised to captures not
        yet stored: a capture the node cannot keep is refused, not taken. One
        stat and one statvfs per directory; no scan. Called with the lock held;
        on refusal, undoes the spool promise `_promise_spool` just made."""
        copies: dict[int, tuple[int, list[str]]] = {}
        for label, directory in self._disk_targets:
            try:
                dev, free = disk_space(directory)
            except OSError as exc:  # what cannot be measured cannot be promised
                if self._spool is not None:
                    self._spool_promised -= nbytes
                return f"cannot check free space in {directory} ({label}): {exc}"
            count, names = copies.get(dev, (0, []))
            copies[dev] = (count + 1, [*names, f"{directory} ({label})"])
            self._disk_free[dev] = free
        for dev, (count, names) in copies.items():
            need = count * nbytes
            free = self._disk_free[dev] - self._disk_promised.get(dev, 0)
            if need > free:
                if self._spool is not None:
                    self._spool_promised -= nbytes
                promised = self._disk_promised.get(dev, 0)
                return (
                    f"disk full: {self._disk_free[dev]} bytes free on the filesystem of "
                    f"{', '.join(names)}, bytes={nbytes} needs {need}"
                    + (f" ({promised} promised to captures not yet stored)" if promised else "")
                )  # fmt: skip
        worker.disk = tuple((dev, count) for dev, (count, _) in copies.items())
        self._disk_each(worker, nbytes)
        return None

    def _disk_each(self, worker: _Worker, nbytes: int) -> None:
        """Promise `nbytes` per copy `worker` writes on each disk. Lock held."""
        for dev, count in worker.disk:
            change = count * (nbytes - worker.disk_each)
            self._disk_promised[dev] = self._disk_promised.get(dev, 0) + change
        worker.disk_each = nbytes

    def _hold(self, worker: _Worker, nbytes: int) -> None:
        """Set how much of max_memory `worker` holds (its file, once captured)."""
        with self._lock:
            self._reserved += nbytes - worker.held
            worker.held = nbytes

    def _free_slot(self, worker: _Worker) -> None:
        with self._lock:
            if worker.has_slot:
                worker.has_slot = False
                self._active -= 1
            if worker.thread is not None:
                self._capturing.discard(worker.thread)

    def _settle(self, worker: _Worker, durable: bool) -> None:
        """Release everything `worker` holds and tell its job, exactly once."""
        self._free_slot(worker)
        self._hold(worker, 0)
        with self._lock:
            if worker.settled:
                return
            worker.settled = True
            self._spool_promised -= worker.promised
            worker.promised = 0
            self._disk_each(worker, 0)
        if not durable:
            self.recent_ids.forget(worker.request.id)
        if worker.job is not None:
            worker.job.done(durable)

    # -- requests --------------------------------------------------------
    def handle(self, delivery: Delivery) -> None:
        """Serve one delivery; never raises, whatever the body holds."""
        with self._lock:
            self._handling += 1
        try:
            self._handle(delivery)
        except Exception as exc:  # a bug must cost one request, not the daemon
            event(log, "request_crashed", logging.ERROR, exc_info=True, source=delivery.source)
            self._publish(
                ResultEvent(
                    id=None, node=self.node, status="failed",
                    error=f"internal error (log event=request_crashed): {exc!r}",
                )
            )  # fmt: skip
            with contextlib.suppress(Exception):
                delivery.ack()
        finally:
            with self._lock:
                self._handling -= 1

    def _handle(self, delivery: Delivery) -> None:
        fields: dict[str, Any] | None = None
        if self.config.general.logrequests:
            # pcapdaemon's [general] logrequests: every body, before it is judged.
            body = delivery.body[: self.config.general.max_request_bytes]
            event(log, "request_body", source=delivery.source, body=body.decode(errors="replace"))
        try:
            fields = decode_body(delivery.body, self.config.general.max_request_bytes)
            if not addressed_to(fields, self.node):
                # Silent, even when other fields are bad: the named node reports.
                event(log, "request_not_for_me", logging.DEBUG, id=fields.get("id"))
                (delivery.not_for_me or delivery.ack)()
                return
            request = parse_fields(fields, self.config, delivery.message_id)
        except RequestError as exc:
            event(
                log, "request_rejected", logging.WARNING,
                source=delivery.source, id=exc.request_id, error=str(exc),
            )  # fmt: skip
            self._answer_unparsed(delivery.body, exc.request_id, _reply_to(fields), str(exc))
            delivery.ack()
            return
        if request.logrequest and not self.config.general.logrequests:
            event(log, "request_body", id=request.id, body=delivery.body.decode(errors="replace"))
        # Recorded in memory at once: the same request on two sources must not
        # slip through twice; forgotten again if it is not served after all.
        if self.recent_ids.here.seen(request.id):
            self._duplicate(request, delivery)
            return
        sig = fields.get("sig")
        sig = sig.lower() if isinstance(sig, str) else None
        try:
            verify(fields, self.config.security, self.clock(), self.recent_sigs.here)
        except RequestError as exc:
            # The signature is not forgotten: it may be a served request's.
            self._not_served(request.id, None, claimed=False)
            self._reject(request, None, str(exc))
            delivery.ack()
            return
        try:
            check_overrides(request, self.config.s3)
            interfaces, skipped = resolve_interfaces(request, self.config, self.devices())
        except RequestError as exc:
            self._not_served(request.id, sig, claimed=False)
            self._reject(request, None, str(exc))
            delivery.ack()
            return
        warnings = request.warnings + skipped
        started = [self._start(request, name, warnings) for name in interfaces]
        workers = [worker for worker in started if worker is not None]
        if not workers:
            self._not_served(request.id, sig, claimed=False)
            delivery.ack()
            return
        # Admitted: now the claims that later runs of this node see (a Redis
        # round trip each, so requests refused above cost none).
        if self.recent_ids.claim(request.id):
            for worker in workers:
                self._settle(worker, durable=True)
            self._duplicate(request, delivery)
            return
        if sig is not None and self.recent_sigs.claim(sig):
            for worker in workers:
                self._settle(worker, durable=True)
            self._not_served(request.id, None, claimed=True)
            self._reject(request, None, replayed(self.recent_sigs.window))
            delivery.ack()
            return

        def finished(durable: bool) -> None:
            # Served: a duplicate (or replay) for any later run of this node.
            # Stored nowhere: the id was forgotten, and the signature is, too,
            # so the source's redelivery is captured.
            if durable:
                self.recent_ids.served(request.id)
            if sig is not None:
                (self.recent_sigs.served if durable else self.recent_sigs.forget)(sig)

        job = _Job(delivery, len(workers), finished=finished)
        for worker in workers:
            worker.job = job
            thread = threading.Thread(
                target=worker.run, name=f"capture-{request.id}-{worker.interface}"
            )
            worker.thread = thread
            with self._lock:
                self._capturing.add(thread)
            try:
                thread.start()
            except RuntimeError as exc:  # no thread to be had: report, free, go on
                self._settle(worker, durable=True)
                self._reject(request, worker.interface, f"cannot start a capture: {exc}")

    def _not_served(self, request_id: str, sig: str | None, *, claimed: bool) -> None:
        """A request refused after its id (and verified signature) were recorded
        may come again: forgotten in memory, and in Redis once `claimed`."""
        for seen, key in ((self.recent_ids, request_id), (self.recent_sigs, sig)):
            if key is not None:
                (seen.forget if claimed else seen.here.forget)(key)

    def _duplicate(self, request: CaptureRequest, delivery: Delivery) -> None:
        event(log, "request_duplicate", id=request.id, source=delivery.source)
        self._publish(
            ResultEvent(
                id=request.id, alertid=request.alertid, node=self.node, status="duplicate",
                error=f"request id {request.id} was already served within "
                f"dedup_window={self.config.security.dedup_window}s",
            ),
            request.reply_to,
        )  # fmt: skip
        delivery.ack()

    def _start(
        self, request: CaptureRequest, interface: str, warnings: tuple[str, ...]
    ) -> _Worker | None:
        worker = _Worker(self, request, interface, warnings)
        refusal = self._admit(request, worker)
        if refusal is not None:
            self._reject(request, interface, refusal, warnings)
            return None
        return worker

    def refuse(self, delivery: Delivery, reason: str) -> None:
        """Answer a delivery its source could not hold ("overloaded"), unread.

        Called by the source's reader thread, so it stays cheap: only a small
        body is parsed, for its id and reply_to; nothing is logged per body
        (the source logs a count)."""
        request_id = reply_to = None
        if len(delivery.body) <= SALVAGE_MAX_BYTES:
            with contextlib.suppress(RequestError):
                fields = decode_body(delivery.body, SALVAGE_MAX_BYTES)
                if not addressed_to(fields, self.node):
                    return
                raw_id = fields.get("id")
                if isinstance(raw_id, str) and _ID_RE.fullmatch(raw_id):
                    request_id = raw_id
                reply_to = _reply_to(fields)
        self._answer_unparsed(delivery.body, request_id, reply_to, reason)
        with contextlib.suppress(Exception):
            delivery.ack()

    def _answer_unparsed(
        self, body: bytes, request_id: str | None, reply_to: str | None, error: str
    ) -> None:
        """A rejection for a body that did not become a request. It carries the
        body's SHA-256, since its id may be missing or a stream's entry id, and
        goes to `reply_to` if that much of the body was sound: the ways a
        sender can still match it."""
        self._publish(
            ResultEvent(
                id=request_id, node=self.node, status="rejected", error=error,
                request_sha256=hashlib.sha256(body).hexdigest(),
            ),
            reply_to,
        )  # fmt: skip

    def _reject(
        self,
        request: CaptureRequest,
        interface: str | None,
        error: str,
        warnings: tuple[str, ...] = (),
    ) -> None:
        event(
            log, "request_rejected", logging.WARNING,
            id=request.id, alertid=request.alertid, interface=interface, error=error,
        )  # fmt: skip
        self._publish(
            ResultEvent(
                id=request.id, alertid=request.alertid, node=self.node, interface=interface,
                status="rejected", error=error, format=request.format,
                warnings=warnings or request.warnings,
            ),
            request.reply_to,
        )  # fmt: skip

    def _publish(self, result: ResultEvent, reply_to: str | None = None) -> None:
        self.publisher.submit(result, reply_to)

    # -- after the capture -------------------------------------------------
    def _captured(self, worker: _Worker, outcome: CaptureOutcome, result: ResultEvent) -> None:
        """Free the capture slot; keep memory for the file until it is stored."""
        self._free_slot(worker)
        if not outcome.packets:
            # As pcapdaemon: nothing captured, nothing to upload.
            self._finish(worker, result, {}, durable=True)
            return
        self._hold(worker, len(outcome.data))
        with self._lock:
            self._disk_each(worker, len(outcome.data))
        artifact = Artifact(
            data=outcome.data,
            filename=self._names(
                self.node, worker.interface, outcome.started, worker.request.id,
                worker.request.format,
            ),
            format=worker.request.format,
            sha256=result.sha256 or "",
            request=worker.request,
            node=self.node,
            interface=worker.interface,
        )  # fmt: skip
        try:
            future = self._upload_pool.submit(self._store, worker, artifact, result)
        except RuntimeError:  # the pool is shut down: store from this thread
            self._store(worker, artifact, result)
            return
        with self._lock:
            self._uploads[future] = (worker, artifact, result)
        future.add_done_callback(self._upload_done)

    def _upload_done(self, future: Future[None]) -> None:
        with self._lock:
            self._uploads.pop(future, None)

    def _store(self, worker: _Worker, artifact: Artifact, result: ResultEvent) -> None:
        try:
            outcome = self.deliverer.deliver(artifact, result)
        except Exception as exc:  # a bug or an OSError past the deliverer's own handling
            event(log, "store_crashed", logging.ERROR, exc_info=True, id=worker.request.id)
            failed = replace(result, status="failed", error=f"storing failed: {exc!r}")
            self._finish(worker, failed, {}, durable=False)
            return
        stored = outcome.apply(result)
        if outcome.status == "ok" and result.error:
            stored = replace(stored, error=result.error)
        self._finish(worker, stored, dict(outcome.locations), durable=outcome.durable)

    def _finish(
        self, worker: _Worker, result: ResultEvent, locations: Mapping[str, str], durable: bool
    ) -> None:
        try:
            self._write_sidecar(locations, result)
            event(
                log, "capture_done", id=result.id, interface=result.interface,
                status=result.status, stop=result.stop, packets=result.packets,
                bytes=result.bytes, kernel_dropped=result.kernel_dropped,
                locations=dict(locations), error=result.error,
            )  # fmt: skip
            self._publish(result, worker.request.reply_to)
        finally:
            self._settle(worker, durable)

    def _write_sidecar(self, locations: Mapping[str, str], result: ResultEvent) -> None:
        if "local" not in locations:
            return
        for uploader in self.deliverer.uploaders:
            if isinstance(uploader, LocalUploader):
                try:
                    uploader.write_sidecar(Location("local", locations["local"]), result.to_json())
                except OSError as exc:
                    event(log, "sidecar_failed", logging.ERROR, id=result.id, error=str(exc))

    # -- lifecycle -------------------------------------------------------
    def shutdown(self, timeout: float) -> bool:
        """Stop taking requests, end running captures (stop=shutdown), wait for
        them to be stored. True if everything finished within `timeout`."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._accepting = False
        self.capture_stop.set()
        while time.monotonic() < deadline:
            # A handle() already past admission may still add a capture thread.
            with self._lock:
                capturing, handling = list(self._capturing), self._handling
            if not capturing and not handling:
                break
            for thread in capturing:
                thread.join(max(0.0, min(0.5, deadline - time.monotonic())))
            if not capturing:
                time.sleep(0.01)
        with self._lock:
            uploads = list(self._uploads)
        _, hanging = wait_futures(uploads, max(0.0, deadline - time.monotonic()))
        if hanging:
            # Remote attempts give up now; their captures are in the spool already.
            self.deliverer.abandon.set()
            wait_futures(hanging, ABANDON_WAIT)
        self._upload_pool.shutdown(wait=False)
        self._spool_unfinished()
        with self._lock:
            return not self._capturing and not self._uploads

    def _spool_unfinished(self) -> None:
        """Uploads still hanging when shutdown can wait no longer: their captures
        go to the spool (the drainer of the next run delivers them), not away
        with the process."""
        if self._spool is None:
            return
        with self._lock:
            hanging = [item for item in self._uploads.items() if not item[0].done()]
        remote = [u.name for u in self.deliverer.uploaders if u.remote]
        for future, (worker, artifact, result) in hanging:
            error = "shutdown: upload still running, spooled for the next run"
            spooled = replace(result, status="spooled", error=error)
            if self.deliverer.spooled_ahead(artifact) is None:
                try:
                    self._spool.put(artifact, remote, event=spooled.as_dict(), error=error)
                except SpoolError as exc:
                    event(log, "capture_lost", logging.ERROR, id=result.id, error=str(exc))
                    continue
            self._publish(spooled, worker.request.reply_to)
            with self._lock:
                self._uploads.pop(future, None)
            self._settle(worker, durable=True)


def disk_space(directory: str) -> tuple[int, int]:
    """(st_dev, bytes free to unprivileged writers) for `directory`, or for its
    nearest existing parent when it is not made yet (LocalUploader makes it)."""
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


class _Worker:
    """One capture on one interface; its file then goes to the upload pool."""

    def __init__(
        self,
        controller: Controller,
        request: CaptureRequest,
        interface: str,
        warnings: tuple[str, ...],
    ) -> None:
        self.controller = controller
        self.request = request
        self.interface = interface
        self.warnings = warnings
        self.job: _Job | None = None
        self.thread: threading.Thread | None = None
        # What this worker holds, released exactly once by Controller._settle.
        self.has_slot = False
        self.held = 0
        self.promised = 0  # spool space promised to this capture
        # Copies this capture writes per filesystem (st_dev, count), each promised
        # `disk_each` bytes: its `bytes` bound, then its file's size once captured.
        self.disk: tuple[tuple[int, int], ...] = ()
        self.disk_each = 0
        self.settled = False

    def run(self) -> None:
        ctl = self.controller
        request = self.request
        try:
            self._run()
        except Exception as exc:
            event(
                log,
                "capture_crashed",
                logging.ERROR,
                exc_info=True,
                id=request.id,
                interface=self.interface,
            )
            if not self.settled:
                ctl._publish(
                    ResultEvent(
                        id=request.id, alertid=request.alertid, node=ctl.node,
                        interface=self.interface, status="failed",
                        error=f"capture failed: {exc!r}", format=request.format,
                        warnings=self.warnings,
                    ),
                    request.reply_to,
                )  # fmt: skip
            ctl._settle(self, durable=False)

    def _run(self) -> None:
        ctl = self.controller
        request = self.request
        # Opening a handle (when no spare is ready) takes 8-16 ms: here, not in
        # the trigger thread, so requests keep being admitted or refused fast.
        handle: pcap.pcap | None = None
        try:
            handle = ctl.pool.take(self.interface)
            set_filter(handle, self.interface, request.bpf)
        except CaptureError as exc:
            if handle is not None:
                close_handle(handle)
            ctl._reject(request, self.interface, str(exc), self.warnings)
            ctl._settle(self, durable=True)
            return
        finally:
            ctl.pool.replenish()
        try:
            outcome = self._capture(handle)
        except CaptureError as exc:  # e.g. bytes cannot hold this pcapng header
            ctl._reject(request, self.interface, str(exc), self.warnings)
            ctl._settle(self, durable=True)
            return
        result = ResultEvent(
            id=request.id, alertid=request.alertid, node=ctl.node, interface=self.interface,
            status="ok" if outcome.packets else "empty", error=outcome.error, stop=outcome.stop,
            packets=outcome.packets, bytes=len(outcome.data) if outcome.packets else 0,
            kernel_dropped=outcome.kernel_dropped, started=iso_utc(outcome.started),
            ended=iso_utc(outcome.ended), format=request.format,
            sha256=hashlib.sha256(outcome.data).hexdigest() if outcome.packets else None,
            warnings=self.warnings,
        )  # fmt: skip
        ctl._captured(self, outcome, result)

    def _capture(self, handle: pcap.pcap) -> CaptureOutcome:
        ctl = self.controller
        request = self.request
        limits = CaptureLimits(
            snap=request.snap,
            packets=request.packets,
            bytes=request.bytes,
            duration=request.duration,
            timeout=request.timeout,
        )
        comments: dict[str, Any] = {
            "request_id": request.id,
            "alertid": request.alertid,
            "node": ctl.node,
            "tags": ",".join(request.tags),
            "customer": request.customer,
            "bpf": request.bpf,
        }
        event(
            log, "capture_started", id=request.id, alertid=request.alertid,
            interface=self.interface, bpf=request.bpf, packets=request.packets,
            bytes=request.bytes, duration=request.duration, timeout=request.timeout,
        )  # fmt: skip
        debug = (
            packet_logger(request.id, self.interface, handle.datalink())
            if request.packetdebug
            else None
        )
        try:
            return capture(
                handle, limits, fmt=request.format, interface=self.interface,
                comments=comments, stop=ctl.capture_stop, packet_debug=debug,
                on_start=ctl.capture_started.set,
            )  # fmt: skip
        finally:
            close_handle(handle)
