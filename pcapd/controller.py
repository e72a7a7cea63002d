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

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace
from typing import Any

import pcap

from pcapd.config import Config
from pcapd.dedup import RecentIds
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
from pcapd.events import ResultEvent, iso_utc
from pcapd.logs import event
from pcapd.packetdebug import packet_logger
from pcapd.request import (
    CaptureRequest,
    RequestError,
    decode_body,
    parse_fields,
    resolve_interfaces,
)
from pcapd.results import ResultPublisher
from pcapd.signing import verify
from triggers.base import Delivery
from uploaders.base import Artifact, Location, artifact_filename
from uploaders.deliver import Deliverer
from uploaders.local import LocalUploader
from uploaders.policy import check_overrides
from uploaders.spool import SpoolError

log = logging.getLogger("pcapd.controller")


@dataclass(slots=True)
class _Job:
    """The captures one delivery started; the delivery is acked when all are
    stored (uploaded or spooled) or reported."""

    delivery: Delivery
    remaining: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self) -> None:
        with self.lock:
            self.remaining -= 1
            finished = self.remaining == 0
        if finished:
            self.delivery.ack()


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
    ) -> None:
        self.config = config
        self.node = config.general.node
        self.publisher = publisher
        self.deliverer = deliverer
        self.pool = pool
        self.devices = devices
        self.clock = clock
        security = config.security
        self.recent_ids = RecentIds(security.dedup_window)
        # Signatures stay replayable for 2 x max_skew (a ts that far ahead is accepted).
        self.recent_sigs = RecentIds(max(security.dedup_window, 2 * security.max_skew))
        self._lock = threading.Lock()
        self._active = 0
        self._reserved = 0
        self._capturing: set[threading.Thread] = set()
        self._uploads: set[Future[None]] = set()
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

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return self._reserved

    def _admit(self, request: CaptureRequest) -> str | None:
        """Reserve a slot and `request.bytes` of memory, or say why not."""
        general = self.config.general
        with self._lock:
            if not self._accepting:
                return "shutting down: not taking new captures"
            if self._active >= general.max_concurrent:
                return f"max_concurrent={general.max_concurrent} captures already running"
            if self._reserved + request.bytes > general.max_memory:
                return (
                    f"bytes={request.bytes} does not fit: {self._reserved} of "
                    f"max_memory={general.max_memory} reserved by running captures"
                )
            self._active += 1
            self._reserved += request.bytes
        return None

    def _adjust(self, slots: int, reserved: int) -> None:
        with self._lock:
            self._active += slots
            self._reserved += reserved

    # -- requests --------------------------------------------------------
    def handle(self, delivery: Delivery) -> None:
        """Serve one delivery; never raises, whatever the body holds."""
        try:
            self._handle(delivery)
        except Exception as exc:  # a bug must cost one request, not the daemon
            log.exception("event=request_crashed source=%s", delivery.source)
            self._publish(ResultEvent(id=None, node=self.node, status="failed", error=str(exc)))
            delivery.ack()

    def _handle(self, delivery: Delivery) -> None:
        try:
            fields = decode_body(delivery.body, self.config.general.max_request_bytes)
            request = parse_fields(fields, self.config, delivery.message_id)
        except RequestError as exc:
            event(
                log, "request_rejected", logging.WARNING,
                source=delivery.source, id=exc.request_id, error=str(exc),
            )  # fmt: skip
            self._publish(
                ResultEvent(id=exc.request_id, node=self.node, status="rejected", error=str(exc))
            )
            delivery.ack()
            return
        if request.logrequest:
            event(log, "request_body", id=request.id, body=delivery.body.decode(errors="replace"))
        if not request.matches_node(self.node):
            event(log, "request_not_for_me", logging.DEBUG, id=request.id)
            (delivery.not_for_me or delivery.ack)()
            return
        if request.id in self.recent_ids:
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
            return
        try:
            verify(fields, self.config.security, self.clock(), self.recent_sigs)
            check_overrides(request, self.config.s3)
            self._check_spool_room(request)
            interfaces, skipped = resolve_interfaces(request, self.config, self.devices())
        except RequestError as exc:
            self._reject(request, None, str(exc))
            delivery.ack()
            return
        self.recent_ids.seen(request.id)
        warnings = request.warnings + skipped
        started = [self._start(request, name, warnings) for name in interfaces]
        workers = [worker for worker in started if worker is not None]
        if not workers:
            delivery.ack()
            return
        job = _Job(delivery, len(workers))
        for worker in workers:
            worker.job = job
            thread = threading.Thread(
                target=worker.run, name=f"capture-{request.id}-{worker.interface}"
            )
            worker.thread = thread
            with self._lock:
                self._capturing.add(thread)
            thread.start()

    def _check_spool_room(self, request: CaptureRequest) -> None:
        """With remote sinks, a capture must fit the spool should they fail: the
        spool never drops what it holds, so new captures are refused instead."""
        spool = self.deliverer.spool
        if spool is None or not self.deliverer.has_remote:
            return
        try:
            spool.check_room(request.bytes)
        except SpoolError as exc:
            raise RequestError(str(exc), request.id) from None

    def _start(
        self, request: CaptureRequest, interface: str, warnings: tuple[str, ...]
    ) -> _Worker | None:
        refusal = self._admit(request)
        if refusal is not None:
            self._reject(request, interface, refusal, warnings)
            return None
        return _Worker(self, request, interface, warnings)

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
        self.publisher.publish(result, reply_to)

    # -- after the capture -------------------------------------------------
    def _captured(self, worker: _Worker, outcome: CaptureOutcome, result: ResultEvent) -> None:
        """Free the capture slot; keep memory for the file until it is stored."""
        held = len(outcome.data) if outcome.packets else 0
        self._adjust(-1, held - worker.request.bytes)
        worker._forget()
        if not outcome.packets:
            # As pcapdaemon: nothing captured, nothing to upload.
            self._finish(worker, result, {}, held)
            return
        artifact = Artifact(
            data=outcome.data,
            filename=artifact_filename(
                self.node, worker.interface, outcome.started, worker.request.id,
                worker.request.format,
            ),
            format=worker.request.format,
            sha256=result.sha256 or "",
            request=worker.request,
            node=self.node,
            interface=worker.interface,
        )  # fmt: skip
        future = self._upload_pool.submit(self._store, worker, artifact, result, held)
        with self._lock:
            self._uploads.add(future)
        future.add_done_callback(self._upload_done)

    def _upload_done(self, future: Future[None]) -> None:
        with self._lock:
            self._uploads.discard(future)

    def _store(self, worker: _Worker, artifact: Artifact, result: ResultEvent, held: int) -> None:
        try:
            outcome = self.deliverer.deliver(artifact, result)
            stored = outcome.apply(result)
            if outcome.status == "ok" and result.error:
                stored = replace(stored, error=result.error)
            self._finish(worker, stored, dict(outcome.locations), held)
        except Exception:
            log.exception("event=store_crashed id=%s", worker.request.id)
            self._adjust(0, -held)
            if worker.job is not None:
                worker.job.done()

    def _finish(
        self, worker: _Worker, result: ResultEvent, locations: Mapping[str, str], held: int
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
            self._adjust(0, -held)
            if worker.job is not None:
                worker.job.done()

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
            capturing = list(self._capturing)
        self.capture_stop.set()
        for thread in capturing:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            uploads = list(self._uploads)
        wait_futures(uploads, max(0.0, deadline - time.monotonic()))
        self._upload_pool.shutdown(wait=False)
        with self._lock:
            return not self._capturing and not self._uploads


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

    def run(self) -> None:
        ctl = self.controller
        request = self.request
        # Opening a handle (when no spare is ready) takes 8-16 ms: here, not in
        # the trigger thread, so requests keep being admitted or refused fast.
        handle: pcap.pcap | None = None
        try:
            handle = ctl.pool.take(self.interface)
            set_filter(handle, self.interface, request.bpf)
            ctl.pool.replenish()
        except CaptureError as exc:
            ctl.pool.replenish()
            if handle is not None:
                close_handle(handle)
            ctl._adjust(-1, -request.bytes)
            self._forget()
            ctl._reject(request, self.interface, str(exc), self.warnings)
            if self.job is not None:
                self.job.done()
            return
        try:
            outcome = self._capture(handle)
        except Exception as exc:
            log.exception("event=capture_crashed id=%s interface=%s", request.id, self.interface)
            ctl._adjust(-1, -request.bytes)
            self._forget()
            ctl._publish(
                ResultEvent(
                    id=request.id, alertid=request.alertid, node=ctl.node,
                    interface=self.interface, status="failed", error=f"capture failed: {exc}",
                    format=request.format, warnings=self.warnings,
                ),
                request.reply_to,
            )  # fmt: skip
            if self.job is not None:
                self.job.done()
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

    def _forget(self) -> None:
        with self.controller._lock:
            if self.thread is not None:
                self.controller._capturing.discard(self.thread)

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
