"""The lookback ring: one long-lived handle per ring interface, its last
seconds of packets in memory, and every capture on that interface served
from it.

One reader thread per ring waits on the handle's fd with poll() (the handle
is non-blocking, TPACKET_V3, as the engine's: DESIGN.md's capture engine
facts) and appends each packet to large chunks preallocated at start: a
12-byte record head (timestamp in ns, length) and the packet, no Python
object kept per packet. Chunks are reused in turn; reusing the oldest one
drops its records (an overflow, counted), and records older than `seconds`
are dropped as the clock passes them (counted apart).

A capture on the ring interface registers under the ring's lock: its BPF is
compiled once for the ring's link type (`pcap.bpf(...).filter`, in user
space); its trigger is read and the ring's records noted there, and from
the next record on the reader offers it every packet, under the same lock.
So the seam is a record index: no gap, no duplicate, whatever the
timestamps. With a lookback, the records noted (those from trigger -
lookback) are copied and filtered later, in the capture's own thread and
without the lock, while the reader keeps reading: live packets wait in the
capture's tail meanwhile, and a chunk the writer reuses during the copy is
detected by its generation number (its records are lost, and said so).
Captures take no socket and no spare handle, so they start in well under a
millisecond.

Memory: `memory` bytes (the chunks, at most `max_bytes`), reserved from
max_memory at start; a capture's file and its tail together stay within its
own `bytes` bound, as in the engine, plus one `REPLAY_SLICE` while its
lookback is copied; the per-chunk bookkeeping is a few integers.
"""

from __future__ import annotations

import functools
import logging
import select
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pcap

from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.core.events import iso_utc
from pcapd.core.fields import bpf_problem, show
from pcapd.core.logs import event
from pcapd.engine import (
    BLOCK_TIMEOUT_MS,
    MAX_POLL_WAIT,
    CaptureError,
    CaptureLimits,
    CaptureOutcome,
    PacketDebug,
    close_handle,
    open_handle,
    set_filter,
    timed_stop,
)
from pcapd.pcapfile import (
    EPB_HEAD,
    EPB_OVERHEAD,
    LOOKBACK_EPB_OPTIONS,
    PCAP_RECORD,
    PCAPNG_EPB,
    pcap_header,
    pcapng_header,
)

log = logging.getLogger("pcapd.ring")

RECORD = struct.Struct("<qI")  # ts_ns, length; the packet's bytes follow
_HEAD, _pack_head = RECORD.size, RECORD.pack_into  # the hot path's names
CHUNK_TARGET = 4 * 1024 * 1024  # bytes per chunk, for rings large enough
MIN_CHUNKS = 4  # so that an overflow drops at most a quarter of the ring
MIN_CHUNK = MAX_SNAPLENGTH + RECORD.size  # every chunk holds the largest packet
RING_BUFFER_SIZE = 32 * 1024 * 1024  # kernel buffer of a ring's handle, at least
DISPATCH_BATCH = 4096  # packets read per turn under the lock, so registrations get it between
READ_WAIT = 0.05  # s: longest the reader sleeps in poll() before it looks at the clock
EVICT_EVERY = 0.1  # s: how often records older than the ring's seconds are dropped
STOP_FLUSH = BLOCK_TIMEOUT_MS * 1.5 / 1000  # s: the open kernel block, read after a timed stop
NS = 1_000_000_000
# Bytes of a chunk copied at a time by a lookback replay, then checked against
# the chunk's generation: whole records, as every record fits in MIN_CHUNK.
REPLAY_SLICE = MIN_CHUNK
# A tail this small is moved into the file under the ring's lock (one copy);
# a larger one outside it, until what came meanwhile is this small.
TAIL_UNDER_LOCK = 64 * 1024

# Compiled request filters kept, by (expression, link type): a storm of one
# alert's requests compiles its filter once. Each program is at most 4,096
# instructions of 8 bytes, so the cache holds at most ~4 MiB (typically a few KiB).
BPF_CACHE_ENTRIES = 128


