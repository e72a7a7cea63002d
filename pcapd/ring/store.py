"""The ring's memory: large chunks preallocated at start, reused in turn.

Each record is a 12-byte head (timestamp in ns, length) and the packet; no
Python object is kept per packet. Reusing the oldest chunk drops its records
(an overflow, counted); records older than the ring's seconds are dropped as
the clock passes them (counted apart). Every method runs under the ring's
lock except `replay`, which copies records out while the writer goes on and
detects a reused chunk by its generation number.

Memory: `memory` bytes (the chunks); the per-chunk bookkeeping is a few
integers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from pcapd.core.config import MAX_SNAPLENGTH

RECORD = struct.Struct("<qI")  # ts_ns, length; the packet's bytes follow
_HEAD, _pack_head = RECORD.size, RECORD.pack_into  # the hot path's names
CHUNK_TARGET = 4 * 1024 * 1024  # bytes per chunk, for rings large enough
MIN_CHUNKS = 4  # so that an overflow drops at most a quarter of the ring
MIN_CHUNK = MAX_SNAPLENGTH + RECORD.size  # every chunk holds the largest packet
# Bytes of a chunk copied at a time by a lookback replay, then checked against
# the chunk's generation: whole records, as every record fits in MIN_CHUNK.
REPLAY_SLICE = MIN_CHUNK


def chunk_layout(max_bytes: int) -> tuple[int, int]:
    """(chunks, bytes each) for a ring of at most `max_bytes` (>= 2 MiB)."""
    count = max(MIN_CHUNKS, max_bytes // CHUNK_TARGET)
    if max_bytes // count < MIN_CHUNK:
        count = max(2, max_bytes // MIN_CHUNK)
    return count, max_bytes // count


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

    def __init__(self, max_bytes: int) -> None:
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

    @property
    def chunks(self) -> int:
        return len(self._chunks)

    def append(self, ts: int, pkt: bytes) -> None:
        """The hot path: one record appended."""
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

    def _sync(self) -> None:
        """The current chunk's state into the per-chunk lists."""
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
        self._gens[nxt] += 1  # before anything is written there: see replay
        self._cur, self._buf = nxt, self._chunks[nxt]
        self._pos = self._count = self._last = 0
        self._used[nxt] = self._counts[nxt] = self._last_ts[nxt] = 0

    def evict_old(self, cutoff: int) -> None:
        """Drop the records stamped before `cutoff` (ns)."""
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
                ts: int = RECORD.unpack_from(self._chunks[chunk], pos)[0]
                return ts
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
            view, end = memoryview(self._chunks[chunk]), self._used[chunk]
            pos = self._tail_pos if chunk == self._tail else 0
            while pos < end:
                ts, n = RECORD.unpack_from(view, pos)
                found.append((ts, view[pos + _HEAD : pos + _HEAD + n]))
                pos += _HEAD + n
        return found

    def spans(self, since: int) -> tuple[Span, ...]:
        """The records held now that a replay from `since` reads, oldest
        first; whole chunks older than `since` are skipped."""
        spans = []
        for chunk in self.order():
            tail = chunk == self._tail
            pos, end = (self._tail_pos if tail else 0), self._used[chunk]
            if pos < end and self._last_ts[chunk] >= since:
                records = self._counts[chunk] - (self._tail_skip if tail else 0)
                spans.append(Span(chunk, pos, end, records, self._gens[chunk]))
        return tuple(spans)

    def replay(
        self,
        spans: tuple[Span, ...],
        offer: Callable[[int, memoryview], None],
        since: int,
        full: Callable[[], bool],
    ) -> int:
        """`offer` the records of `spans` stamped from `since` on, oldest
        first, until `full()`; without the lock (the capture's thread): a
        slice is copied, then read only if its chunk was not reused
        meanwhile. Records lost that way (at most)."""
        lost = 0
        gens, unpack = self._gens, RECORD.unpack_from
        for span in spans:
            view, pos, read = memoryview(self._chunks[span.chunk]), span.start, 0
            while pos < span.end and not full():
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
