"""One capture registered with a ring: its lookback copied in its own
thread, then its live packets until a bound, a timed stop or shutdown."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from pcapd.core.fields import show
from pcapd.engine import (
    BLOCK_TIMEOUT_MS,
    MAX_POLL_WAIT,
    CaptureLimits,
    CaptureOutcome,
    StopSignal,
    timed_stop,
)
from pcapd.ring.feed import Feed
from pcapd.ring.store import NS, Span

if TYPE_CHECKING:
    from pcapd.ring.reader import Ring

STOP_FLUSH = BLOCK_TIMEOUT_MS * 1.5 / 1000  # s: the open kernel block, read after a timed stop


class RingCapture:
    """One capture registered with a ring: `finish` copies its lookback,
    waits for its bounds and returns its file; `cancel` drops it (a
    duplicate, a refusal). Either unregisters it, once."""

    def __init__(
        self,
        ring: Ring,
        feed: Feed,
        limits: CaptureLimits,
        drops_before: int,
        lookback: float | None,
        spans: tuple[Span, ...],
    ) -> None:
        self._ring = ring
        self._feed = feed
        self._limits = limits
        self._drops_before = drops_before
        self._spans = spans  # the lookback still to copy
        self.lookback = lookback  # seconds the ring gave; None without a lookback
        self.started = feed.trigger / NS
        self._begin = time.monotonic()
        self.done = False
        self.warnings = self._ring_warnings()  # for its result; more after `finish`

    def _ring_warnings(self) -> tuple[str, ...]:
        ring = self._ring
        if not ring.bpf:
            return ()
        # Live captures too: they get only what the ring's handle passes.
        return (f"ring on {ring.interface} keeps only {show(ring.bpf)} "
                f"({ring.origin}.lookback_bpf)",)  # fmt: skip

    def _copy_lookback(self) -> None:
        """The ring's records from before the trigger into the file, then the
        live ones that came meanwhile: in this thread, not the ring's lock."""
        ring, feed = self._ring, self._feed
        lost = ring.replay(self._spans, feed)
        self._spans = ()
        ring.go_live(feed)
        if lost:
            self.warnings += (
                f"lookback: up to {lost} packets of the ring on {ring.interface} were "
                f"overwritten by newer ones before they were copied "
                f"({ring.origin}.lookback_bytes is too small for this traffic)",
            )

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._ring.unregister(self._feed)

    def finish(self, stop: StopSignal) -> CaptureOutcome:
        feed = self._feed
        try:
            if self._spans:
                self._copy_lookback()
            stop_reason = self._wait(stop)
        finally:
            self.done = True
            drops = self._ring.unregister(feed)
        return CaptureOutcome(
            data=feed.buf, packets=feed.count, stop=feed.stop or stop_reason,
            kernel_dropped=max(0, drops - self._drops_before), started=self.started,
            ended=time.time(), linktype=self._ring.linktype, error=feed.error,
            lookback=self.lookback, ring=True,
        )  # fmt: skip

    def _wait(self, stop: StopSignal) -> str:
        """Until the capture is full, or a timed bound or shutdown ends it."""
        feed, limits = self._feed, self._limits
        deadline = self._begin + limits.duration
        last_packet, seen = self._begin, feed.count
        while not feed.full:
            now = time.monotonic()
            if feed.count != seen:
                seen, last_packet = feed.count, now
            reason = timed_stop(stop, now, deadline, last_packet, limits.timeout)
            if reason:
                # Packets stamped before now may still sit in the kernel's block.
                feed.cutoff = time.time_ns()
                feed.done.wait(STOP_FLUSH)
                return reason
            wake = min(deadline, last_packet + limits.timeout, now + MAX_POLL_WAIT)
            feed.done.wait(max(0.0, wake - now))
        return feed.stop
