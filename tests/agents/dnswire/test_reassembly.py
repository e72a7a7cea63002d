"""Fragments and TCP streams: what is put back together, and the bounds."""

from __future__ import annotations

import struct

from agents.dnswire import reassembly as r


def frags(**options: float) -> tuple[r.Fragments, list[int]]:
    counts = r.new_counts()
    return r.Fragments(counts, **options), counts  # type: ignore[arg-type]


def test_fragments_in_any_order_and_duplicates() -> None:
    f, counts = frags()
    data = bytes(range(256)) * 10
    pieces = [(o, data[o : o + 512]) for o in range(0, len(data), 512)]
    assert f.add(0, "k", pieces[2][0], True, pieces[2][1]) is None
    assert f.add(0, "k", pieces[2][0], True, pieces[2][1]) is None  # a duplicate
    assert f.add(0, "k", pieces[-1][0], False, pieces[-1][1]) is None
    for offset, piece in pieces[:2] + pieces[3:-1]:
        whole = f.add(0, "k", offset, True, piece)
    assert whole == data and counts[r.FRAG_DONE] == 1
    assert len(f) == 0 and f.held == 0


def test_overlapping_fragments_drop_the_datagram() -> None:
    f, counts = frags()
    f.add(0, "k", 0, True, bytes(16))
    assert f.add(0, "k", 8, False, bytes(16)) is None
    assert counts[r.FRAG_OVERLAP] == 1 and len(f) == 0 and f.held == 0


def test_fragments_past_64k_or_contradicting_the_end_are_bad() -> None:
    f, counts = frags()
    assert f.add(0, "a", 65528, True, bytes(16)) is None
    f.add(0, "b", 8, False, bytes(16))  # the last piece: the datagram is 24 bytes
    assert f.add(0, "b", 64, True, bytes(8)) is None  # beyond the known end
    assert f.add(0, "c", 0, True, bytes(12)) is None  # not a multiple of 8 before the end
    assert counts[r.FRAG_BAD] == 3 and len(f) == 0 and f.held == 0


def test_fragment_bounds_and_expiry() -> None:
    f, counts = frags(max_bytes=65_536, timeout=30.0)
    for i in range(9):
        f.add(0, i, 0, True, bytes(8192))
    assert counts[r.FRAG_OVERFLOW] == 1 and f.held <= 65_536
    f.add(31.0, "new", 0, True, bytes(8))  # the old ones are past the timeout
    assert counts[r.FRAG_EXPIRED] == 8 and len(f) == 1 and f.held == 8
    f2, counts2 = frags(max_datagrams=2)
    for i in range(3):
        f2.add(0, i, 0, True, bytes(8))
    assert counts2[r.FRAG_OVERFLOW] == 1 and len(f2) == 2


def stream(messages: list[bytes]) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in messages)


def test_tcp_messages_split_and_retransmitted() -> None:
    counts = r.new_counts()
    t = r.TcpStreams(counts)
    data = stream([b"a" * 300, b"b" * 5, b"c" * 70])
    assert t.segment(0, "k", 99, 0x02, b"") == []  # SYN: data starts at 100
    out = t.segment(0, "k", 100, 0x10, data[:200])
    out += t.segment(0, "k", 100, 0x10, data[:250])  # retransmits 200 bytes, adds 50
    out += t.segment(0, "k", 350, 0x10, data[250:])
    assert out == [b"a" * 300, b"b" * 5, b"c" * 70]
    assert t.segment(0, "k", 100 + len(data), 0x11, b"") == []
    assert counts[r.TCP_CLOSED] == 1 and len(t) == 0 and t.held == 0


def test_tcp_sequence_wraps() -> None:
    t = r.TcpStreams(r.new_counts())
    data = stream([b"x" * 100])
    start = 0xFFFFFFFF - 40
    out = t.segment(0, "k", start, 0x10, data[:50]) + t.segment(0, "k", (start + 50) & 0xFFFFFFFF,
                                                                0x10, data[50:])  # fmt: skip
    assert out == [b"x" * 100]


def test_tcp_bounds_gaps_and_idle_expiry() -> None:
    counts = r.new_counts()
    t = r.TcpStreams(counts, max_stream_bytes=1000, max_streams=2, idle=30.0)
    t.segment(0, "big", 1, 0x10, b"\xff\xff" + bytes(998))  # a 64 KiB message never ends
    assert t.segment(0, "big", 1001, 0x10, bytes(10)) == []
    assert counts[r.TCP_OVERFLOW] == 1 and "big" not in t._streams
    t.segment(0, "gap", 1, 0x10, b"\x00\x05ab")
    t.segment(0, "gap", 5000, 0x10, bytes(999))  # held ahead, waiting for 5..4999
    t.segment(0, "gap", 6000, 0x10, bytes(10))  # more ahead than one stream may hold
    assert counts[r.TCP_GAPS] == 1 and len(t) == 0
    t.segment(0, "a", 1, 0x10, b"\x00")
    t.segment(0, "b", 1, 0x10, b"\x00")
    assert t.segment(0, "c", 1, 0x10, b"\x00") == [] and counts[r.TCP_OVERFLOW] == 2
    t.segment(31.0, "d", 1, 0x10, b"\x00")  # a and b idle past 30 s: expired, d fits
    assert counts[r.TCP_EXPIRED] == 2 and len(t) == 1 and t.held == 1
