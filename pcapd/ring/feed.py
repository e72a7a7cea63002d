"""Feeds: one capture being served from the ring, and its filter.

A feed frames the packets offered that match its BPF into its file, as the
engine frames them, and ends itself at its bounds. Its BPF is compiled once
per (expression, link type) and applied in user space (`pcap.bpf(...).filter`).
While its lookback is copied, live packets wait in its tail, within its own
`bytes` bound; `merge` moves the tail into the file after the lookback part.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable

import pcap

from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.engine import CaptureLimits, PacketDebug
from pcapd.pcapfile import EPB_HEAD, EPB_OVERHEAD, LOOKBACK_EPB_OPTIONS, PCAPNG_EPB
from pcapd.ring.store import HEAD, NS, RECORD, record_ts

NO_CUTOFF = 1 << 64  # a feed's cutoff until a timed stop sets one
# ns: a run of live records whose first is stamped this long after a feed's
# `since` is taken whole, unchecked record by record: the kernel hands
# packets over in the order it stamped them, give or take the microseconds
# between CPUs, so none of the run can be stamped before `since`. Nearer the
# seam each record's stamp is checked.
SEAM_SLACK = 50_000_000

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


class Feed:
    """One capture being served from the ring: frames the records handed
    to it that match its BPF into its file, and marks itself full at its
    bounds. `take` runs on the reader thread, under the ring's lock, once
    per run of records (a read), not per packet. While its lookback is
    copied (`replay`, in the capture's thread), `holding` is set and `take`
    frames the live records into `tail` instead; `merge` moves the tail into
    the file after the lookback part."""

    __slots__ = (
        "buf", "count", "cutoff", "debug", "done", "dropped", "drops", "error",
        "full", "holding", "lock", "match", "max_bytes", "max_packets", "on_full", "over",
        "pcapng", "since", "size", "snap", "stop", "tail", "tail_count", "trigger", "whole",
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
        holding: bool = False,
        lock: threading.Lock | None = None,
        drops: Callable[[], int] | None = None,
    ) -> None:
        self.buf = bytearray(header)
        self.size = len(header)
        self.count = 0
        self.full = False
        self.stop = ""
        self.error: str | None = None  # the ring's failure, when that is what ended it
        self.since = since  # ns: packets stamped before this are not kept
        self.cutoff = NO_CUTOFF  # ns: nor after this (a timed stop)
        self.trigger = trigger  # ns: packets before it came from the lookback
        self.match = match
        self.snap = limits.snap
        self.max_bytes = limits.bytes
        self.max_packets = limits.packets
        self.pcapng = pcapng
        self.debug = debug
        # Every record goes into the file as the ring holds it: a run of
        # them is one copy (the ring's records are pcap records, never cut).
        self.whole = not pcapng and match is None and debug is None and self.snap >= MAX_SNAPLENGTH
        # Set when it ends, for a thread that waits for that (`RingCapture.
        # finish` makes it); a watched capture has none to make.
        self.done: threading.Event | None = None
        self.holding = holding  # the lookback is being copied: live records go to the tail
        self.tail = bytearray()  # live records framed while the lookback is copied
        self.tail_count = 0
        self.over = False  # a live packet did not fit beside the tail: the file is full
        # Called once, as the capture ends on the reader thread (its slot is
        # free at once, not when its thread next runs; it must not block).
        self.on_full = on_full
        self.lock = lock or threading.Lock()  # the ring's: `take` runs under it
        # The ring's kernel drops so far, and their count when it ended: its
        # own window's end, however late its outcome is taken.
        self.drops = drops
        self.dropped: int | None = None

    def end(self, reason: str, error: str | None = None) -> None:
        # `full` last: a thread that sees it set reads the others as set.
        self.stop, self.error = reason, error
        if self.drops is not None:
            self.dropped = self.drops()
        self.full = True
        if self.done is not None:
            self.done.set()
        if self.on_full is not None:
            self.on_full()

    def take(self, data: memoryview, start: int, end: int, records: int, first: int) -> None:
        """The live records data[start:end] (`records` of them, the first
        stamped `first`): those it keeps into the file, or the tail while
        holding. A live packet is dropped from the tail only when it can
        never fit: `size` and `count` only grow."""
        holding = self.holding
        if self.full or (holding and self.over):
            return
        out = self.tail if holding else self.buf
        room = self.max_bytes - self.size - len(self.tail)
        left = self.max_packets - self.count - self.tail_count
        if left <= 0:
            return
        if (
            self.whole
            and end - start <= room
            and records <= left
            and first - SEAM_SLACK >= self.since
            and self.cutoff == NO_CUTOFF
        ):
            out += data[start:end]
            taken, used, reason = records, end - start, "packets" if records == left else ""
        else:
            _at, _read, taken, used, reason = self._walk(out, room, left, data, start, end)
        if holding:
            self.tail_count += taken
            if reason == "bytes":
                self.over = True
        else:
            self.size += used
            self.count += taken
            if reason:
                self.end(reason)

    def replay(self, data: memoryview) -> tuple[int, int]:
        """Records from the ring's past (a copied slice, whole records from
        its start) into the file: (bytes, records) read. Runs in the capture's
        thread while the reader may `take` into the tail. The file is in time
        order, lookback first: when the lookback needs room the tail holds,
        the capture is full (`over`) and the tail's newest records go, so the
        file and the tail together never pass `bytes`."""
        out = bytearray()  # the slice's records framed, before they are counted
        room, left = self.max_bytes - self.size, self.max_packets - self.count
        at, read, taken, used, reason = self._walk(out, room, left, data, 0, len(data))
        with self.lock:  # counted where `take` reads them; no take is midway
            self.size += used
            self.count += taken
            over = self.size + len(self.tail) > self.max_bytes
            if over:
                self.over = True  # the tail is frozen from here on
            if reason:
                self.end(reason)
        if reason:
            self.tail, self.tail_count = bytearray(), 0  # never merged now
        elif over:
            self._trim_tail(self.max_bytes - self.size)
        self.buf += out
        return at, read

    def _trim_tail(self, room: int) -> None:
        """Keep the tail's oldest records that fit in `room` bytes (the tail
        is frozen: `over` is set)."""
        tail, keep, kept = self.tail, 0, 0
        while kept < self.tail_count:
            length = self._record_length(tail, keep)
            if keep + length > room:
                break
            keep, kept = keep + length, kept + 1
        del tail[keep:]
        self.tail_count = kept

    def _walk(
        self, out: bytearray, room: int, left: int, data: memoryview, start: int, end: int
    ) -> tuple[int, int, int, int, str]:
        """Frame the records of data[start:end] this feed keeps into `out`,
        one by one, within `room` bytes and `left` packets: (where it
        stopped, records read, records and bytes appended, the bound reached
        or ""). A record cut by `end` is left for the next slice. Stamps are
        checked only near the seam and after a timed stop; records are
        framed anew only for pcapng, packet debug or a shorter snap."""
        if start + HEAD > end:
            return start, 0, 0, 0, ""
        unpack, match, snap = RECORD.unpack_from, self.match, self.snap
        since, cutoff = self.since, self.cutoff
        whole = not self.pcapng and self.debug is None
        check = cutoff != NO_CUTOFF or not whole or record_ts(data, start) - SEAM_SLACK < since
        at, read, taken, used = start, 0, 0, 0
        while at + HEAD <= end:
            sec, nsec, n, _wire = unpack(data, at)
            body = at + HEAD
            nxt = body + n
            if nxt > end:
                break
            here, at = at, nxt
            read += 1
            if check:
                ts = sec * NS + nsec
                if ts < since or ts > cutoff:
                    continue
            if match is not None and not match(data[body:nxt]):
                continue
            if whole and n <= snap:
                block = nxt - here
                if block > room:
                    return here, read - 1, taken, used, "bytes"
                out += data[here:nxt]
            else:
                block = self._frame(out, room, sec * NS + nsec, data[body:nxt])
                if not block:
                    return here, read - 1, taken, used, "bytes"
            room -= block
            used += block
            taken += 1
            if taken >= left:
                return at, read, taken, used, "packets"
        return at, read, taken, used, ""

    def _frame(self, buf: bytearray, room: int, ts: int, pkt: memoryview) -> int:
        """Append `pkt`'s record to `buf`: its size, or 0 when over `room` bytes."""
        wire = len(pkt)
        snap = self.snap
        caplen = wire if wire <= snap else snap
        data = pkt if wire <= snap else pkt[:snap]
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
            block = RECORD.size + caplen
            if block > room:
                return 0
            sec, nsec = divmod(ts, NS)
            buf += RECORD.pack(sec, nsec, caplen, wire)
            buf += data
        if self.debug is not None:
            self.debug(ts, bytes(data))
        return block

    def merge(self, tail: bytearray, records: int, over: bool) -> None:
        """Append `tail` (`records` framed by `take` while holding) to the
        file, up to the bounds, as `take` would have; `over`: the last tail,
        and a packet after it did not fit."""
        self.buf += memoryview(tail)[: self.count_tail(tail, records, over)]

    def count_tail(self, tail: bytearray, records: int, over: bool) -> int:
        """Count into the file what of `tail` its bounds keep (ending the
        capture at one): the bytes of it to append. Under the ring's lock
        when the reader may be taking, so `take` sees the room left."""
        if self.full:
            return 0
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
        self.size += take
        self.count += taken
        if reason:
            self.end(reason)
        return take

    def _record_length(self, buf: bytearray, at: int) -> int:
        """The length of the record framed at `at` in `buf`."""
        if self.pcapng:
            length: int = EPB_HEAD.unpack_from(buf, at)[1]
            return length
        caplen: int = RECORD.unpack_from(buf, at)[2]
        return RECORD.size + caplen
