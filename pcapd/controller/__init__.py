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

import contextlib
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from pcapd.admission import Refused
from pcapd.controller.answers import Answers, _reply_to
from pcapd.controller.claims import ClaimGate, answer_claims, claims_verdict
from pcapd.controller.uploads import Uploads
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.request import (
    CaptureRequest,
    RequestError,
    decode_body,
    interface_problem,
    request_for,
    resolve_interfaces,
)
from pcapd.job import Job
from pcapd.ring import Ring
from pcapd.signing import verify
from pcapd.worker import Worker
from triggers.base import Delivery

log = logging.getLogger("pcapd.controller")


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


class Controller(Answers, Uploads):
    """Its parts, pools and counters are built in `ControllerState`; answers
    in `.answers`; uploads and shutdown in `.uploads`; claims of ring
    captures in `.claims`. Here: a delivery from its body to its captures."""

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
                if status is not None:  # None: its `ClaimGate` counts it, on a capture thread
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
        when its claims' answer decides it (`ClaimGate`, on the capture thread
        that first takes one of its captures)."""
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
        workers = [
            w for w in started if isinstance(w, Worker) and self._ready(w, delivery.received)
        ]
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
        id_taken = self.recent_ids.claim(request.id)
        # The signature is claimed only for a request not served already.
        sig_taken = None if id_taken or sig is None else self.recent_sigs.claim(sig)
        if claims_verdict(id_taken, sig_taken) != "admitted":
            for worker in workers:
                worker.settle(durable=True)
        return answer_claims(self, request, sig, delivery, id_taken, sig_taken)

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
            # Logged at once, or counted into a summary under a flood (`refusals`).
            self.refusals.rejected(exc.request_id, str(exc), source=delivery.source)
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
        if not claimed and not any(w.served is None or w.served.copying for w in workers):
            self._watch(request, sig, delivery, workers)
            return None
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

    def _job(
        self, request: CaptureRequest, sig: str | None, delivery: Delivery, captures: int
    ) -> Job:
        """The `Job` of a request's captures, and what their end records."""

        def finished(durable: bool) -> None:
            # Served: a duplicate (or replay) for any later run of this node.
            # Stored nowhere: the id was forgotten, and the signature is, too,
            # so the source's redelivery is captured.
            if durable:
                self.recent_ids.served(request.id)
            if sig is not None:
                (self.recent_sigs.served if durable else self.recent_sigs.forget)(sig)

        return Job(delivery, captures, finished=finished)

    def _watch(
        self, request: CaptureRequest, sig: str | None, delivery: Delivery, workers: list[Worker]
    ) -> None:
        """Ring captures with no lookback to copy take no thread while they
        run (`pcapd.ring.watch`): the claims go out now, and a capture thread
        takes each capture once it is over, its result waiting for the
        claims' answer (`ClaimGate`) as in `_claim_and_run`."""
        job = self._job(request, sig, delivery, len(workers))
        gate = ClaimGate(self, request, sig, delivery)
        for worker in workers:
            worker.job, worker.gate = job, gate
        for worker in workers:
            worker.watch(self.watcher)

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
        job = self._job(request, sig, delivery, len(workers))
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

    def _ready(self, worker: Worker, arrived: float) -> bool:
        """A capture on a ring interface is registered with the ring now,
        starting when its request `arrived` (False: refused, already
        answered); any other one is ready as it is."""
        ring = self.rings.get(worker.interface)
        return ring is None or worker.register(ring, arrived)
