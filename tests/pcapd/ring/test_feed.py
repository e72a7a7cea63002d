"""The ring's chunk store and feeds on bytes: runs of records as the reader
hands them over, framed into files read back with dpkt (the reference)."""

from __future__ import annotations

import io
import struct
import threading
import time

import dpkt

from pcapd.engine import CaptureLimits
from pcapd.pcapfile import pcap_header
from pcapd.ring import Ring, RingCapture, chunk_layout
from pcapd.ring.feed import SEAM_SLACK, Feed
from pcapd.ring.store import EVICT_WALK, HEAD, NS, RECORD, ChunkStore

T0 = 1_800_000_000 * NS  # ns: the stamp of the first record
GAP = 1_000  # ns between records


def frame(counter: int, size: int = 60) -> bytes:
    """A packet whose first 4 bytes number it."""
    return struct.pack("!I", counter).ljust(size, b"x")


def records(stamps: list[int], sizes: list[int] | None = None, first: int = 0) -> memoryview:
    """Ring records (pcap heads, whole packets) numbered first, first + 1, ..."""
    out = bytearray()
    for index, ts in enumerate(stamps):
        pkt = frame(first + index, sizes[index] if sizes else 60)
        out += RECORD.pack(ts // NS, ts % NS, len(pkt), len(pkt)) + pkt
    return memoryview(bytes(out))


def feed(*, since: int, packets: int = 1_000, size: int = 1 << 20, match: object = None,
         holding: bool = False) -> Feed:  # fmt: skip
    limits = CaptureLimits(snap=262_144, packets=packets, bytes=size, duration=60, timeout=60)
    return Feed(pcap_header(1, 262_144), limits, pcapng=False, match=match,  # type: ignore[arg-type]
                since=since, trigger=since, debug=None, holding=holding)  # fmt: skip


def read(data: bytearray) -> list[tuple[int, int]]:
    """(counter, ts_ns) of each packet in a pcap file."""
    return [
        (struct.unpack("!I", pkt[:4])[0], round(ts * NS))
        for ts, pkt in dpkt.pcap.Reader(io.BytesIO(bytes(data)))
    ]


def test_a_run_past_the_seam_is_taken_in_one_copy_as_dpkt_reads_it() -> None:
    stamps = [T0 + SEAM_SLACK + i * GAP for i in range(50)]
    run = records(stamps)
    got = feed(since=T0)
    got.take(run, 0, len(run), 50, stamps[0])
    assert got.buf == pcap_header(1, 262_144) + run
    assert (got.count, got.size, got.full) == (50, len(got.buf), False)
    assert [n for n, _ in read(got.buf)] == list(range(50))
    assert abs(read(got.buf)[7][1] - stamps[7]) < 1_000  # dpkt gives float seconds


def test_bounds_end_inside_a_run_as_record_by_record() -> None:
    stamps = [T0 + SEAM_SLACK + i * GAP for i in range(20)]
    run = records(stamps)
    by_packets = feed(since=T0, packets=7)
    by_packets.take(run, 0, len(run), 20, stamps[0])
    assert by_packets.stop == "packets" and [n for n, _ in read(by_packets.buf)] == list(range(7))
    record = HEAD + 60
    by_bytes = feed(since=T0, size=24 + 5 * record - 1)
    by_bytes.take(run, 0, len(run), 20, stamps[0])
    assert by_bytes.stop == "bytes" and [n for n, _ in read(by_bytes.buf)] == list(range(4))
    exact = feed(since=T0, packets=20)  # the run ends the capture exactly
    exact.take(run, 0, len(run), 20, stamps[0])
    assert exact.stop == "packets" and exact.count == 20


def test_near_the_seam_each_stamp_is_checked_beyond_it_the_run_is_whole() -> None:
    """Within SEAM_SLACK of `since` a record stamped before it is left out,
    wherever it sits in the run; past it, the kernel's order is trusted."""
    since = T0 + 10 * GAP
    near = [T0 + 5 * GAP, since, since + GAP, T0 + 9 * GAP, since + 2 * GAP]
    run = records(near)
    got = feed(since=since)
    got.take(run, 0, len(run), len(near), near[0])
    assert [n for n, _ in read(got.buf)] == [1, 2, 4]
    far = [since + SEAM_SLACK + GAP, since + SEAM_SLACK + 2 * GAP]
    run = records(far)
    got = feed(since=since)
    got.take(run, 0, len(run), 2, far[0])
    assert [n for n, _ in read(got.buf)] == [0, 1]


def test_a_timed_stop_keeps_only_what_was_stamped_before_it() -> None:
    stamps = [T0 + SEAM_SLACK + i * GAP for i in range(10)]
    run = records(stamps)
    got = feed(since=T0)
    got.cutoff = stamps[5]
    got.take(run, 0, len(run), 10, stamps[0])
    assert [n for n, _ in read(got.buf)] == list(range(6))


def test_a_filter_sees_each_packet_and_keeps_the_record_whole() -> None:
    stamps = [T0 + SEAM_SLACK + i * GAP for i in range(30)]
    run = records(stamps, sizes=[60 + i for i in range(30)])
    seen: list[bytes] = []

    def odd(pkt: bytes | memoryview) -> bool:
        seen.append(bytes(pkt))
        counter: int = struct.unpack("!I", bytes(pkt[:4]))[0]
        return counter % 2 == 1

    got = feed(since=T0, match=odd)
    got.take(run, 0, len(run), 30, stamps[0])
    assert [len(pkt) for pkt in seen] == [60 + i for i in range(30)]
    found = list(dpkt.pcap.Reader(io.BytesIO(bytes(got.buf))))
    assert [struct.unpack("!I", pkt[:4])[0] for _, pkt in found] == list(range(1, 30, 2))
    assert [len(pkt) for _, pkt in found] == [60 + i for i in range(1, 30, 2)]


def test_records_held_while_the_lookback_is_copied_follow_it_once_merged() -> None:
    stamps = [T0 + SEAM_SLACK + i * GAP for i in range(12)]
    run = records(stamps)
    cut = (HEAD + 60) * 8  # the first 8 records: the lookback; the rest came live
    got = feed(since=T0, packets=10, holding=True)
    got.take(run, cut, len(run), 4, stamps[8])
    assert got.count == 0 and got.tail_count == 4 and len(got.tail) == len(run) - cut
    assert got.replay(run[:cut]) == (cut, 8)
    got.merge(got.tail, got.tail_count, got.over)
    assert got.stop == "packets" and [n for n, _ in read(got.buf)] == list(range(10))


def test_file_and_tail_never_pass_bytes_the_lookback_first_the_tails_newest_go() -> None:
    """Live records wait in the tail while the lookback is copied; when the
    lookback needs the room they hold, the newest of them go (the file is in
    time order), and file + tail stay within `bytes` at every step."""
    bound, size = 1_000_000, 1_000
    record = HEAD + size

    def copied(lookback: int) -> tuple[Feed, list[int]]:
        got = feed(since=T0, packets=100_000, size=bound, holding=True)
        live = records([T0 + 10 * NS + i * GAP for i in range(600)], [size] * 600, first=5000)
        got.take(live, 0, len(live), 600, T0 + 10 * NS)
        assert (got.tail_count, len(got.tail)) == (600, 600 * record)
        past = records([T0 + SEAM_SLACK + i * GAP for i in range(lookback)], [size] * lookback)
        held = []
        for at in range(0, len(past), 200 * record):  # slices, as the store hands them
            if got.full:
                break
            got.replay(past[at : at + 200 * record])
            held.append(len(got.buf) + len(got.tail))
        got.merge(got.tail, got.tail_count, got.over)
        return got, held

    fits = (bound - 24) // record
    filled, held = copied(1200)  # the lookback alone fills the file
    assert max(held) <= bound and filled.stop == "bytes"
    assert [n for n, _ in read(filled.buf)] == list(range(fits))
    shared, held = copied(500)  # the lookback, then the tail's oldest
    assert max(held) <= bound and shared.over and shared.stop == "bytes"
    assert [n for n, _ in read(shared.buf)] == [*range(500), *range(5000, 5000 + fits - 500)]


def test_the_writer_hands_on_every_record_once_across_chunks_and_overwrites() -> None:
    """3,000 packets of ~1 kB in one read through a 2 MiB store (four
    chunks): each run is handed on before its chunk is left, so none is
    lost even where the store overwrote it later in the same read."""
    store = ChunkStore(2 << 20)
    assert store.chunks == 4
    handed: list[int] = []

    def segment(data: memoryview, start: int, end: int, count: int) -> None:
        at, before = start, len(handed)
        while at < end:
            n = RECORD.unpack_from(data, at)[2]
            handed.append(struct.unpack_from("!I", data, at + HEAD)[0])
            at += HEAD + n
        assert at == end and len(handed) - before == count

    append, settle = store.writer(segment)
    for index in range(3000):
        append(T0 + index * GAP, frame(index, 1000))
    settle()
    assert handed == list(range(3000))
    packets, _held = store.held()
    assert packets + store.evicted_overflow == 3000 and store.evicted_overflow > 0
    assert [struct.unpack("!I", pkt[:4])[0] for _, pkt in store.records()] == list(
        range(3000 - packets, 3000)
    )


def test_one_eviction_walks_at_most_evict_walk_records_of_the_oldest_chunk() -> None:
    """A 4 MiB chunk of 64-byte packets holds ~52k records: walking them all
    under the ring's lock took ~180 ms. Each call walks EVICT_WALK at most;
    `walk=0` drops whole chunks only; repeated calls drop every old record."""
    store = ChunkStore(16 << 20)
    append, settle = store.writer(lambda *_: None)
    stamp = T0
    while store.order() != [0, 1]:  # the first chunk full, the writer past it
        append(stamp, frame(0, 64))
        stamp += GAP
    settle()
    first = store.held()[0] - 1  # records in the first chunk
    assert first > 10 * EVICT_WALK
    cutoff = T0 + (first - 1) * GAP  # all but the first chunk's last are older
    store.evict_old(cutoff, walk=0)
    assert store.evicted_age == 0
    calls = 0
    while store.evicted_age < first - 1:
        before = store.evicted_age
        store.evict_old(cutoff)
        assert 0 < store.evicted_age - before <= EVICT_WALK
        calls += 1
    assert store.evicted_age == first - 1 and calls == -(-(first - 1) // EVICT_WALK)
    assert store.held()[0] == 2 and store.oldest() == cutoff
    store.evict_old(stamp - GAP)  # all the first chunk is older now: dropped at once
    assert (store.evicted_age, store.held()[0]) == (first, 1)


def test_a_chunk_reused_mid_copy_is_lost_and_said_so_and_the_rest_kept_once() -> None:
    """The writer wraps round the store while a lookback is copied (after
    its first slice): the reused chunk's records not yet copied are lost and
    the result says so; kept + lost = the records noted, none twice, in order."""
    ring = Ring("lo", 30, 2 << 20)  # not started: the test writes its store
    append, settle = ring.store.writer(lambda *_: None)
    sent = 0

    def fill(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            append(T0 + sent * GAP, frame(sent, 1000))
            sent += 1
        settle()

    fill(1500)  # three of the four chunks
    spans = ring.store.spans(T0)
    noted = sum(span.records for span in spans)
    assert noted == 1500 and ring.store.chunks == 4

    class Overwriting(Feed):
        slices = 0

        def replay(self, data: memoryview) -> tuple[int, int]:
            got = super().replay(data)
            Overwriting.slices += 1
            if Overwriting.slices == 1:
                fill(1000)  # past the fourth chunk into the first, being copied
            return got

    limits = CaptureLimits(snap=262_144, packets=100_000, bytes=1 << 30, duration=60, timeout=60)
    copying = Overwriting(
        pcap_header(1, 262_144), limits, pcapng=False, match=None, since=T0,
        trigger=T0 + sent * GAP, debug=None, holding=True, lock=ring.lock,
    )  # fmt: skip
    served = RingCapture(ring, copying, limits, 0, 30.0, spans)
    stop = threading.Event()
    stop.set()  # no live part: the lookback only
    outcome = served.finish(stop)
    kept = [n for n, _ in read(outcome.data)]
    lost = noted - len(kept)
    assert ring.store.evicted_overflow > 0 and 0 < lost < ring.store.evicted_overflow
    first = chunk_layout(2 << 20)[1] // (HEAD + 1000)  # records in the reused chunk
    copied = first - lost  # its slices copied before it was reused
    assert kept == [*range(copied), *range(first, 1500)]  # once each, in order
    (warning,) = served.warnings
    assert f"up to {lost} packets of the ring on lo were overwritten" in warning


def test_a_chunk_reused_when_all_its_records_are_too_old_counts_them_by_age() -> None:
    """A burst wraps round the store before the reader's eviction dropped
    the oldest chunk: records older than the ring keeps are counted as age
    (not overflow: there was room); a chunk with newer records, overflow."""
    store = ChunkStore(2 << 20, seconds=30)
    append, settle = store.writer(lambda *_: None)
    per_chunk = chunk_layout(2 << 20)[1] // (HEAD + 1000)
    old = time.time_ns() - 3600 * NS
    for index in range(per_chunk):  # the first chunk: an hour old
        append(old + index * GAP, frame(index, 1000))
    now = time.time_ns()
    for index in range(4 * per_chunk):  # the others and the first again: new
        append(now + index * GAP, frame(index, 1000))
    settle()
    assert (store.evicted_age, store.evicted_overflow) == (per_chunk, 0)
    for index in range(per_chunk):  # the second chunk, new, reused
        append(now + index * GAP, frame(index, 1000))
    settle()
    assert (store.evicted_age, store.evicted_overflow) == (per_chunk, per_chunk)


def test_spans_from_a_mark_start_at_it_and_a_reused_chunk_falls_back_to_its_start() -> None:
    """A head start's replay begins at the store's mark after the last read
    before it: it walks what came since, not the whole chunk; a mark whose
    chunk was reused since is not trusted (the chunk's held records are)."""
    store = ChunkStore(2 << 20)
    append, settle = store.writer(lambda *_: None)
    for index in range(100):
        append(T0 + index * GAP, frame(index))
    settle()
    mark = store.mark()
    for index in range(100, 110):
        append(T0 + index * GAP, frame(index))
    settle()
    since = T0 + 100 * GAP
    (whole,) = store.spans(since)
    (marked,) = store.spans(since, mark)
    assert (whole.chunk, whole.start) == (marked.chunk, 0) and marked.start == mark[1] > 0
    body = bytes(store._views[marked.chunk][marked.start : marked.end])
    assert [n for n, _ in read(bytearray(pcap_header(1, 262_144)) + body)] == list(range(100, 110))
    for index in range(110, 3000):  # ~1 kB each: past every chunk, the marked one reused
        append(T0 + index * GAP, frame(index, 1000))
    settle()
    assert store.spans(since, mark) == store.spans(since)
