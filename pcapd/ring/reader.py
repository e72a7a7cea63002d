"""The ring of one interface: its handle, the reader thread that fills the
chunk store, and the registration of captures (the seam).

The reader waits on the handle's fd with poll() (the handle is
non-blocking, TPACKET_V3, as the engine's: DESIGN.md's capture engine
facts) and reads DISPATCH_BATCH packets at a time under the ring's lock. A
capture registers under the same lock, between two reads: its trigger is
read and the ring's records noted there, and from the next record on the
reader hands it each run of records it appends. So the seam is a record index.
"""

from __future__ import annotations

import collections
import logging
import select
import threading
import time
from collections.abc import Callable, Mapping

import pcap

from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.core.logs import event
from pcapd.engine import (
    CaptureError,
    CaptureLimits,
    PacketDebug,
    bpf_compile_error,
    check_bpf,
    close_handle,
    dispatch,
    error_text,
    kernel_drops,
    open_handle,
    set_filter,
)
from pcapd.ring.capture import RingCapture, file_header
from pcapd.ring.feed import Feed, compiled_filter
from pcapd.ring.stats import RingStats
from pcapd.ring.store import NS, ChunkStore, Mark, Span, record_ts

log = logging.getLogger("pcapd.ring")

RING_BUFFER_SIZE = 32 * 1024 * 1024  # kernel buffer of a ring's handle, at least
DISPATCH_BATCH = 4096  # packets read per turn under the lock, so registrations get it between
READ_WAIT = 0.05  # s: longest the reader sleeps in poll() before it looks at the clock
EVICT_EVERY = 0.1  # s: how often records older than the ring's seconds are dropped
# s: a capture registered within this long of its request's arrival starts
# at the arrival (its head start: the packets that came while the request was
# read, parsed and admitted are in the file); one that waited longer (a
# queue's backlog) starts at its registration, as without.
MAX_HEAD_START = 0.005
# Bytes of ring records a head start may copy at registration, on the trigger
# thread; more (a high packet rate), and the capture starts at its
# registration instead. The copy walks from the last read before the
# arrival, up to a kernel block (BLOCK_TIMEOUT_MS) earlier than it, so its
# bytes, not MAX_HEAD_START, bound its cost: per record of the smallest
# packets (58 bytes) ~1.2 us passed through as pcap, ~1.8 us through a BPF
# that matches, ~4 us framed as pcapng (measured at load 3-4), so ~1 ms for
# 32 KiB (565 such records) through a BPF. A feed that frames each record
# anew (pcapng, a shorter snap) gets a quarter of it; one with packet debug
# (~100 us a record) none.
HEAD_START_BYTES = 32 * 1024
# Reads remembered with where the store stood after each and the kernel's
# drops then: a head start's copy begins at the last read that ended before
# it, so it walks what came since, not its chunk, and its drops count from
# there. None found (a clock stepped back, a ring just started): no head start.
READ_MARKS = 32
# A tail this small is moved into the file under the ring's lock (one copy);
# a larger one outside it, until what came meanwhile is this small.
TAIL_UNDER_LOCK = 64 * 1024


class RingFilterError(CaptureError):
    """lookback_bpf does not compile for the ring's link type: a config error."""


