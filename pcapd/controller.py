"""The controller: from a delivered request to stored files and result events.

It runs DESIGN.md's "One capture, step by step" for each delivery that a
trigger thread hands to `handle`, which returns quickly:

1-2. the body is decoded, and parsed if it names this node (`request_for`,
     which `pcapd nodes --match` runs too); a rejection is published with
     the body's SHA-256, never raised;
3.   a node the request does not name stays silent; then duplicates and the
     signature (pcapd.dedup, pcapd.signing), what the sinks allow
     (`Deliverer.check`) and the interfaces (`resolve_interfaces`);
4.   each capture is admitted under the global bounds (pcapd.admission:
     slots, memory, spool, disk) or rejected with the reason; nothing
     queues. A capture on a ring interface is registered with the ring now.
     Admitted, the id and signature are claimed in Redis (a duplicate drops
     its captures before any of them answers): for ring captures while they
     run (`ClaimGate`), so the trigger thread takes the next request at once;
5-7. one `Worker` per (request, interface) captures on a thread of that
     pool, then hands its file to a bounded pool of upload workers
     (`submit`), so a slow sink never holds up capturing; the worker
     publishes the result and settles.

The delivery is acked once every capture is stored or reported (`Job`).
Memory held by captures, running or waiting for upload, stays within
`max_memory`: each reserves its `bytes` bound, keeps its file's size once
captured, and gives it back when the file is stored.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from typing import Any

from pcapd.admission import Admission, Refused
from pcapd.core.config import Config
from pcapd.core.events import ResultEvent
from pcapd.core.fields import CHANNEL_RE, ID_RE
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client
from pcapd.core.request import (
    CaptureRequest,
    RequestError,
    addressed_to,
    decode_body,
    interface_problem,
    request_for,
    resolve_interfaces,
)
from pcapd.core.results import ResultPublisher
from pcapd.daemon_metrics import CaptureMetrics
from pcapd.dedup import seen_ids_and_sigs
from pcapd.engine import HandlePool, available_devices
from pcapd.ring import Ring
from pcapd.signing import replayed, verify
from pcapd.worker import Job, Worker
from triggers.base import Delivery
from uploaders.base import Artifact, FileNamer
from uploaders.deliver import Deliverer

log = logging.getLogger("pcapd.controller")

# Bodies up to this size are parsed for their id and reply_to when refused
# unread (overloaded): a real request is a few hundred bytes, and parsing a
# larger one would slow the thread that drains the source.
SALVAGE_MAX_BYTES = 4096
ABANDON_WAIT = 2.0  # seconds for abandoned uploads to record what is pending
# Capture threads kept beyond max_concurrent: a capture frees its slot just
# before its thread is free, so the next admitted one never waits for a thread.
CAPTURE_THREADS_SPARE = 4
SHUTDOWN_POLL = 0.01  # s between looks at the captures still running, on shutdown
STOP_POLL = 0.05  # s between looks at a claim's answer, for a capture waiting on its stop


def _reply_to(fields: Mapping[str, Any] | None) -> str | None:
    """The body's reply_to, when it is a valid channel name, whatever else is wrong."""
    value = fields.get("reply_to") if fields else None
    return value if isinstance(value, str) and CHANNEL_RE.fullmatch(value) else None


class _KnownDevices(Collection[str]):
    """Names that exist: the rings', else the device list, read once if asked."""

    def __init__(self, rings: Mapping[str, Ring], devices: Callable[[], set[str]]) -> None:
        self._rings, self._devices = rings, devices
        self._listed: set[str] | None = None

    def _all(self) -> set[str]:
        if self._listed is None:
            self._listed = self._devices() | set(self._rings)
        return self._listed

    def __contains__(self, name: object) -> bool:
        return name in self._rings or name in self._all()

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


