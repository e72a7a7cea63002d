"""The controller: from a delivered request to stored files and result events.

`handle(delivery)` is called by the trigger threads and returns quickly: it
parses, matches the node, resolves interfaces, admits each capture under the
global bounds and starts one worker thread per (request, interface). Nothing
queues: over `max_concurrent` or `max_memory` the capture is rejected with the
reason. Memory held by captures stays within `max_memory`, since each capture
reserves its `bytes` bound before it starts and releases it once delivered.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import pcap

from pcapd.config import Config
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
from pcapd.request import CaptureRequest, RequestError, parse_request, resolve_interfaces
from pcapd.results import ResultPublisher
from triggers.base import Delivery
from uploaders.base import Artifact, Location, Uploader, UploadError, artifact_filename
from uploaders.local import LocalUploader

log = logging.getLogger("pcapd.controller")


@dataclass(slots=True)
class _Job:
    """The captures one delivery started; the delivery is acked when all end."""

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
        uploaders: Sequence[Uploader],
        pool: HandlePool,
        devices: Callable[[], set[str]] = available_devices,
    ) -> None:
        self.config = config
        self.node = config.general.node
        self.publisher = publisher
        self.uploaders = tuple(uploaders)
        self.pool = pool
        self.devices = devices
        self._lock = threading.Lock()
        self._active = 0
        self._reserved = 0
        self._workers: set[threading.Thread] = set()
        self._accepting = True
        self.capture_stop = threading.Event()  # set on shutdown: captures end now
        self.capture_started = threading.Event()  # for tests and benchmarks

    # -- admission -------------------------------------------------------
    def free_slots(self) -> int:
        with self._lock:
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

    def _release(self, request: CaptureRequest) -> None:
        with self._lock:
            self._active -= 1
            self._reserved -= request.bytes

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
            request = parse_request(delivery.body, self.config)
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
            delivery.ack()
            return
        try:
            interfaces, skipped = resolve_interfaces(request, self.config, self.devices())
        except RequestError as exc:
            self._reject(request, None, str(exc))
            delivery.ack()
            return
        warnings = request.warnings + skipped
        started = [self._start(request, name, warnings) for name in interfaces]
        workers = [worker for worker in started if worker is not None]
        if not workers:
            delivery.ack()
            return
        job = _Job(delivery, len(workers))
        for worker in workers:
            worker.job = job
            self._run_worker(worker)

    def _start(
        self, request: CaptureRequest, interface: str, warnings: tuple[str, ...]
    ) -> _Worker | None:
        refusal = self._admit(request)
        if refusal is not None:
            self._reject(request, interface, refusal, warnings)
            return None
        handle: pcap.pcap | None = None
        try:
            handle = self.pool.take(interface)
            set_filter(handle, interface, request.bpf)
        except CaptureError as exc:
            if handle is not None:
                close_handle(handle)
            self._release(request)
            self._reject(request, interface, str(exc), warnings)
            return None
        return _Worker(self, request, interface, handle, warnings)

    def _run_worker(self, worker: _Worker) -> None:
        thread = threading.Thread(
            target=worker.run, name=f"capture-{worker.request.id}-{worker.interface}"
        )
        with self._lock:
            self._workers.add(thread)
        worker.thread = thread
        thread.start()

    def _worker_finished(self, worker: _Worker) -> None:
        self._release(worker.request)
        with self._lock:
            if worker.thread is not None:
                self._workers.discard(worker.thread)

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
                id=request.id,
                alertid=request.alertid,
                node=self.node,
                interface=interface,
                status="rejected",
                error=error,
                format=request.format,
                warnings=warnings or request.warnings,
            ),
            request.reply_to,
        )

    def _publish(self, result: ResultEvent, reply_to: str | None = None) -> None:
        self.publisher.publish(result, reply_to)

    # -- delivery --------------------------------------------------------
    def deliver(self, artifact: Artifact) -> tuple[dict[str, str], list[str]]:
        """Run every uploader in order: (locations by kind, errors)."""
        locations: dict[str, str] = {}
        errors: list[str] = []
        for uploader in self.uploaders:
            try:
                location: Location = uploader.upload(artifact)
            except UploadError as exc:
                errors.append(f"{uploader.name}: {exc}")
                event(
                    log, "upload_failed", logging.ERROR,
                    id=artifact.request.id, sink=uploader.name, error=str(exc),
                )  # fmt: skip
                continue
            locations[location.kind] = location.url
        return locations, errors

    def write_sidecar(self, locations: dict[str, str], result: ResultEvent) -> None:
        for uploader in self.uploaders:
            if isinstance(uploader, LocalUploader) and "local" in locations:
                try:
                    uploader.write_sidecar(Location("local", locations["local"]), result.to_json())
                except OSError as exc:
                    event(log, "sidecar_failed", logging.ERROR, id=result.id, error=str(exc))

    # -- lifecycle -------------------------------------------------------
    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop taking requests, end running captures (stop=shutdown), wait for
        them to be delivered. True if every worker finished in time."""
        with self._lock:
            self._accepting = False
            workers = list(self._workers)
        self.capture_stop.set()
        for thread in workers:
            thread.join(timeout)
        with self._lock:
            return not self._workers