class Ring:
    """The ring of one interface. `start()` opens its handle (raises
    CaptureError), `register()` serves one capture, `stop()` closes it.
    Memory: see `pcapd.ring`.
    """

    def __init__(
        self,
        interface: str,
        seconds: int,
        max_bytes: int,
        bpf: str = "",
        buffer_size: int = RING_BUFFER_SIZE,
        origin: str = "interface",
    ) -> None:
        self.interface = interface
        self.seconds = seconds
        self.bpf = bpf
        self.origin = origin  # the config table it comes from, for messages: interface[1]
        self.buffer_size = max(buffer_size, RING_BUFFER_SIZE)
        self.store = ChunkStore(max_bytes, seconds)
        self.memory = self.store.memory
        self._feeds: tuple[Feed, ...] = ()  # handed each run of records the reader appends
        self._replaying: set[Feed] = set()  # copying their lookback, live records held
        self.lock = threading.Lock()
        # Who may change _feeds and _replaying: the ring's lock is not needed
        # to drop a full feed (the reader passes it by), only this one.
        self._feeds_lock = threading.Lock()
        # Kernel drops on the handle so far, read by the reader after each
        # dispatch (under the ring's lock): a capture's are those reported
        # by the reads that offered it packets, at no system call of its own.
        self.dropped = 0
        # (ns when a read ended, the store's mark and `dropped` after it),
        # newest last; under the lock.
        self._read_marks: collections.deque[tuple[int, Mark, int]] = collections.deque(
            maxlen=READ_MARKS
        )
        self._stop = threading.Event()
        self._handle: pcap.pcap | None = None
        self.linktype = 0
        self.error: str | None = None  # the handle failed; the ring serves no more
        self._thread = threading.Thread(target=self._read, name=f"ring-{interface}", daemon=True)

    # -- the handle and the reader ------------------------------------------
    def start(self) -> None:
        handle = open_handle(self.interface, self.buffer_size)
        try:
            set_filter(handle, self.interface, self.bpf)
        except CaptureError as exc:
            close_handle(handle)
            raise RingFilterError(f"lookback_bpf of {self.interface}: {exc}") from None
        self._handle = handle
        self.linktype = handle.datalink()
        self._thread.start()
        event(
            log, "ring_started", interface=self.interface, seconds=self.seconds,
            bytes=self.memory, chunks=self.store.chunks, bpf=self.bpf, linktype=self.linktype,
        )  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._handle is not None:
            stats = self.stats()
            event(
                log, "ring_stopped", interface=self.interface, packets=stats.packets,
                evicted_overflow=stats.evicted_overflow, evicted_age=stats.evicted_age,
                kernel_dropped=stats.kernel_dropped,
            )  # fmt: skip
        with self.lock:
            for feed in self._feeds:
                if not feed.full:
                    feed.end("shutdown")
            if self._handle is not None:
                close_handle(self._handle)
                self._handle = None

    def _read(self) -> None:
        handle = self._handle
        assert handle is not None
        poller = select.poll()
        poller.register(handle.fileno(), select.POLLIN)
        on_packet, settle = self.store.writer(self._segment)
        evicted_at = 0.0
        while not self._stop.is_set():
            poller.poll(READ_WAIT * 1000)
            got = DISPATCH_BATCH
            while got >= DISPATCH_BATCH:
                with self.lock:
                    try:
                        got = dispatch(handle, DISPATCH_BATCH, on_packet)
                    except OSError as exc:
                        settle()
                        self._failed(exc)
                        return
                    # Before the read's last records go out: a capture they
                    # fill sees the drops reported with them.
                    self.dropped = kernel_drops(handle)
                    settle()
                    self._read_marks.append((time.time_ns(), self.store.mark(), self.dropped))
                    now = time.monotonic()
                    if now - evicted_at >= EVICT_EVERY:
                        evicted_at = now
                        self.store.evict_old(self.store.cutoff())
                time.sleep(0)  # a capture waiting to register takes the lock now

    def _failed(self, exc: OSError) -> None:
        """The handle failed: every capture ends with what it holds. Lock held."""
        self.error = f"lookback ring on {self.interface} failed: {error_text(exc)}"
        event(log, "ring_failed", logging.ERROR, interface=self.interface, error=self.error)
        for feed in self._feeds:
            if not feed.full:  # one its own bound ended already is no failure
                feed.end("shutdown", self.error)

    def _segment(self, data: memoryview, start: int, end: int, records: int) -> None:
        """The records one read appended (or those of a chunk the writer
        leaves), handed to every capture: once per read, not per packet,
        and nothing at all when none is served. Lock held."""
        if self._feeds:
            first = record_ts(data, start)
            for feed in self._feeds:
                feed.take(data, start, end, records, first)

    def replay(self, spans: tuple[Span, ...], feed: Feed) -> int:
        """Hand `feed` the records of `spans` without the lock: records lost."""
        return self.store.replay(spans, feed.replay, lambda: feed.full)

    def go_live(self, feed: Feed) -> None:
        """The lookback is in the file: the tail follows it, then the reader
        offers `feed` its packets itself. A large tail is moved without the
        lock, the last small one under it."""
        while True:
            with self.lock:
                tail, records, over = feed.tail, feed.tail_count, feed.over
                feed.tail, feed.tail_count = bytearray(), 0
                if over or feed.full or len(tail) <= TAIL_UNDER_LOCK:
                    feed.merge(tail, records, over)
                    with self._feeds_lock:
                        self._replaying.discard(feed)
                    feed.holding = False
                    return
                # Counted here, copied below: `take` sees the room it leaves.
                take = feed.count_tail(tail, records, over=False)
            feed.buf += memoryview(tail)[:take]

    def stats(self) -> RingStats:
        with self.lock:
            self.store.evict_old(self.store.cutoff())
            packets, held = self.store.held()
            oldest = self.store.oldest()
            return RingStats(
                interface=self.interface, packets=packets, bytes=held,
                oldest=None if oldest is None else oldest / NS,
                evicted_overflow=self.store.evicted_overflow,
                evicted_age=self.store.evicted_age, kernel_dropped=self.dropped,
                captures=len(self._feeds), replaying=len(self._replaying),
            )  # fmt: skip

    # -- captures -------------------------------------------------------------
    def register(
        self,
        limits: CaptureLimits,
        *,
        fmt: str,
        bpf: str,
        lookback: int,
        comments: Mapping[str, object],
        packet_debug: PacketDebug | None = None,
        on_full: Callable[[], None] | None = None,
        arrived: float | None = None,
    ) -> RingCapture:
        """Start a capture, as `engine.capture` on a handle of its own would
        make it: from its start (and `lookback` seconds before it) it gets
        every packet that matches `bpf`, until `finish` or `cancel` (or,
        watched, its `outcome`). It starts when its request `arrived`
        (monotonic), if that is at most MAX_HEAD_START ago, else now: the
        packets that came while the request was read, parsed and admitted
        are in the file too (the ring holds them; they are not marked as
        lookback). Without a lookback that head start is copied by the
        caller (`copy_head_start`), so it is taken only from a read mark and
        within its budget (`_head_start_budget`); with one it never reaches
        past the ring's seconds.
        Bounds count the whole file; `duration` runs from the start. Raises
        CaptureError (a bad filter, a failed ring) before anything is
        registered. `on_full` is called (under the ring's lock, on the
        thread that ends it) when a bound or shutdown ends the
        capture before `finish` does; a watched capture is handed over then.
        Memory: its file and tail never exceed `limits.bytes` (`pcapd.ring`).
        """
        match = self._compile(bpf)
        # The capture, once made: told when its feed ends. A cycle (feed,
        # this closure, the capture) that `RingCapture` breaks when it is
        # taken, so its file goes with its last reference, not the collector.
        made: list[RingCapture] = []

        def ended() -> None:
            if on_full is not None:
                on_full()
            if made:  # else it is not watched yet: `watched` sees the feed full
                made[0].filled()

        with self.lock:
            if self.error is not None or self._handle is None:
                why = self.error or f"lookback ring on {self.interface} is not running"
                raise CaptureError(why)
            budget = _head_start_budget(fmt, limits.snap, packet_debug)
            trigger, since, spans, drops_before = self._window(lookback, arrived, budget)
            oldest = self.store.oldest() if lookback else None
            span_start = trigger if oldest is None else max(since, oldest)
            header = file_header(
                fmt, self.linktype, self.interface, limits.snap, comments, lookback,
                span_start, trigger,
            )  # fmt: skip
            if len(header) > limits.bytes:
                raise CaptureError(
                    f"bytes={limits.bytes} cannot hold even the {len(header)}-byte file header"
                )
            feed = Feed(
                header, limits, pcapng=fmt == "pcapng", match=match, since=since,
                trigger=trigger, debug=packet_debug, on_full=ended, holding=bool(spans),
                lock=self.lock, drops=self._drops_so_far,
            )  # fmt: skip
            with self._feeds_lock:
                if spans:
                    self._replaying.add(feed)
                self._feeds = (*self._feeds, feed)
        delivered = round((trigger - span_start) / NS, 3) if lookback else None
        made.append(RingCapture(self, feed, limits, drops_before, delivered, spans))
        return made[0]

    def _window(
        self, lookback: int, arrived: float | None, budget: int
    ) -> tuple[int, int, tuple[Span, ...], int]:
        """(trigger, since, the spans to copy, the kernel's drops before it)
        of a capture registering now; its request `arrived` (monotonic), its
        head start may copy `budget` bytes (with a lookback, copied on the
        capture's own thread, the budget only says whether it has one).
        Read under the lock: every record held now is older than now, and
        the reader offers every later one. Lock held."""
        now = time.time_ns()
        head = 0 if arrived is None else int((time.monotonic() - arrived) * NS)
        if not 0 < head <= MAX_HEAD_START * NS or not budget:
            head = 0
        if lookback:
            # since >= the cutoff, so a ring that has run `lookback` seconds
            # holds them all (the result's `lookback` is what was asked):
            # the head start gives way where the ring's seconds end.
            head = max(0, min(head, (self.seconds - lookback) * NS))
            trigger = now - head
            since = trigger - lookback * NS
            # Whole chunks only: the replay skips older records by their stamps.
            self.store.evict_old(min(self.store.cutoff(), since), walk=0)
            read = self._read_before(trigger) if head else None
            drops = self.dropped if read is None else read[1]
            return trigger, since, self.store.spans(since), drops
        if head:
            # Copied at registration, on the caller's thread: only from a
            # read mark (else its walk could be every chunk: a clock stepped
            # back) and within its budget; else it starts now.
            read = self._read_before(now - head)
            if read is not None:
                spans = self.store.spans(now - head, read[0])
                if sum(span.end - span.start for span in spans) <= budget:
                    return now - head, now - head, spans, read[1]
        # From now: every record held is older (the reader offers the rest).
        return now, now, (), self.dropped

    def _read_before(self, since: int) -> tuple[Mark, int] | None:
        """The store's mark and the kernel's drops after the last read that
        ended before `since`: every record before the mark was read, so
        stamped, before `since`. None when every read remembered ended later
        (or none did). Lock held."""
        found = None
        for ended, mark, dropped in self._read_marks:
            if ended >= since:
                break
            found = mark, dropped
        return found

    def _drops_so_far(self) -> int:
        """`dropped`, for a feed ending: the reader refreshed it with the read
        that ends it (or it is the ring's end)."""
        return self.dropped

    def unregister(self, feed: Feed) -> int:
        """No more packets for `feed`: the kernel's drops so far. A full
        feed takes nothing more (`Feed.take`), so it is dropped without
        waiting for the reader's read to end; any other under the ring's lock."""
        if feed.full:
            self._forget(feed)
        else:
            with self.lock:
                self._forget(feed)
        return self.dropped

    def _forget(self, feed: Feed) -> None:
        with self._feeds_lock:
            self._replaying.discard(feed)
            self._feeds = tuple(f for f in self._feeds if f is not feed)

    def _compile(self, bpf: str) -> Callable[[bytes | memoryview], bool] | None:
        """The request's filter for the ring's link type; None matches all.
        Checked as `set_filter` checks it: nothing unchecked reaches libpcap."""
        if not bpf:
            return None
        check_bpf(bpf)
        try:
            return compiled_filter(bpf, self.linktype)
        except OSError as exc:
            raise bpf_compile_error(bpf, self.interface, self.linktype, exc) from None


def _head_start_budget(fmt: str, snap: int, packet_debug: PacketDebug | None) -> int:
    """Bytes of ring records a capture's head start may copy on the caller's
    thread (HEAD_START_BYTES): by what framing each record costs."""
    if packet_debug is not None:
        return 0
    if fmt == "pcapng" or snap < MAX_SNAPLENGTH:
        return HEAD_START_BYTES // 4
    return HEAD_START_BYTES
