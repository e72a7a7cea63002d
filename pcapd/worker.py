"""One capture on one interface, from its reservation to its result event.

A `Worker` runs steps 5 to 7 of DESIGN.md's "One capture, step by step" for
one (request, interface): take a handle and set the filter, capture under
the request's bounds, hand the file to the controller's upload pool, store
it (`Deliverer.deliver`), publish the result, and release its `Reservation`
and tell its `Job`, exactly once, whichever way it ends. Its memory is the
capture's file (at most the request's `bytes`) until the file is stored.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pcap

from pcapd.admission import Reservation
from pcapd.core.events import ResultEvent, iso_utc
from pcapd.core.logs import event
from pcapd.core.request import CaptureRequest
from pcapd.engine import (
    CaptureError,
    CaptureLimits,
    CaptureOutcome,
    capture,
    close_handle,
    set_filter,
)
from pcapd.job import Job
from pcapd.packetdebug import packet_logger
from pcapd.ring import Ring, RingCapture
from pcapd.ring.watch import Watcher
from uploaders.base import Artifact
from uploaders.deliver import Flight, Unfinished
from uploaders.spool_entry import SpoolEntry

if TYPE_CHECKING:
    from pcapd.controller import Controller
    from pcapd.controller.claims import ClaimGate

# The controller's logger: these lines were its own, and operators filter on it.
log = logging.getLogger("pcapd.controller")


class Worker:
    """One capture on one interface; its file then goes to the upload pool."""

    def __init__(
        self,
        controller: Controller,
        request: CaptureRequest,
        interface: str,
        warnings: tuple[str, ...],
        reservation: Reservation,
    ) -> None:
        self.controller = controller
        self.request = request
        self.interface = interface
        self.warnings = warnings
        self.reservation = reservation  # released exactly once, by settle()
        self.job: Job | None = None  # set before it runs (after the claims, off a ring)
        self.gate: ClaimGate | None = None  # claims still to be answered before a result
        self.served: RingCapture | None = None  # registered with the interface's ring
        self.registered = 0.0  # monotonic time it was, for the trigger latency
        # Who publishes its final result, taken once: the store itself, a
        # shutdown that spooled it, or a crash. A store that finds it taken
        # does nothing (a copy run twice must not store or publish twice).
        self._result_lock = threading.Lock()
        self._result_taken = False
        self._spooled = False  # taken by shutdown, which spooled its store (still runs)
        self.flight = Flight()  # its store, as shutdown sees it

    def register(self, ring: Ring, arrived: float) -> bool:
        """Start the capture on `ring` now, in the caller's thread (it costs
        no socket: ~0.3 ms cold, its filter compiled and its feed made), so
        it is active before the claims; it starts when its request `arrived`
        (monotonic) if that was at most MAX_HEAD_START ago, and the packets
        the ring took since are copied here (within HEAD_START_BYTES, a
        quarter for pcapng, none with packet debug: ~1 ms at worst; more,
        and it starts now).
        False when refused (already answered and settled). `capture_started`
        is logged later, by `watch` (on the trigger thread, once the claims
        are out) or by the capture thread (`run`)."""
        request = self.request
        limits, comments = self._framing()
        debug = (
            packet_logger(request.id, self.interface, ring.linktype)
            if request.packetdebug else None
        )  # fmt: skip
        try:
            self.served = ring.register(
                limits, fmt=request.format, bpf=request.bpf, lookback=request.lookback,
                comments=comments, packet_debug=debug,
                # Full: the slot goes to the next capture now (its file is
                # still held against max_memory until stored).
                on_full=self.reservation.free_slot, arrived=arrived,
            )  # fmt: skip
        except CaptureError as exc:
            self.refused(str(exc))
            return False
        try:
            self.served.copy_head_start()
        except Exception as exc:  # a bug costs this capture (cancelled), not the request
            self._crashed(exc)
            return False
        self.registered = time.monotonic()
        self.controller.capture_started.set()
        return True

    def watch(self, watcher: Watcher) -> None:
        """Serve a ring capture with no lookback to copy without a thread of
        its own: the ring's reader or `watcher` hands it over when it is
        over, and a capture thread takes it from there (`_over`). The job
        and the gate are set before."""
        served, gate = self.served, self.gate
        assert served is not None and gate is not None
        self._log_started()
        self._observe_active(self.registered)
        watcher.watch(served, gate.stop, self._over)

    def _over(self, reason: str) -> None:
        """Handed over, on the reader's or the watcher's thread (it must not
        block): the rest (the claims' answer, then its result or its store
        handed to the upload pool) on a capture thread, never behind the
        uploads in progress."""
        self.controller.on_capture_thread(self._complete, reason)

    def _complete(self, reason: str) -> None:
        """A watched capture is over: take it, as `run` would; never raises."""
        try:
            assert self.served is not None
            self._ring_done(self.served.outcome(reason))
        except Exception as exc:
            self._crashed(exc)

    def run(self) -> None:
        """The capture thread's body; never raises."""
        try:
            self._run()
        except Exception as exc:
            self._crashed(exc)

    def take_result(self) -> bool:
        """True for the first caller only: it, and nobody else, publishes the
        final result (shutdown, spooling a store, takes it from the store)."""
        with self._result_lock:
            taken, self._result_taken = self._result_taken, True
        return not taken

    def _crashed(self, exc: Exception) -> None:
        event(
            log, "capture_crashed", logging.ERROR, exc_info=True,
            id=self.request.id, interface=self.interface,
        )  # fmt: skip
        if not self.reservation.released and self.take_result():
            self.controller.tell(
                self.request, "failed", interface=self.interface,
                error=f"capture failed: {exc!r}", warnings=self.warnings,
            )  # fmt: skip
        self.settle(durable=False)

    def _ring_done(self, outcome: CaptureOutcome) -> None:
        """A ring capture's end: its result, unless its claims found it taken."""
        gate = self.gate
        if gate is not None and not gate.passed(wait=not self.controller.captures_closed):
            self.job = None  # a duplicate or a replay: the gate answered it
            self.settle(durable=True)
            return
        assert self.served is not None
        self.warnings = (*self.warnings, *self.served.warnings)
        self._captured(outcome)

    def _run(self) -> None:
        ctl = self.controller
        served = self.served
        if served is not None:
            # Registered with the ring by the controller (`_ready`): no socket
            # to open, no spare taken. Active since then (logged here, not on
            # the trigger thread); the job is known now.
            self._log_started()
            self._observe_active(self.registered)
            gate = self.gate
            self._ring_done(served.finish(ctl.capture_stop if gate is None else gate.stop))
            return
        # Opening a handle (when no spare is ready) takes 8-16 ms: here, not in
        # the trigger thread, so requests keep being admitted or refused fast.
        handle: pcap.pcap | None = None
        try:
            handle = ctl.pool.take(self.interface)
            set_filter(handle, self.interface, self.request.bpf)
        except CaptureError as exc:
            if handle is not None:
                close_handle(handle)
            self.refused(str(exc))
            return
        finally:
            ctl.pool.replenish()
        try:
            outcome = self._capture(handle)
        except CaptureError as exc:  # e.g. bytes cannot hold this pcapng header
            self.refused(str(exc))
            return
        self._captured(outcome)

    def refused(self, error: str) -> None:
        """Rejected before anything was captured: nothing to store."""
        self.controller.reject(self.request, self.interface, error, self.warnings)
        self.settle(durable=True)

    def _framing(self) -> tuple[CaptureLimits, dict[str, Any]]:
        """The request's bounds, and the pcapng comments about it."""
        request = self.request
        limits = CaptureLimits(
            snap=request.snap, packets=request.packets, bytes=request.bytes,
            duration=request.duration, timeout=request.timeout,
        )  # fmt: skip
        comments: dict[str, Any] = {
            "request_id": request.id, "alertid": request.alertid, "node": self.controller.node,
            "tags": ",".join(request.tags), "customer": request.customer, "bpf": request.bpf,
        }  # fmt: skip
        return limits, comments

    def _log_started(self) -> None:
        request = self.request
        event(
            log, "capture_started", id=request.id, alertid=request.alertid,
            interface=self.interface, bpf=request.bpf, packets=request.packets,
            bytes=request.bytes, duration=request.duration, timeout=request.timeout,
            lookback=request.lookback or None,
        )  # fmt: skip

    def _capture(self, handle: pcap.pcap) -> CaptureOutcome:
        """On the handle taken, closed after."""
        ctl = self.controller
        request = self.request
        limits, comments = self._framing()
        self._log_started()
        debug = (
            packet_logger(request.id, self.interface, handle.datalink())
            if request.packetdebug else None
        )  # fmt: skip
        try:
            return capture(
                handle, limits, fmt=request.format, interface=self.interface,
                comments=comments, stop=ctl.capture_stop, packet_debug=debug,
                on_start=self._active,
            )  # fmt: skip
        finally:
            close_handle(handle)

    def _active(self) -> None:
        """The capture polls its handle: the request is being served."""
        self._observe_active(time.monotonic())
        self.controller.capture_started.set()

    def _observe_active(self, at: float) -> None:
        """Trigger to active (`at`, monotonic), for pcapd_trigger_latency_seconds."""
        if self.job is not None:
            self.controller.metrics.active(at - self.job.delivery.received)

    def _captured(self, outcome: CaptureOutcome) -> None:
        """Free the slot at once; keep memory and disk for the file until it
        is stored, by the upload pool."""
        ctl = self.controller
        ctl.metrics.captured(outcome)
        packets, data = outcome.packets, outcome.data
        # A handle that failed mid-capture (its interface went away) fails the
        # capture; what came before it is stored all the same.
        status = "failed" if outcome.error else "ok" if packets else "empty"
        result = ResultEvent.for_request(
            self.request, ctl.node, status, warnings=self.warnings,
            interface=self.interface, error=outcome.error, stop=outcome.stop,
            packets=packets, bytes=len(data) if packets else 0,
            kernel_dropped=outcome.kernel_dropped, started=iso_utc(outcome.started),
            ended=iso_utc(outcome.ended),
            sha256=hashlib.sha256(data).hexdigest() if packets else None,
            lookback=outcome.lookback,
        )  # fmt: skip
        if not packets:
            # As pcapdaemon: nothing captured, nothing to upload. Tracked
            # until settled: shutdown waits for its answer and ack.
            self.reservation.free_slot()
            self.finish(result, {}, durable=True)
            return
        self.reservation.keep(len(data))  # the slot is free now, the file held
        artifact = Artifact(
            data=data,
            filename=ctl.names(ctl.node, self.interface, outcome.started, self.request.id,
                               self.request.format),
            format=self.request.format, sha256=result.sha256 or "", request=self.request,
            node=ctl.node, interface=self.interface,
        )  # fmt: skip
        ctl.submit(self, artifact, result)  # no longer capturing: now an upload

    def store(self, artifact: Artifact, result: ResultEvent) -> None:
        """Deliver to every sink (an upload worker's job), then finish;
        nothing when a crash has reported it. Spooled by shutdown meanwhile,
        it still runs: the spool entry is its write-ahead one, and a
        delivery after all is told as `delivered` (`spool_at_shutdown`).
        The entry is held until the result is published, so a drainer's
        `delivered` never comes before this `spooled`."""
        with self._result_lock:
            if self._result_taken and not self._spooled:
                return
        deliverer = self.controller.deliverer
        try:
            try:
                outcome = deliverer.deliver(artifact, result, self.flight)
            except Exception as exc:  # a bug or an OSError past the deliverer's own handling
                event(log, "store_crashed", logging.ERROR, exc_info=True, id=self.request.id)
                failed = replace(result, status="failed", error=f"storing failed: {exc!r}")
                self.finish(failed, {}, durable=False)
                return
            self.finish(outcome.apply(result), outcome.locations, durable=outcome.durable)
        finally:
            deliverer.release(self.flight)

    def spool_at_shutdown(self, artifact: Artifact, spooled: ResultEvent) -> Unfinished:
        """Shutdown cannot wait for this store, under way: "spooled" when the
        capture is in the spool (once, whoever wrote it) and `spooled` is
        published, with the locations stored so far; a delivery the store
        makes after all is `delivered` (`_delivered_late`). "finished": the
        store (or a crash) has its result. "lost": logged."""
        with self._result_lock:
            if self._result_taken:
                return "finished"
            verdict, spooled = self.controller.deliverer.spool_unfinished(
                artifact, spooled, self.flight, self._delivered_late
            )
            if verdict == "spooled":
                self._result_taken = self._spooled = True
                self.controller.publish(spooled, self.request.reply_to)
            return verdict

    def _delivered_late(self, result: ResultEvent, entry: SpoolEntry) -> bool:
        """`delivered`, as the drainer says it, after the `spooled` shutdown
        published (under the lock it holds meanwhile). The entry is kept
        either way (`hand_over`'s keep): the next run's drainer says it again."""
        with self._result_lock:
            return self.controller.publish(result, self.request.reply_to)

    def finish(self, result: ResultEvent, locations: Mapping[str, str], durable: bool) -> None:
        """Log and publish the final result, then settle; only settle when
        shutdown has published it already (spooled)."""
        if not self.take_result():
            self.settle(durable)
            return
        try:
            event(
                log, "capture_done", id=result.id, interface=result.interface,
                status=result.status, stop=result.stop, packets=result.packets,
                bytes=result.bytes, kernel_dropped=result.kernel_dropped,
                locations=dict(locations), error=result.error,
            )  # fmt: skip
            self.controller.publish(result, self.request.reply_to)
        finally:
            self.settle(durable)

    def settle(self, durable: bool) -> None:
        """Release everything this capture holds and tell its job, exactly
        once; a capture stored nowhere has its id forgotten, so it may come
        again. Untracked last: shutdown waits until its delivery is settled."""
        try:
            if self.served is not None:
                self.served.cancel()  # a ring capture dropped before it ran (a duplicate, say)
            if not self.reservation.release():
                return
            if not durable:
                self.controller.recent_ids.forget(self.request.id)
            if self.job is not None:
                self.job.done(durable)
        finally:
            self.controller.untrack(self)
