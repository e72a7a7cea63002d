"""One capture registered with a ring: its lookback copied in its own
thread, then its live packets until a bound, a timed stop or shutdown.

A capture with no lookback to copy needs no thread while it runs: the
ring's reader ends it at its packets or bytes bound, and a `Watcher`
(pcapd.ring.watch) at its timed bounds or its stop signal; either hands it
over once (`watched`), and its `outcome` is taken then."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from pcapd.core.events import iso_utc
from pcapd.core.fields import show
from pcapd.engine import (
    BLOCK_TIMEOUT_MS,
    MAX_POLL_WAIT,
    CaptureLimits,
    CaptureOutcome,
    StopSignal,
    timed_stop,
)
from pcapd.pcapfile import pcap_header, pcapng_header
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
        # Its start may be before now (a head start): its duration runs from there.
        self._begin = time.monotonic() - max(0, time.time_ns() - feed.trigger) / NS
        self.done = False
        self.warnings = self._ring_warnings()  # for its result; more after `finish`
        # Watched (no thread waits for it): its stop signal, what is called
        # once when it is over, and the state of its timed bounds.
        self._stop: StopSignal | None = None
        self._over: Callable[[str], None] | None = None
        self._handed = threading.Lock()  # taken once, by whoever ends it first
        self._seen, self._last_packet = 0, self._begin
        self._flush_until = 0.0  # a timed stop's wait for the open kernel block
        self._reason = ""
        self._cut_drops: int | None = None  # the ring's kernel drops at a timed stop

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
        if lost and self.lookback is None:
            # A head start's: the packets between its request's arrival and its registration.
            self.warnings += (
                f"up to {lost} packets of the ring on {ring.interface} that came after the "
                f"request arrived and before its capture started were overwritten by newer "
                f"ones before they were copied ({ring.origin}.lookback_bytes is too small "
                f"for this traffic)",
            )
        elif lost:
            self.warnings += (
                f"lookback: up to {lost} packets of the ring on {ring.interface} were "
                f"overwritten by newer ones before they were copied "
                f"({ring.origin}.lookback_bytes is too small for this traffic)",
            )

    def copy_head_start(self) -> None:
        """The records of its head start (no lookback asked: those that came
        between its request's arrival and its registration, at most
        MAX_HEAD_START, from the last read before it: within its budget,
        reader.HEAD_START_BYTES) into the file now, in the caller's thread, so
        that it needs no thread of its own (`copying` is False after)."""
        if self._spans and self.lookback is None:
            try:
                self._copy_lookback()
            except BaseException:
                self.cancel()
                raise

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._ring.unregister(self._feed)
            self._let_go()

    def _let_go(self) -> None:
        """Unregistered: drop what refers back to it (the ring's call on its
        feed's end, the watched hand-over to its worker), so its file is
        freed with its last reference, not when the cycle collector runs.
        `_stop` is kept: it is in no cycle, and a `look` under way may
        still read it."""
        self._feed.on_full = None
        self._over = None

    @property
    def interface(self) -> str:
        return self._ring.interface

    @property
    def full(self) -> bool:
        """A bound, or the ring's end, has ended it: no more packets for it."""
        return self._feed.full

    @property
    def copying(self) -> bool:
        """It has a lookback to copy: `finish` must run, in a thread of its own."""
        return bool(self._spans)

    def finish(self, stop: StopSignal) -> CaptureOutcome:
        """Copy the lookback, wait for the capture's end, and take it."""
        try:
            if self._spans:
                self._copy_lookback()
            stop_reason = self._wait(stop)
        except BaseException:
            self.cancel()
            raise
        return self.outcome(stop_reason)

    # -- watched: no thread waits -------------------------------------------
    def watched(self, stop: StopSignal, over: Callable[[str], None]) -> bool:
        """From now on `over(stop reason)` is called once, on the thread
        that ends the capture (the ring's reader, or the watcher): then its
        `outcome` is to be taken. True: over already, `over` called here."""
        self._stop, self._over = stop, over
        return self.full and self.hand_over("")

    def filled(self) -> None:
        """Its feed ended (a bound, the ring's stop or failure): the reader's
        call, under the ring's lock, so the hand-over must not block."""
        if self._over is not None and not self.done:
            self.hand_over("")

    def look(self, now: float) -> float | None:
        """The watcher's look at its timed bounds: when to look again, or None
        when it is over (handed over here if time ended it). After a timed
        stop, packets stamped before it may still sit in the kernel's block:
        it is over STOP_FLUSH later, or as soon as its feed is full."""
        feed, limits = self._feed, self._limits
        if feed.full or self.done:
            return None  # the reader hands it over (`filled`), or it was dropped
        if self._flush_until:
            if now < self._flush_until:
                return self._flush_until
            self.hand_over(self._reason)
            return None
        if feed.count != self._seen:
            self._seen, self._last_packet = feed.count, now
        assert self._stop is not None
        deadline = self._begin + limits.duration
        reason = timed_stop(self._stop, now, deadline, self._last_packet, limits.timeout)
        if reason:
            self._reason = reason
            self.cut()
            self._flush_until = now + STOP_FLUSH
            return self._flush_until
        return min(deadline, self._last_packet + limits.timeout)

    def hand_over(self, reason: str) -> bool:
        """Call `over` unless it was called already: True the first time.
        The watcher's, too, for a capture it cannot look at."""
        if not self._handed.acquire(blocking=False):
            return False
        self._give(reason)
        return True

    def fail(self, reason: str, warning: str) -> bool:
        """The watcher's, for a capture it cannot look at: unless it was
        handed over already (its reader ended it on its own bound), cut it
        now, say why in its result and hand it over. True if it did."""
        if not self._handed.acquire(blocking=False):
            return False
        self.cut()
        self.warnings += (warning,)
        self._give(reason)
        return True

    def _give(self, reason: str) -> None:
        over = self._over
        if over is not None:  # else it was cancelled meanwhile: nothing to take
            over(reason)

    def outcome(self, stop_reason: str = "") -> CaptureOutcome:
        """The capture as it ended (`stop_reason`, unless its feed ended it),
        unregistered from the ring."""
        feed = self._feed
        self.done = True
        drops = self._ring.unregister(feed)
        self._let_go()
        # The drops of its own window: counted when it ended (a timed stop,
        # else its feed's end), not when this runs, maybe much later.
        if self._cut_drops is not None:
            drops = self._cut_drops
        elif feed.dropped is not None:
            drops = feed.dropped
        return CaptureOutcome(
            data=feed.buf, packets=feed.count, stop=feed.stop or stop_reason,
            kernel_dropped=max(0, drops - self._drops_before), started=self.started,
            ended=time.time(), linktype=self._ring.linktype, error=feed.error,
            lookback=self.lookback, ring=True,
        )  # fmt: skip

    def cut(self) -> None:
        """A timed stop (or the watcher's, for a capture it cannot look
        at): packets stamped from now on are not kept, and the kernel's
        drops so far are its window's."""
        self._cut_drops = self._ring.dropped
        self._feed.cutoff = time.time_ns()

    def _wait(self, stop: StopSignal) -> str:
        """Until the capture is full, or a timed bound or shutdown ends it."""
        feed, limits = self._feed, self._limits
        # Made before `full` is read: an end after that sets it, and one
        # before it is seen as `full` (set before `end` looks at `done`).
        done = feed.done = threading.Event()
        deadline = self._begin + limits.duration
        last_packet, seen = self._begin, feed.count
        while not feed.full:
            now = time.monotonic()
            if feed.count != seen:
                seen, last_packet = feed.count, now
            reason = timed_stop(stop, now, deadline, last_packet, limits.timeout)
            if reason:
                # Packets stamped before now may still sit in the kernel's block.
                self.cut()
                done.wait(STOP_FLUSH)
                return reason
            wake = min(deadline, last_packet + limits.timeout, now + MAX_POLL_WAIT)
            done.wait(max(0.0, wake - now))
        return feed.stop


def file_header(
    fmt: str,
    linktype: int,
    interface: str,
    snap: int,
    comments: Mapping[str, object],
    lookback: int,
    span_start: int,
    trigger: int,
) -> bytes:
    """What a ring capture's file begins with: a pcap header, or a pcapng
    section with the request's comments and, for a lookback, the span the
    ring gave."""
    if fmt != "pcapng":
        return pcap_header(linktype, snap)
    if lookback:
        comments = {
            **comments,
            "lookback": f"{lookback}s asked; ring packets from {iso_utc(span_start / NS)} "
            f"to {iso_utc(trigger / NS)} (each marked with the comment 'lookback')",
        }
    return pcapng_header(linktype, snap, interface, comments)
