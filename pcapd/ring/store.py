"""The ring's memory: large chunks preallocated at start, reused in turn.

Each record is a pcap record head (seconds, nanoseconds, length, length:
the handle keeps whole packets) and the packet, so a run of records is
already a pcap file's body and a capture that keeps them all takes it in one
copy. No Python object is kept per packet. Records older than the ring's
seconds are dropped as the clock passes them (counted as age): whole
chunks, and at most EVICT_WALK records of the oldest chunk per call, by the
reader every EVICT_EVERY and by `stats`. Reusing the oldest chunk drops the
records it still holds (counted as overflow; as age when even its newest is
older than the ring keeps, its records are not walked there). Every method
runs under the ring's lock except `replay`, which copies records out while
the writer goes on and detects a reused chunk by its generation number.
Memory: see `pcapd.ring`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.pcapfile import PCAP_RECORD

NS = 1_000_000_000
RECORD = PCAP_RECORD  # ts_sec, ts_nsec, caplen, wire length; the packet's bytes follow
HEAD = RECORD.size
CHUNK_TARGET = 4 * 1024 * 1024  # bytes per chunk, for rings large enough
MIN_CHUNKS = 4  # so that an overflow drops at most a quarter of the ring
MIN_CHUNK = MAX_SNAPLENGTH + RECORD.size  # every chunk holds the largest packet
# Bytes of a chunk copied at a time by a lookback replay, then checked against
# the chunk's generation: whole records, as every record fits in MIN_CHUNK.
REPLAY_SLICE = MIN_CHUNK
# Records of the oldest chunk one eviction walks at most (~1 µs each) under
# the ring's lock; a 4 MiB chunk of 64-byte packets holds ~52k.
EVICT_WALK = 2048

# What the reader hands on after each read, and before it leaves a chunk:
# (the chunk, first byte, end, records), the records appended since the last.
Segment = Callable[[memoryview, int, int, int], None]


def record_ts(data: bytes | bytearray | memoryview, at: int) -> int:
    """The timestamp (ns) of the record at `at`."""
    sec, nsec, _caplen, _wire = RECORD.unpack_from(data, at)
    return int(sec) * NS + int(nsec)


def chunk_layout(max_bytes: int) -> tuple[int, int]:
    """(chunks, bytes each) for a ring of at most `max_bytes` (>= 2 MiB)."""
    count = max(MIN_CHUNKS, max_bytes // CHUNK_TARGET)
    if max_bytes // count < MIN_CHUNK:
        count = max(2, max_bytes // MIN_CHUNK)
    return count, max_bytes // count


# A position in the store: (chunk, byte offset, the chunk's generation).
Mark = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class Span:
    """The records of one chunk a lookback replay reads (noted under the lock)."""

    chunk: int
    start: int  # byte offsets in the chunk
    end: int
    records: int
    generation: int  # the chunk's, then: another means it was reused


class ChunkStore:
    """The chunks of one ring, oldest to newest from `_tail` to `_cur`."""

    def __init__(self, max_bytes: int, seconds: int | None = None) -> None:
        count, size = chunk_layout(max_bytes)
        self._keep = None if seconds is None else seconds * NS  # None: no record is too old
        self.memory = count * size  # what the chunks hold, reserved from max_memory
        self._size = size
        self._chunks = [bytearray(size) for _ in range(count)]
        self._views = [memoryview(chunk) for chunk in self._chunks]
        self._used = [0] * count  # bytes written in each chunk
        self._counts = [0] * count  # records in each chunk
        self._last_ts = [0] * count  # newest record of each chunk
        self._gens = [0] * count  # times each chunk was reused: a replay's guard
        self._cur = 0  # chunk written now: its state is in the fields below
        self._pos = 0
        self._count = 0
        self._last = 0
        self._tail = 0  # oldest chunk holding records; they start at _tail_pos
        self._tail_pos = 0
        self._tail_skip = 0  # records before _tail_pos in the tail chunk
        self.evicted_overflow = 0
        self.evicted_age = 0

    @property
    def chunks(self) -> int:
        return len(self._chunks)

    def writer(self, segment: Segment) -> tuple[Callable[[int, bytes], None], Callable[[], None]]:
        """The reader's packet callback, and what it calls after each read
        (`settle`: the state saved, and `segment` handed the records appended
        since the last call; also called before a chunk is left). The one
        writer's state lives in the callback's cells between two settles:
        the hot path reads no attribute."""
        size, pack = self._size, RECORD.pack_into
        view, pos, count, last = self._views[self._cur], self._pos, self._count, self._last
        seg_pos, seg_count = pos, count

        def settle() -> None:
            nonlocal seg_pos, seg_count
            self._pos, self._count, self._last = pos, count, last
            if pos > seg_pos:
                segment(view, seg_pos, pos, count - seg_count)
                seg_pos, seg_count = pos, count

        def append(ts: int, pkt: bytes) -> None:
            nonlocal view, pos, count, last, seg_pos, seg_count
            n = len(pkt)
            end = pos + HEAD + n
            if end > size:
                settle()
                self._next_chunk()
                view, pos, count, last = self._views[self._cur], 0, 0, 0
                seg_pos = seg_count = 0
                end = HEAD + n
            pack(view, pos, ts // NS, ts % NS, n, n)
            view[pos + HEAD : end] = pkt
            pos, count, last = end, count + 1, ts

        return append, settle

    def _sync(self) -> None:
        """The current chunk's state into the per-chunk lists."""
        cur = self._cur
        self._used[cur], self._counts[cur], self._last_ts[cur] = self._pos, self._count, self._last

    def _next_chunk(self) -> None:
        """Write on in the next chunk; if it is the oldest, its records go."""
        self._sync()
        nxt = (self._cur + 1) % len(self._chunks)
        if nxt == self._tail:
            # Reused before the reader's eviction reached it: a chunk whose
            # newest record is older than the ring keeps goes by age; one
            # with newer records too counts the rest of it overflow (it is
            # not walked here, in the writer's path).
            left = self._counts[nxt] - self._tail_skip
            if self._last_ts[nxt] < self.cutoff():
                self.evicted_age += left
            else:
                self.evicted_overflow += left
            self._tail = (nxt + 1) % len(self._chunks)
            self._tail_pos = self._tail_skip = 0
        self._gens[nxt] += 1  # before anything is written there: see replay
        self._cur = nxt
        self._pos = self._count = self._last = 0
        self._used[nxt] = self._counts[nxt] = self._last_ts[nxt] = 0

    def cutoff(self) -> int:
        """ns: records stamped before this are older than the ring keeps."""
        return 0 if self._keep is None else time.time_ns() - self._keep

    def evict_old(self, cutoff: int, walk: int = EVICT_WALK) -> None:
        """Drop the records stamped before `cutoff` (ns): whole chunks, then
        at most `walk` of the oldest chunk's, one by one (so that no call
        holds the ring's lock long)."""
        self._sync()
        chunks, counts, last_ts = len(self._chunks), self._counts, self._last_ts
        while self._tail != self._cur and last_ts[self._tail] < cutoff:
            self.evicted_age += counts[self._tail] - self._tail_skip
            self._tail = (self._tail + 1) % chunks
            self._tail_pos = self._tail_skip = 0
        view, pos, limit = self._views[self._tail], self._tail_pos, self._used[self._tail]
        unpack, walked = RECORD.unpack_from, 0
        while walked < walk and pos < limit:
            sec, nsec, n, _wire = unpack(view, pos)
            if sec * NS + nsec >= cutoff:
                break
            pos += HEAD + n
            walked += 1
        self._tail_pos = pos
        self._tail_skip += walked
        self.evicted_age += walked

    def order(self) -> list[int]:
        """The chunks holding records, oldest first."""
        self._sync()
        order, chunk = [self._tail], self._tail
        while chunk != self._cur:
            chunk = (chunk + 1) % len(self._chunks)
            order.append(chunk)
        return order

    def oldest(self) -> int | None:
        """The oldest record's timestamp (ns), None when the ring is empty."""
        for chunk in self.order():
            pos = self._tail_pos if chunk == self._tail else 0
            if pos < self._used[chunk]:
                return record_ts(self._views[chunk], pos)
        return None

    def held(self) -> tuple[int, int]:
        """(packets, bytes) held now, record heads included."""
        order = self.order()
        held = sum(self._used[c] for c in order) - self._tail_pos
        packets = sum(self._counts[c] for c in order) - self._tail_skip
        return packets, held

    def records(self) -> list[tuple[int, memoryview]]:
        """(ts_ns, packet) of every record held, oldest first: for tests."""
        found = []
        for chunk in self.order():
            view, end = self._views[chunk], self._used[chunk]
            pos = self._tail_pos if chunk == self._tail else 0
            while pos < end:
                n = RECORD.unpack_from(view, pos)[2]
                found.append((record_ts(view, pos), view[pos + HEAD : pos + HEAD + n]))
                pos += HEAD + n
        return found

    def mark(self) -> Mark:
        """Where the next record goes (after the writer's `settle`)."""
        return self._cur, self._pos, self._gens[self._cur]

    def spans(self, since: int, after: Mark | None = None) -> tuple[Span, ...]:
        """The records held now that a replay from `since` reads, oldest
        first; whole chunks older than `since` are skipped, and with `after`
        (a `mark` taken when every record before it was older than `since`)
        everything before it: the replay then walks only what came since."""
        order = self.order()
        start_at = -1, 0
        if after is not None:
            chunk, pos, gen = after
            if chunk in order and self._gens[chunk] == gen:
                start_at = order.index(chunk), pos
        spans = []
        for index, chunk in enumerate(order):
            if index < start_at[0]:
                continue
            tail = chunk == self._tail
            pos, end = (self._tail_pos if tail else 0), self._used[chunk]
            if index == start_at[0]:
                pos = max(pos, start_at[1])
            if pos < end and self._last_ts[chunk] >= since:
                # From a mark, the chunk's count: an upper bound ("up to" lost).
                records = self._counts[chunk] - (self._tail_skip if tail else 0)
                spans.append(Span(chunk, pos, end, records, self._gens[chunk]))
        return tuple(spans)

    def replay(
        self,
        spans: tuple[Span, ...],
        take: Callable[[memoryview], tuple[int, int]],
        full: Callable[[], bool],
    ) -> int:
        """Hand `take` the records of `spans`, oldest first, a slice at a
        time, until `full()`; without the lock (the capture's thread): a
        slice is copied, then read only if its chunk was not reused
        meanwhile. `take` returns (bytes, records) it read, whole records
        from the slice's start. Records lost to reuse (at most)."""
        lost = 0
        for span in spans:
            view, pos, read = self._views[span.chunk], span.start, 0
            while pos < span.end and not full():
                piece = bytes(view[pos : min(span.end, pos + REPLAY_SLICE)])
                if self._gens[span.chunk] != span.generation:
                    lost += span.records - read
                    break
                used, records = take(memoryview(piece))
                if not used:  # full: every slice holds a whole record
                    break
                read += records
                pos += used
        return lost