class _Worker:
    """One capture on one interface, then its delivery and result event."""

    def __init__(
        self,
        controller: Controller,
        request: CaptureRequest,
        interface: str,
        handle: pcap.pcap,
        warnings: tuple[str, ...],
    ) -> None:
        self.controller = controller
        self.request = request
        self.interface = interface
        self.handle = handle
        self.warnings = warnings
        self.job: _Job | None = None
        self.thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            log.exception(
                "event=worker_crashed id=%s interface=%s", self.request.id, self.interface
            )
        finally:
            self.controller._worker_finished(self)
            if self.job is not None:
                self.job.done()

    def _run(self) -> None:
        ctl = self.controller
        request = self.request
        limits = CaptureLimits(
            snap=request.snap,
            packets=request.packets,
            bytes=request.bytes,
            duration=request.duration,
            timeout=request.timeout,
        )
        comments = {
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
            packet_logger(request.id, self.interface, self.handle.datalink())
            if request.packetdebug
            else None
        )
        try:
            outcome = capture(
                self.handle, limits, fmt=request.format, interface=self.interface,
                comments=comments, stop=ctl.capture_stop, packet_debug=debug,
                on_start=ctl.capture_started.set,
            )  # fmt: skip
        finally:
            close_handle(self.handle)
        self._finish(outcome)

    def _finish(self, outcome: CaptureOutcome) -> None:
        ctl = self.controller
        request = self.request
        result = ResultEvent(
            id=request.id, alertid=request.alertid, node=ctl.node, interface=self.interface,
            status="empty", error=outcome.error, stop=outcome.stop, packets=outcome.packets,
            kernel_dropped=outcome.kernel_dropped, started=iso_utc(outcome.started),
            ended=iso_utc(outcome.ended), format=request.format, warnings=self.warnings,
        )  # fmt: skip
        locations: dict[str, str] = {}
        # As pcapdaemon: nothing captured, nothing to upload.
        if outcome.packets:
            digest = hashlib.sha256(outcome.data).hexdigest()
            artifact = Artifact(
                data=outcome.data,
                filename=artifact_filename(
                    ctl.node, self.interface, outcome.started, request.id, request.format
                ),
                format=request.format,
                sha256=digest,
                request=request,
                node=ctl.node,
                interface=self.interface,
            )
            locations, errors = ctl.deliver(artifact)
            problems = [outcome.error] if outcome.error else []
            problems += errors
            result = replace(
                result,
                status="ok" if locations else "failed",
                error="; ".join(problems) or None,
                bytes=len(outcome.data),
                sha256=digest,
                locations=locations,
            )
            ctl.write_sidecar(locations, result)
        event(
            log, "capture_done", id=request.id, interface=self.interface, status=result.status,
            stop=outcome.stop, packets=outcome.packets, bytes=result.bytes,
            kernel_dropped=outcome.kernel_dropped, locations=locations, error=result.error,
        )  # fmt: skip
        ctl._publish(result, request.reply_to)