@functools.lru_cache(maxsize=BPF_CACHE_ENTRIES)
def compiled_filter(bpf: str, linktype: int) -> Callable[[bytes | memoryview], bool]:
    """`bpf` compiled for `linktype`, applied in user space; raises OSError
    when it does not compile (not cached). A program only reads itself as it
    filters, so one serves every capture and ring of that link type. pypcap
    compiles for a fixed snaplen, so the request's snap does not enter."""
    filter_: Callable[[bytes | memoryview], bool] = pcap.bpf(bpf.encode(), linktype).filter
    return filter_


def chunk_layout(max_bytes: int) -> tuple[int, int]:
    """(chunks, bytes each) for a ring of at most `max_bytes` (>= 2 MiB)."""
    count = max(MIN_CHUNKS, max_bytes // CHUNK_TARGET)
    if max_bytes // count < MIN_CHUNK:
        count = max(2, max_bytes // MIN_CHUNK)
    return count, max_bytes // count


class RingFilterError(CaptureError):
    """lookback_bpf does not compile for the ring's link type: a config error."""


@dataclass(frozen=True, slots=True)
class RingStats:
    interface: str
    packets: int  # held now
    bytes: int  # of packets held now (record heads included)
    oldest: float | None  # Unix time of the oldest packet held
    evicted_overflow: int  # packets dropped to make room (lookback_bytes reached)
    evicted_age: int  # packets dropped for being older than lookback seconds
    kernel_dropped: int  # by the kernel on the ring's handle, since it opened
    captures: int  # being served now
    replaying: int  # of those, still copying their lookback from the ring


@dataclass(frozen=True, slots=True)
class _Span:
    """The records of one chunk a lookback replay reads (noted under the lock)."""

    chunk: int
    start: int  # byte offsets in the chunk
    end: int
    records: int
    generation: int  # the chunk's, then: another means it was reused


class _Feed:
    """One capture being served from the ring: appends the packets offered
    that match its BPF to its file, and marks itself full at its bounds.
    `offer` runs on the reader thread, under the ring's lock. While its
    lookback is copied (by `offer`, in the capture's thread), the reader
    calls `hold` instead, which frames the live packets into `tail`; `merge`
    moves the tail into the file after the lookback part."""

    __slots__ = (
        "buf", "count", "cutoff", "debug", "done", "full", "match", "max_bytes",
        "max_packets", "on_full", "over", "pcapng", "since", "size", "snap", "stop",
        "tail", "tail_count", "trigger",
    )  # fmt: skip

    def __init__(
        self,
        header: bytes,
        limits: CaptureLimits,
        *,
        pcapng: bool,
        match: Callable[[bytes | memoryview], bool] | None,
        since: int,
        trigger: int,
        debug: PacketDebug | None,
        on_full: Callable[[], None] | None = None,
    ) -> None:
        self.buf = bytearray(header)
        self.size = len(header)
        self.count = 0
        self.full = False
        self.stop = ""
        self.since = since  # ns: packets stamped before this are not kept
        self.cutoff = 1 << 64  # ns: nor after this (a timed stop)
        self.trigger = trigger  # ns: packets before it came from the lookback
        self.match = match
        self.snap = limits.snap
        self.max_bytes = limits.bytes
        self.max_packets = limits.packets
        self.pcapng = pcapng
        self.debug = debug
        self.done = threading.Event()
        self.tail = bytearray()  # live records framed while the lookback is copied
        self.tail_count = 0
        self.over = False  # a live packet did not fit beside the tail: the file is full
        # Called once, as the capture ends on the reader thread (its slot is
        # free at once, not when its thread next runs; it must not block).
        self.on_full = on_full

    def _end(self, reason: str) -> None:
        self.stop, self.full = reason, True
        self.done.set()
        if self.on_full is not None:
            self.on_full()

    def offer(self, ts: int, pkt: bytes | memoryview) -> None:
        if self.full or ts < self.since or ts > self.cutoff:
            return
        match = self.match
        if match is not None and not match(pkt):
            return
        block = self._frame(self.buf, self.max_bytes - self.size, ts, pkt)
        if not block:
            self._end("bytes")
            return
        self.size += block
        self.count += 1
        if self.count >= self.max_packets:
            self._end("packets")

    def hold(self, ts: int, pkt: bytes | memoryview) -> None:
        """`offer` while the lookback is copied: into the tail. A packet is
        dropped only when it can never fit: `size` and `count` only grow."""
        if self.full or self.over or ts < self.since:
            return
        if self.count + self.tail_count >= self.max_packets:
            return
        match = self.match
        if match is not None and not match(pkt):
            return
        tail = self.tail
        if self._frame(tail, self.max_bytes - self.size - len(tail), ts, pkt):
            self.tail_count += 1
        else:
            self.over = True

    def _frame(self, buf: bytearray, room: int, ts: int, pkt: bytes | memoryview) -> int:
        """Append `pkt`'s record to `buf`: its size, or 0 when over `room` bytes."""
        wire = len(pkt)
        snap = self.snap
        caplen = wire if wire <= snap else snap
        data = pkt if wire <= snap else memoryview(pkt)[:snap]
        if self.pcapng:
            pad = -caplen & 3
            marked = ts < self.trigger
            block = EPB_OVERHEAD + caplen + pad + (len(LOOKBACK_EPB_OPTIONS) if marked else 0)
            if block > room:
                return 0
            buf += EPB_HEAD.pack(PCAPNG_EPB, block, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, wire)
            buf += data
            if pad:
                buf += b"\0" * pad
            if marked:
                buf += LOOKBACK_EPB_OPTIONS
            buf += block.to_bytes(4, "little")
        else:
            block = PCAP_RECORD.size + caplen
            if block > room:
                return 0
            sec, nsec = divmod(ts, NS)
            buf += PCAP_RECORD.pack(sec, nsec, caplen, wire)
            buf += data
        if self.debug is not None:
            self.debug(ts, bytes(data))
        return block

    def merge(self, tail: bytearray, records: int, over: bool) -> None:
        """Append `tail` (`records` framed by `hold`) to the file, up to the
        bounds, as `offer` would have; `over`: the last tail, and a packet
        after it did not fit."""
        if self.full:
            return
        room, left = self.max_bytes - self.size, self.max_packets - self.count
        take, taken, reason = len(tail), records, "bytes" if over else ""
        if take > room or records >= left:
            take = taken = 0
            reason = ""
            while taken < records:
                length = self._record_length(tail, take)
                if take + length > room:
                    reason = "bytes"
                    break
                take, taken = take + length, taken + 1
                if taken >= left:
                    reason = "packets"
                    break
        self.buf += memoryview(tail)[:take]
        self.size += take
        self.count += taken
        if reason:
            self._end(reason)

    def _record_length(self, buf: bytearray, at: int) -> int:
        """The length of the record framed at `at` in `buf`."""
        if self.pcapng:
            length: int = EPB_HEAD.unpack_from(buf, at)[1]
            return length
        caplen: int = PCAP_RECORD.unpack_from(buf, at)[2]
        return PCAP_RECORD.size + caplen


class Ring:
    """The ring of one interface. `start()` opens its handle (raises
    CaptureError), `capture()` serves one capture, `stop()` closes it."""

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
        count, size = chunk_layout(max_bytes)
        self.memory = count * size  # what the chunks hold, reserved from max_memory
        self._size = size
        self._chunks = [bytearray(size) for _ in range(count)]
        self._used = [0] * count  # bytes written in each chunk
        self._counts = [0] * count  # records in each chunk
        self._last_ts = [0] * count  # newest record of each chunk
        self._gens = [0] * count  # times each chunk was reused: a replay's guard
        self._cur = 0  # chunk written now: its state is in the fields below
        self._buf = self._chunks[0]
        self._pos = 0
        self._count = 0
        self._last = 0
        self._tail = 0  # oldest chunk holding records; they start at _tail_pos
        self._tail_pos = 0
        self._tail_skip = 0  # records before _tail_pos in the tail chunk
        self.evicted_overflow = 0
        self.evicted_age = 0
        self._feeds: tuple[Callable[[int, bytes | memoryview], None], ...] = ()
        self._live: set[_Feed] = set()
        self._replaying: set[_Feed] = set()  # copying their lookback, fed by `hold`
        self._lock = threading.Lock()
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
            bytes=self.memory, chunks=len(self._chunks), bpf=self.bpf, linktype=self.linktype,
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
        with self._lock:
            for feed in self._live:
                if not feed.full:
                    feed._end("shutdown")
            if self._handle is not None:
                close_handle(self._handle)
                self._handle = None

    def _read(self) -> None:
        handle = self._handle
        assert handle is not None
        poller = select.poll()
        poller.register(handle.fileno(), select.POLLIN)
        on_packet = self._on_packet
        evicted_at = 0.0
        while not self._stop.is_set():
            poller.poll(READ_WAIT * 1000)
            got = DISPATCH_BATCH
            while got >= DISPATCH_BATCH:
                with self._lock:
                    try:
                        got = handle.dispatch(DISPATCH_BATCH, on_packet)
                    except OSError as exc:
                        self._failed(exc)
                        return
                    if got < 0:  # pypcap returns PCAP_ERROR (an interface gone) unraised
                        self._failed(OSError(handle.geterr() or "dispatch failed"))
                        return
                    now = time.monotonic()
                    if now - evicted_at >= EVICT_EVERY:
                        evicted_at = now
                        self._evict_old(time.time_ns() - self.seconds * NS)
                time.sleep(0)  # a capture waiting to register takes the lock now

    def _failed(self, exc: OSError) -> None:
        """The handle failed: every capture ends with what it holds. Lock held."""
        arg = exc.args[0] if exc.args else exc
        text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
        self.error = f"lookback ring on {self.interface} failed: {text}"
        event(log, "ring_failed", logging.ERROR, interface=self.interface, error=self.error)
        for feed in self._live:
            if not feed.full:
                feed._end("shutdown")

    def _on_packet(self, ts: int, pkt: bytes) -> None:
        """The hot path: one record appended, then offered to each capture."""
        n = len(pkt)
        head = self._pos
        end = head + _HEAD + n
        if end > self._size:
            self._next_chunk()
            head, end = 0, _HEAD + n
        buf = self._buf
        _pack_head(buf, head, ts, n)
        buf[head + _HEAD : end] = pkt
        self._pos = end
        self._count += 1
        self._last = ts
        if self._feeds:
            for offer in self._feeds:
                offer(ts, pkt)

    def _sync(self) -> None:
        """The current chunk's state into the per-chunk lists. Lock held."""
        cur = self._cur
        self._used[cur], self._counts[cur], self._last_ts[cur] = self._pos, self._count, self._last

    def _next_chunk(self) -> None:
        """Write on in the next chunk; if it is the oldest, its records go."""
        self._sync()
        nxt = (self._cur + 1) % len(self._chunks)
        if nxt == self._tail:
            self.evicted_overflow += self._counts[nxt] - self._tail_skip
            self._tail = (nxt + 1) % len(self._chunks)
            self._tail_pos = self._tail_skip = 0
        self._gens[nxt] += 1  # before anything is written there: see _replay
        self._cur, self._buf = nxt, self._chunks[nxt]
        self._pos = self._count = self._last = 0
        self._used[nxt] = self._counts[nxt] = self._last_ts[nxt] = 0

    def _evict_old(self, cutoff: int) -> None:
        """Drop the records stamped before `cutoff` (ns). Lock held."""
        self._sync()
        while True:
            tail = self._tail
            if tail != self._cur and self._last_ts[tail] < cutoff:
                self.evicted_age += self._counts[tail] - self._tail_skip
                self._tail = (tail + 1) % len(self._chunks)
                self._tail_pos = self._tail_skip = 0
                continue
            buf, pos, limit = self._chunks[tail], self._tail_pos, self._used[tail]
            while pos < limit:
                ts, n = RECORD.unpack_from(buf, pos)
                if ts >= cutoff:
                    break
                pos += RECORD.size + n
                self._tail_skip += 1
                self.evicted_age += 1
            self._tail_pos = pos
            return

    def _order(self) -> list[int]:
        """The chunks holding records, oldest first. Lock held."""
        self._sync()
        order, chunk = [self._tail], self._tail
        while chunk != self._cur:
            chunk = (chunk + 1) % len(self._chunks)
            order.append(chunk)
        return order

    def _oldest(self) -> int | None:
        """The oldest record's timestamp (ns), None when the ring is empty. Lock held."""
        for chunk in self._order():
            pos = self._tail_pos if chunk == self._tail else 0
            if pos < self._used[chunk]:
                ts: int = RECORD.unpack_from(self._chunks[chunk], pos)[0]
                return ts
        return None

    def _spans(self, since: int) -> tuple[_Span, ...]:
        """The records held now that a replay from `since` reads, oldest
        first; whole chunks older than `since` are skipped. Lock held."""
        spans = []
        for chunk in self._order():
            tail = chunk == self._tail
            pos, end = (self._tail_pos if tail else 0), self._used[chunk]
            if pos < end and self._last_ts[chunk] >= since:
                records = self._counts[chunk] - (self._tail_skip if tail else 0)
                spans.append(_Span(chunk, pos, end, records, self._gens[chunk]))
        return tuple(spans)

    def _replay(self, spans: tuple[_Span, ...], feed: _Feed) -> int:
        """Offer `feed` the records of `spans`, oldest first, without the lock
        (the capture's thread): a slice is copied, then read only if its
        chunk was not reused meanwhile. Records lost that way (at most)."""
        lost = 0
        offer, gens, since, unpack = feed.offer, self._gens, feed.since, RECORD.unpack_from
        for span in spans:
            view, pos, read = memoryview(self._chunks[span.chunk]), span.start, 0
            while pos < span.end and not feed.full:
                piece = bytes(view[pos : min(span.end, pos + REPLAY_SLICE)])
                if gens[span.chunk] != span.generation:
                    lost += span.records - read
                    break
                records, at, size = memoryview(piece), 0, len(piece)
                while at + _HEAD <= size:
                    ts, n = unpack(piece, at)
                    start = at + _HEAD
                    if start + n > size:
                        break  # cut by the slice: the next one starts with it
                    at = start + n
                    read += 1
                    if ts >= since:
                        offer(ts, records[start:at])
                pos += at
        return lost

    def _go_live(self, feed: _Feed) -> None:
        """The lookback is in the file: the tail follows it, then the reader
        offers `feed` its packets itself. A large tail is moved without the
        lock, the last small one under it."""
        while True:
            with self._lock:
                tail, records, over = feed.tail, feed.tail_count, feed.over
                feed.tail, feed.tail_count = bytearray(), 0
                if over or feed.full or len(tail) <= TAIL_UNDER_LOCK:
                    feed.merge(tail, records, over)
                    self._replaying.discard(feed)
                    if feed in self._live:
                        self._feeds = tuple(
                            feed.offer if f == feed.hold else f for f in self._feeds
                        )
                    return
            feed.merge(tail, records, over=False)

    def _drops(self) -> int:
        """Kernel drops on the handle so far; the reader is not in it (lock held)."""
        if self._handle is None:
            return 0
        try:
            _received, dropped, if_dropped = self._handle.stats()
        except OSError:
            return 0
        return int(dropped) + int(if_dropped)

    def stats(self) -> RingStats:
        with self._lock:
            order = self._order()
            held = sum(self._used[c] for c in order) - self._tail_pos
            packets = sum(self._counts[c] for c in order) - self._tail_skip
            oldest = self._oldest()
            return RingStats(
                interface=self.interface, packets=packets, bytes=held,
                oldest=None if oldest is None else oldest / NS,
                evicted_overflow=self.evicted_overflow, evicted_age=self.evicted_age,
                kernel_dropped=self._drops(), captures=len(self._live),
                replaying=len(self._replaying),
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
    ) -> RingCapture:
        """Start a capture, as `engine.capture` on a handle of its own would
        make it: from now on (and `lookback` seconds back) it gets
        every packet that matches `bpf`, until `finish` or `cancel`. Bounds
        count the whole file; `duration` runs from now. Raises CaptureError
        (a bad filter, a failed ring) before anything is registered.
        `on_full` is called (under the ring's lock, on the thread that ends
        it) when a bound or shutdown ends the capture before `finish` does.

        Memory: the capture's bytearray never exceeds `limits.bytes`.
        """
        match = self._compile(bpf)
        with self._lock:
            if self.error is not None or self._handle is None:
                why = self.error or f"lookback ring on {self.interface} is not running"
                raise CaptureError(why)
            # Read under the lock: every record held now is older, and the
            # reader offers every later one; the lookback is those held.
            trigger = time.time_ns()
            since = trigger - lookback * NS
            spans = self._spans(since)
            oldest = self._oldest() if lookback else None
            span_start = trigger if oldest is None else max(since, oldest)
            header = self._header(fmt, limits.snap, comments, lookback, span_start, trigger)
            if len(header) > limits.bytes:
                raise CaptureError(
                    f"bytes={limits.bytes} cannot hold even the {len(header)}-byte file header"
                )
            feed = _Feed(
                header, limits, pcapng=fmt == "pcapng", match=match, since=since,
                trigger=trigger, debug=packet_debug, on_full=on_full,
            )  # fmt: skip
            drops_before = self._drops()
            self._live.add(feed)
            if spans:
                self._replaying.add(feed)
            self._feeds = (*self._feeds, feed.hold if spans else feed.offer)
        delivered = round((trigger - span_start) / NS, 3) if lookback else None
        return RingCapture(self, feed, limits, drops_before, delivered, spans)

    def _unregister(self, feed: _Feed) -> tuple[int, str | None]:
        """No more packets for `feed`: (kernel drops so far, the ring's error)."""
        with self._lock:
            self._live.discard(feed)
            self._replaying.discard(feed)
            self._feeds = tuple(f for f in self._feeds if f not in (feed.offer, feed.hold))
            return self._drops(), self.error

    def _compile(self, bpf: str) -> Callable[[bytes | memoryview], bool] | None:
        """The request's filter for the ring's link type; None matches all.
        Checked as `set_filter` checks it: nothing unchecked reaches libpcap."""
        if not bpf:
            return None
        problem = bpf_problem(bpf)
        if problem is not None:
            raise CaptureError(f"bpf: {show(bpf)} {problem}")
        try:
            return compiled_filter(bpf, self.linktype)
        except OSError as exc:
            raise CaptureError(
                f"bpf: {bpf!r} does not compile for {self.interface} "
                f"(link type {self.linktype}): {exc}"
            ) from None

    def _header(
        self,
        fmt: str,
        snap: int,
        comments: Mapping[str, object],
        lookback: int,
        span_start: int,
        trigger: int,
    ) -> bytes:
        if fmt != "pcapng":
            return pcap_header(self.linktype, snap)
        if lookback:
            comments = {
                **comments,
                "lookback": f"{lookback}s asked; ring packets from {iso_utc(span_start / NS)} "
                f"to {iso_utc(trigger / NS)} (each marked with the comment 'lookback')",
            }
        return pcapng_header(self.linktype, snap, self.interface, comments)


class RingCapture:
    """One capture registered with a ring: `finish` copies its lookback,
    waits for its bounds and returns its file; `cancel` drops it (a
    duplicate, a refusal). Either unregisters it, once."""

    def __init__(
        self,
        ring: Ring,
        feed: _Feed,
        limits: CaptureLimits,
        drops_before: int,
        lookback: float | None,
        spans: tuple[_Span, ...],
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
        lost = ring._replay(self._spans, feed)
        self._spans = ()
        ring._go_live(feed)
        if lost:
            self.warnings += (
                f"lookback: up to {lost} packets of the ring on {ring.interface} were "
                f"overwritten by newer ones before they were copied "
                f"({ring.origin}.lookback_bytes is too small for this traffic)",
            )

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._ring._unregister(self._feed)

    def finish(self, stop: threading.Event) -> CaptureOutcome:
        feed = self._feed
        try:
            if self._spans:
                self._copy_lookback()
            stop_reason = self._wait(stop)
        finally:
            self.done = True
            drops, error = self._ring._unregister(feed)
        return CaptureOutcome(
            data=feed.buf, packets=feed.count, stop=feed.stop or stop_reason,
            kernel_dropped=max(0, drops - self._drops_before), started=self.started,
            ended=time.time(), linktype=self._ring.linktype, error=error,
            lookback=self.lookback, ring=True,
        )  # fmt: skip

    def _wait(self, stop: threading.Event) -> str:
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