class _StopOr(threading.Event):
    """What a ring capture polls to end early: `stop` (shutdown), or `also()`
    (nothing sets it, so `wait` polls)."""

    def __init__(self, stop: threading.Event, also: Callable[[], bool]) -> None:
        super().__init__()
        self._stop, self._also = stop, also

    def is_set(self) -> bool:
        return self._stop.is_set() or self._also()

    def wait(self, timeout: float | None = None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = STOP_POLL if end is None else min(STOP_POLL, end - time.monotonic())
            if left <= 0:
                return False
            self._stop.wait(left)
        return True


class ClaimGate:
    """The Redis claims of a request whose ring captures run already (they
    share the round trip with other threads' claims, `pcapd.dedup`). A
    capture stops (`stop`) once a claim is answered taken; its result waits
    for `passed`. The first capture to ask answers a duplicate or a replay,
    once, and counts the request; the captures' own results are dropped."""

    def __init__(
        self, controller: Controller, request: CaptureRequest, sig: str | None, delivery: Delivery
    ) -> None:
        self._ctl, self._request, self._sig, self._delivery = controller, request, sig, delivery
        self._ids = controller.recent_ids.claim_soon(request.id)
        self._sigs = None if sig is None else controller.recent_sigs.claim_soon(sig)
        self.stop = _StopOr(controller.capture_stop, self._taken_now)
        self._lock = threading.Lock()
        self._passed: bool | None = None

    def _taken_now(self) -> bool:
        return self._ids.taken_now() or (self._sigs is not None and self._sigs.taken_now())

    def passed(self) -> bool:
        """Neither claim was taken (waits for their answers)."""
        with self._lock:
            if self._passed is None:
                self._passed = self._decide()
            return self._passed

    def _decide(self) -> bool:
        ctl, request, delivery, sig = self._ctl, self._request, self._delivery, self._sig
        status = "failed"
        try:
            id_taken = self._ids.wait()
            sig_taken = self._sigs is not None and self._sigs.wait()
            if id_taken:
                if sig is not None and not sig_taken:  # claimed for nothing
                    ctl.recent_sigs.forget(sig)
                ctl._duplicate(request, delivery)
                status = "duplicate"
            elif sig_taken:
                ctl._turn_away(request, delivery, replayed(ctl.recent_sigs.window), claimed=True)
                status = "rejected"
            else:
                status = "admitted"
        finally:
            with ctl._lock:
                ctl._requests[delivery.source, status] += 1
        return status == "admitted"


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
        dedup_redis: Client | None = None,
        rings: Mapping[str, Ring] | None = None,
    ) -> None:
        """`dedup_redis`: where seen request ids and signatures are kept, so
        they hold across restarts (memory only when None, or while it is away).
        `rings`: the running lookback rings by interface; captures there are
        served from the ring, not from `pool`."""
        self.config = config
        self.node = config.general.node
        self.names = FileNamer(config.general.naming)
        self.publisher = publisher
        self.deliverer = deliverer
        self.pool = pool
        self.devices = devices
        self.clock = clock
        self.rings: Mapping[str, Ring] = rings or {}
        self.recent_ids, self.recent_sigs = seen_ids_and_sigs(
            config.security, self.node, dedup_redis, later=publisher.later
        )
        self._lock = threading.Lock()
        self._capturing: set[Worker] = set()  # admitted, not yet captured: for shutdown
        self._handling = 0  # handle() calls in progress
        # (source, status) -> requests: what became of each delivery (/metrics).
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.metrics = CaptureMetrics()
        self.admission = Admission(
            config.general, deliverer.spool if deliverer.has_remote else None,
            deliverer.disk_targets(), rings=sum(r.memory for r in self.rings.values()),
        )  # fmt: skip
        # Stores under way, with what each holds: spooled if shutdown cannot wait.
        self._uploads: dict[Future[None], tuple[Worker, Artifact, ResultEvent]] = {}
        self._upload_pool = ThreadPoolExecutor(
            max_workers=config.delivery.upload_workers, thread_name_prefix="upload"
        )
        # Captures run on reused threads: starting a thread costs the trigger
        # thread ~0.3-1 ms (it waits for the new thread to run), a submit ~20 us.
        # At most max_concurrent captures hold a slot, so one is always free.
        self._capture_pool = ThreadPoolExecutor(
            max_workers=config.general.max_concurrent + CAPTURE_THREADS_SPARE,
            thread_name_prefix="capture",
        )
        self.capture_stop = threading.Event()  # set on shutdown: captures end now
        self.capture_started = threading.Event()  # for tests and benchmarks

    # -- bounds and threads ------------------------------------------------
    def free_slots(self) -> int:
        """Captures that would be admitted now (0 once shutting down): what
        durable sources take from their queue at most."""
        return self.admission.free_slots()

    def running(self) -> int:
        """Captures under way now (for the heartbeat)."""
        with self._lock:
            return len(self._capturing)

    def untrack(self, worker: Worker) -> None:
        """`worker`'s capture has ended (or never started)."""
        with self._lock:
            self._capturing.discard(worker)

    def _devices(self) -> Collection[str]:
        """The devices a request may name: ring interfaces are open, so they
        exist; the device list (~0.4 ms) is read only for another name."""
        return _KnownDevices(self.rings, self.devices)

    # -- requests --------------------------------------------------------
    def handle(self, delivery: Delivery) -> None:
        """Serve one delivery; never raises, whatever the body holds."""
        with self._lock:
            self._handling += 1
        status: str | None = "failed"
        try:
            status = self._handle(delivery)
        except Exception as exc:  # a bug must cost one request, not the daemon
            event(log, "request_crashed", logging.ERROR, exc_info=True, source=delivery.source)
            error = f"internal error (log event=request_crashed): {exc!r}"
            self.publish(ResultEvent.for_body(self.node, "failed", error))
            with contextlib.suppress(Exception):
                delivery.ack()
        finally:
            with self._lock:
                self._handling -= 1
                if status is not None:  # None: the capture thread counts it
                    self._requests[delivery.source, status] += 1

    def request_counts(self) -> dict[tuple[str, str], int]:
        """(source, status) -> requests so far; status: admitted (a capture
        started), rejected (the request itself, or every interface turned it
        down for what it asks: a lookback), refused (no interface admitted: a
        bound, or a failed ring), duplicate, ignored (for another node),
        overloaded (refused unread), failed (a bug)."""
        with self._lock:
            return dict(self._requests)

    def _handle(self, delivery: Delivery) -> str | None:
        """Serve `delivery`; what became of it (see `request_counts`), or None
        when a capture thread decides it (`ClaimGate`)."""
        parsed = self._parse(delivery)  # steps 1-2
        if isinstance(parsed, str):
            return parsed
        request, fields = parsed
        # Step 3. Recorded in memory at once: the same request on two sources
        # must not slip through twice; forgotten again if it is not served.
        if self.recent_ids.here.seen(request.id):
            self._duplicate(request, delivery)
            return "duplicate"
        sig = fields.get("sig")
        sig = sig.lower() if isinstance(sig, str) else None
        try:
            verify(fields, self.config.security, self.clock(), self.recent_sigs.here)
        except RequestError as exc:
            # The signature is not forgotten: it may be a served request's.
            self._turn_away(request, delivery, str(exc), sig=None)
            return "rejected"
        try:
            self.deliverer.check(request)
            interfaces, skipped = resolve_interfaces(request, self.config, self._devices())
        except RequestError as exc:
            self._turn_away(request, delivery, str(exc), sig=sig)
            return "rejected"
        # Step 4: each interface admitted or rejected (saying why) on its own.
        warnings = request.warnings + skipped
        started = [self._start(request, name, warnings) for name in interfaces]
        # A ring capture starts here, before the Redis claims: it costs no
        # socket, and a duplicate found by the claim just drops it.
        workers = [w for w in started if isinstance(w, Worker) and self._ready(w)]
        if not workers:
            self._not_served(request.id, sig, claimed=False)
            delivery.ack()
            # Refused: a bound (admission) said no; rejected: the request's own
            # asks (a lookback no interface here can give) did.
            rejected = all(outcome == "rejected" for outcome in started)
            return "rejected" if rejected else "refused"
        if all(worker.served is not None for worker in workers):
            # All registered with rings: the claims are answered while they capture.
            return self._launch(request, sig, delivery, workers, claimed=False)  # steps 5-7
        # A capture takes a handle of its own, opened in 8-16 ms anyway: claims
        # here, so requests take the spare handles in the order they came.
        status = self._claimed(request, sig, delivery, workers)
        if status != "admitted":
            return status
        return self._launch(request, sig, delivery, workers, claimed=True) or status

    def _claimed(
        self, request: CaptureRequest, sig: str | None, delivery: Delivery, workers: list[Worker]
    ) -> str:
        """The claims that later runs of this node see (a Redis round trip
        each, so requests refused earlier cost none): "admitted", or the
        request was answered here ("duplicate", "rejected") and its captures
        dropped before any result of theirs."""
        if self.recent_ids.claim(request.id):
            for worker in workers:
                worker.settle(durable=True)
            self._duplicate(request, delivery)
            return "duplicate"
        if sig is not None and self.recent_sigs.claim(sig):
            for worker in workers:
                worker.settle(durable=True)
            self._turn_away(request, delivery, replayed(self.recent_sigs.window), claimed=True)
            return "rejected"
        return "admitted"

    def _parse(self, delivery: Delivery) -> tuple[CaptureRequest, dict[str, Any]] | str:
        """The request and its raw fields, or "ignored" when it was for another
        node (silent) or "rejected" (answered and acked here)."""
        general = self.config.general
        fields: dict[str, Any] | None = None
        if general.logrequests:
            # pcapdaemon's [general] logrequests: every body, before it is judged.
            body = delivery.body[: general.max_request_bytes]
            event(log, "request_body", source=delivery.source, body=body.decode(errors="replace"))
        try:
            fields = decode_body(delivery.body, general.max_request_bytes)
            request = request_for(fields, self.config, delivery.message_id)
            if request is None:
                # Silent, even when other fields are bad: the named node reports.
                event(log, "request_not_for_me", logging.DEBUG, id=fields.get("id"))
                (delivery.not_for_me or delivery.ack)()
                return "ignored"
        except RequestError as exc:
            event(
                log, "request_rejected", logging.WARNING,
                source=delivery.source, id=exc.request_id, error=str(exc),
            )  # fmt: skip
            self._answer_unparsed(delivery.body, exc.request_id, _reply_to(fields), str(exc))
            delivery.ack()
            return "rejected"
        if request.logrequest and not general.logrequests:
            event(log, "request_body", id=request.id, body=delivery.body.decode(errors="replace"))
        return request, fields

    def _launch(
        self, request: CaptureRequest, sig: str | None, delivery: Delivery, workers: list[Worker],
        *, claimed: bool,
    ) -> str | None:  # fmt: skip
        """The captures (and the claims, unless `claimed`) on a capture
        thread, so this thread goes on to the next request. None: that thread
        counts the request; else what became of it (no thread to be had)."""
        with self._lock:
            self._capturing.update(workers)
        args = (request, sig, delivery, workers, claimed)
        try:
            self._capture_pool.submit(self._claim_and_run, *args)
        except RuntimeError as exc:  # shut down: report, free, go on
            for worker in workers:
                worker.settle(durable=True)
                self.reject(request, worker.interface, f"cannot start a capture: {exc}")
            self._not_served(request.id, sig, claimed=claimed)
            delivery.ack()
            return "refused"
        return None

    def _claim_and_run(
        self, request: CaptureRequest, sig: str | None, delivery: Delivery, workers: list[Worker],
        claimed: bool,
    ) -> None:  # fmt: skip
        """A capture thread's first task: one capture here and each other
        interface's on a thread of its own, all under one `Job`. Unless
        `claimed` already (all on rings, registered), the claims go out now
        and are answered while the captures run: each result waits for the
        answer (`ClaimGate`), so a full capture leaves the ring at once, and
        a duplicate or replay stops them all and is answered once. Never raises."""

        def finished(durable: bool) -> None:
            # Served: a duplicate (or replay) for any later run of this node.
            # Stored nowhere: the id was forgotten, and the signature is, too,
            # so the source's redelivery is captured.
            if durable:
                self.recent_ids.served(request.id)
            if sig is not None:
                (self.recent_sigs.served if durable else self.recent_sigs.forget)(sig)

        job = Job(delivery, len(workers), finished=finished)
        gate = None if claimed else ClaimGate(self, request, sig, delivery)
        for worker in workers:
            worker.job, worker.gate = job, gate
        for worker in workers[1:]:
            try:
                self._capture_pool.submit(worker.run)
            except RuntimeError as exc:  # shut down meanwhile: report, free, go on
                worker.settle(durable=True)
                self.reject(request, worker.interface, f"cannot start a capture: {exc}")
        workers[0].run()

    def _turn_away(
        self,
        request: CaptureRequest,
        delivery: Delivery,
        error: str,
        *,
        sig: str | None = None,
        claimed: bool = False,
    ) -> None:
        """Reject a parsed request as a whole, forgetting what was recorded of
        it (`_not_served`) so it may come again, and ack it."""
        self._not_served(request.id, sig, claimed=claimed)
        self.reject(request, None, error)
        delivery.ack()

    def _not_served(self, request_id: str, sig: str | None, *, claimed: bool) -> None:
        """A request refused after its id (and verified signature) were recorded
        may come again: forgotten in memory, and in Redis once `claimed`."""
        for seen, key in ((self.recent_ids, request_id), (self.recent_sigs, sig)):
            if key is not None:
                (seen.forget if claimed else seen.here.forget)(key)

    def _duplicate(self, request: CaptureRequest, delivery: Delivery) -> None:
        event(log, "request_duplicate", id=request.id, source=delivery.source)
        window = self.config.security.dedup_window
        error = f"request id {request.id} was already served within dedup_window={window}s"
        self.tell(request, "duplicate", error=error)
        delivery.ack()

    def _start(
        self, request: CaptureRequest, interface: str, warnings: tuple[str, ...]
    ) -> Worker | str:
        """The worker admitted on `interface`, or what became of the request
        there: "rejected" (what it asks cannot be had on this interface) or
        "refused" (a bound, or a failed ring, said no). Answered either way."""
        ring = self.rings.get(interface)
        ring_error = None if ring is None else ring.error
        problem = interface_problem(
            request, interface, self.config, ring=ring is not None, ring_error=ring_error
        )
        if problem is not None:
            self.reject(request, interface, problem, warnings)
            return "refused" if ring_error is not None else "rejected"
        try:
            reservation = self.admission.reserve(request.bytes)
        except Refused as exc:
            self.reject(request, interface, str(exc), warnings)
            return "refused"
        return Worker(self, request, interface, warnings, reservation)

    def _ready(self, worker: Worker) -> bool:
        """A capture on a ring interface is registered with the ring now
        (False: refused, already answered); any other one is ready as it is."""
        ring = self.rings.get(worker.interface)
        return ring is None or worker.register(ring)

    def refuse(self, delivery: Delivery, reason: str) -> None:
        """Answer a delivery its source could not hold ("overloaded"), unread.

        Called by the source's reader thread, so it stays cheap: only a small
        body is parsed, for its id and reply_to; nothing is logged per body
        (the source logs a count). One for another node stays silent and
        is counted `ignored`, as if it had been read."""
        request_id = reply_to = None
        if len(delivery.body) <= SALVAGE_MAX_BYTES:
            with contextlib.suppress(RequestError):
                fields = decode_body(delivery.body, SALVAGE_MAX_BYTES)
                if not addressed_to(fields, self.node):
                    with self._lock:
                        self._requests[delivery.source, "ignored"] += 1
                    return
                raw_id = fields.get("id")
                if isinstance(raw_id, str) and ID_RE.fullmatch(raw_id):
                    request_id = raw_id
                reply_to = _reply_to(fields)
        with self._lock:
            self._requests[delivery.source, "overloaded"] += 1
        self._answer_unparsed(delivery.body, request_id, reply_to, reason)
        with contextlib.suppress(Exception):
            delivery.ack()

    def _answer_unparsed(
        self, body: bytes, request_id: str | None, reply_to: str | None, error: str
    ) -> None:
        """A rejection for a body that did not become a request (with its
        SHA-256), to `reply_to` too if that much of the body was sound."""
        self.publish(ResultEvent.for_body(self.node, "rejected", error, body, request_id), reply_to)

    def reject(
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
        self.tell(request, "rejected", interface=interface, error=error, warnings=warnings)

    def tell(self, request: CaptureRequest, status: str, **rest: Any) -> None:
        """Publish the event about `request` (ResultEvent.for_request) to the
        results channel and stream, and to its reply_to."""
        self.publish(ResultEvent.for_request(request, self.node, status, **rest), request.reply_to)

    def publish(self, result: ResultEvent, reply_to: str | None = None) -> None:
        self.publisher.submit(result, reply_to)

    # -- after the capture -------------------------------------------------
    def submit(self, worker: Worker, artifact: Artifact, result: ResultEvent) -> None:
        """Hand a captured file to the bounded upload pool, so a slow sink
        never holds up capturing; tracked until stored, for shutdown."""
        try:
            future = self._upload_pool.submit(worker.store, artifact, result)
        except RuntimeError:  # the pool is shut down: store from this thread
            worker.store(artifact, result)
            return
        with self._lock:
            self._uploads[future] = (worker, artifact, result)
        future.add_done_callback(self._upload_done)

    def _upload_done(self, future: Future[None]) -> None:
        with self._lock:
            self._uploads.pop(future, None)

    # -- lifecycle -------------------------------------------------------
    def shutdown(self, timeout: float) -> bool:
        """Stop taking requests, end running captures (stop=shutdown), wait for
        them to be stored. True if everything finished within `timeout`."""
        deadline = time.monotonic() + timeout
        self.admission.close()
        self.capture_stop.set()
        while time.monotonic() < deadline:
            # A handle() already past admission may still add a capture.
            with self._lock:
                if not self._capturing and not self._handling:
                    break
            time.sleep(SHUTDOWN_POLL)
        with self._lock:
            captured = not self._capturing
        # Idle capture threads end now; busy ones (a capture that would not
        # stop) are left to the process's exit.
        self._capture_pool.shutdown(wait=captured)
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
        with self._lock:
            hanging = [item for item in self._uploads.items() if not item[0].done()]
        error = "shutdown: upload still running, spooled for the next run"
        for future, (worker, artifact, result) in hanging:
            spooled = replace(result, status="spooled", error=error)
            if not self.deliverer.spool_unfinished(artifact, spooled):
                continue
            self.publish(spooled, worker.request.reply_to)
            with self._lock:
                self._uploads.pop(future, None)
            worker.settle(durable=True)
