"""IP fragments and DNS-over-TCP streams, put back together under bounds.

DNSFlow sees neither: a large EDNS answer that the resolver sends in IPv4 or
IPv6 fragments, and a truncated (TC) answer retried over TCP, never reached
its parser. Both are rare next to plain UDP, so this favours bounds and
clarity over speed.

Worst-case memory: `max_bytes` of fragment payload plus `max_datagrams`
small entries; for TCP `max_total_bytes` of stream data plus `max_streams`
small entries. Anything over a bound is dropped and counted, never grown.
Time comes from packet timestamps, so a capture file expires what it would
have expired live.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass

MAX_DATAGRAM = 65_535
DEFAULT_FRAGMENT_TIMEOUT = 30.0  # s, Linux's ipfrag_time
DEFAULT_FRAGMENT_BYTES = 16 * 1024 * 1024
DEFAULT_FRAGMENT_DATAGRAMS = 4_096
MAX_FRAGMENTS_PER_DATAGRAM = 64  # a 64 KiB datagram in 1 KiB pieces

DEFAULT_TCP_IDLE = 30.0  # s without a segment before a stream is dropped
DEFAULT_TCP_STREAM_BYTES = 2 * (MAX_DATAGRAM + 2)  # a message and the next one's start
DEFAULT_TCP_TOTAL_BYTES = 64 * 1024 * 1024
DEFAULT_TCP_STREAMS = 16_384
MAX_MESSAGES_PER_SEGMENT = 1_024  # 2-byte messages fill a 64 KiB segment at 32k

# Counter indexes, shared by both reassemblers.
FRAG_SEEN = 0
FRAG_DONE = 1  # datagrams completed
FRAG_EXPIRED = 2
FRAG_OVERLAP = 3  # overlapping pieces: the datagram is dropped (RFC 5722)
FRAG_OVERFLOW = 4  # a bound was reached: datagram dropped
FRAG_BAD = 5  # past 64 KiB, or a final fragment that contradicts another
TCP_SEGMENTS = 6
TCP_MESSAGES = 7
TCP_EXPIRED = 8
TCP_OVERFLOW = 9
TCP_GAPS = 10  # data missing ahead of what arrived: the stream is given up
TCP_CLOSED = 11
COUNTER_NAMES = (
    "fragments",
    "reassembled",
    "fragments_expired",
    "fragments_overlap",
    "fragments_overflow",
    "fragments_bad",
    "tcp_segments",
    "tcp_messages",
    "tcp_expired",
    "tcp_overflow",
    "tcp_gaps",
    "tcp_closed",
)


def new_counts() -> list[int]:
    return [0] * len(COUNTER_NAMES)


@dataclass(slots=True)
class _Datagram:
    first_seen: float
    pieces: dict[int, bytes]
    size: int = 0  # bytes held
    total: int = -1  # known once the last fragment (MF=0) arrived


class Fragments:
    """Reassembles IPv4 and IPv6 fragments keyed by (src, dst, id, proto)."""

    def __init__(
        self,
        counts: list[int],
        *,
        timeout: float = DEFAULT_FRAGMENT_TIMEOUT,
        max_bytes: int = DEFAULT_FRAGMENT_BYTES,
        max_datagrams: int = DEFAULT_FRAGMENT_DATAGRAMS,
    ) -> None:
        self.counts = counts
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_datagrams = max_datagrams
        self.held = 0
        self._pending: dict[Hashable, _Datagram] = {}
        self._next_expiry = 0.0

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ts: float, key: Hashable, offset: int, more: bool, data: bytes) -> bytes | None:
        """The whole payload once the last missing piece arrives, else None."""
        counts = self.counts
        counts[FRAG_SEEN] += 1
        if ts >= self._next_expiry:
            self.expire(ts)
        end = offset + len(data)
        if end > MAX_DATAGRAM or (more and len(data) % 8):
            counts[FRAG_BAD] += 1
            self._drop(key)
            return None
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= self.max_datagrams:
                counts[FRAG_OVERFLOW] += 1
                return None
            entry = self._pending[key] = _Datagram(ts, {})
        if (
            self.held + len(data) > self.max_bytes
            or len(entry.pieces) >= MAX_FRAGMENTS_PER_DATAGRAM
        ):
            counts[FRAG_OVERFLOW] += 1
            self._drop(key)
            return None
        if not more:
            if (entry.total >= 0 and entry.total != end) or any(
                o + len(p) > end for o, p in entry.pieces.items()
            ):
                counts[FRAG_BAD] += 1
                self._drop(key)
                return None
            entry.total = end
        elif entry.total >= 0 and end > entry.total:
            counts[FRAG_BAD] += 1
            self._drop(key)
            return None
        for o, p in entry.pieces.items():
            if o < end and offset < o + len(p):
                if o == offset and p == data:  # a duplicate: harmless
                    return None
                counts[FRAG_OVERLAP] += 1
                self._drop(key)
                return None
        entry.pieces[offset] = data
        entry.size += len(data)
        self.held += len(data)
        if entry.total < 0 or entry.size != entry.total:
            return None
        # No overlaps and every byte counted: the pieces tile 0..total exactly.
        self._drop(key)
        counts[FRAG_DONE] += 1
        return b"".join(entry.pieces[o] for o in sorted(entry.pieces))

    def _drop(self, key: Hashable) -> None:
        entry = self._pending.pop(key, None)
        if entry is not None:
            self.held -= entry.size

    def expire(self, now: float) -> None:
        horizon = now - self.timeout
        for key in [k for k, e in self._pending.items() if e.first_seen < horizon]:
            self.counts[FRAG_EXPIRED] += 1
            self._drop(key)
        self._next_expiry = now + min(1.0, self.timeout)


@dataclass(slots=True)
class _Stream:
    last_seen: float
    next_seq: int  # -1 until the first data segment fixes it
    buf: bytearray
    ahead: dict[int, bytes]  # out-of-order segments by sequence number
    ahead_bytes: int = 0


class TcpStreams:
    """DNS messages (2-byte length prefix, RFC 1035 4.2.2) from one direction
    of TCP connections, keyed by (src, dst, ports).

    A stream picked up mid-way (no SYN seen) is assumed to start at a message
    boundary; if that guess is wrong the parser rejects what follows, which
    is counted, and the stream resynchronises only at its next SYN.
    """

    def __init__(
        self,
        counts: list[int],
        *,
        idle: float = DEFAULT_TCP_IDLE,
        max_stream_bytes: int = DEFAULT_TCP_STREAM_BYTES,
        max_total_bytes: int = DEFAULT_TCP_TOTAL_BYTES,
        max_streams: int = DEFAULT_TCP_STREAMS,
    ) -> None:
        self.counts = counts
        self.idle = idle
        self.max_stream_bytes = max_stream_bytes
        self.max_total_bytes = max_total_bytes
        self.max_streams = max_streams
        self.held = 0
        self._streams: dict[Hashable, _Stream] = {}
        self._next_expiry = 0.0

    def __len__(self) -> int:
        return len(self._streams)

    def segment(self, ts: float, key: Hashable, seq: int, flags: int, data: bytes) -> list[bytes]:
        """The complete messages this segment finishes, in order."""
        counts = self.counts
        counts[TCP_SEGMENTS] += 1
        if ts >= self._next_expiry:
            self.expire(ts)
        stream = self._streams.get(key)
        if flags & 0x02:  # SYN: the data starts at seq + 1
            if stream is not None:
                self._drop(key)
            stream = self._new(ts, key, (seq + 1) & 0xFFFFFFFF)
            if stream is None:
                return []
            seq = (seq + 1) & 0xFFFFFFFF
        elif stream is None:
            if not data:
                return []
            stream = self._new(ts, key, seq)
            if stream is None:
                return []
        stream.last_seen = ts
        out: list[bytes] = []
        if data:
            self._accept(key, stream, seq, data, out)
        if flags & 0x05 and key in self._streams:  # FIN or RST
            counts[TCP_CLOSED] += 1
            self._drop(key)
        return out

    def _new(self, ts: float, key: Hashable, seq: int) -> _Stream | None:
        if len(self._streams) >= self.max_streams:
            self.expire(ts)
            if len(self._streams) >= self.max_streams:
                self.counts[TCP_OVERFLOW] += 1
                return None
        stream = self._streams[key] = _Stream(ts, seq, bytearray(), {})
        return stream

    def _accept(
        self, key: Hashable, stream: _Stream, seq: int, data: bytes, out: list[bytes]
    ) -> None:
        delta = (seq - stream.next_seq) & 0xFFFFFFFF
        if delta >= 0x80000000:  # starts before what we have: a retransmission
            skip = 0x100000000 - delta
            if skip >= len(data):
                return
            data, delta = data[skip:], 0
        if delta:
            if stream.ahead_bytes + len(data) > self.max_stream_bytes:
                self.counts[TCP_GAPS] += 1
                self._drop(key)
                return
            if seq not in stream.ahead:
                stream.ahead[seq] = data
                stream.ahead_bytes += len(data)
                self.held += len(data)
            return
        if not self._append(key, stream, data):
            return
        while stream.ahead:  # segments that were waiting for this one
            nxt = stream.ahead.pop(stream.next_seq, None)
            if nxt is None:
                break
            stream.ahead_bytes -= len(nxt)
            self.held -= len(nxt)
            if not self._append(key, stream, nxt):
                return
        self._messages(stream, out)

    def _append(self, key: Hashable, stream: _Stream, data: bytes) -> bool:
        if (
            len(stream.buf) + len(data) > self.max_stream_bytes
            or self.held + len(data) > self.max_total_bytes
        ):
            self.counts[TCP_OVERFLOW] += 1
            self._drop(key)
            return False
        stream.buf += data
        self.held += len(data)
        stream.next_seq = (stream.next_seq + len(data)) & 0xFFFFFFFF
        return True

    def _messages(self, stream: _Stream, out: list[bytes]) -> None:
        buf = stream.buf
        pos = 0
        while len(buf) - pos >= 2 and len(out) < MAX_MESSAGES_PER_SEGMENT:
            length = buf[pos] << 8 | buf[pos + 1]
            if len(buf) - pos - 2 < length:
                break
            out.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos:
            del buf[:pos]
            self.held -= pos
            self.counts[TCP_MESSAGES] += len(out)

    def _drop(self, key: Hashable) -> None:
        stream = self._streams.pop(key, None)
        if stream is not None:
            self.held -= len(stream.buf) + stream.ahead_bytes

    def expire(self, now: float) -> None:
        horizon = now - self.idle
        for key in [k for k, s in self._streams.items() if s.last_seen < horizon]:
            self.counts[TCP_EXPIRED] += 1
            self._drop(key)
        self._next_expiry = now + min(1.0, self.idle)
