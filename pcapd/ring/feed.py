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

from pcapd.engine import CaptureLimits, PacketDebug
from pcapd.pcapfile import EPB_HEAD, EPB_OVERHEAD, LOOKBACK_EPB_OPTIONS, PCAP_RECORD, PCAPNG_EPB

NS = 1_000_000_000

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

    def end(self, reason: str) -> None:
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
            self.end("bytes")
            return
        self.size += block
        self.count += 1
        if self.count >= self.max_packets:
            self.end("packets")

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
            self.end(reason)

    def _record_length(self, buf: bytearray, at: int) -> int:
        """The length of the record framed at `at` in `buf`."""
        if self.pcapng:
            length: int = EPB_HEAD.unpack_from(buf, at)[1]
            return length
        caplen: int = PCAP_RECORD.unpack_from(buf, at)[2]
        return PCAP_RECORD.size + caplen
