"""The lookback ring on a veth pair between namespaces this test creates:
packets numbered by a counter in their UDP payload, sent from one namespace
and read by a ring in the other; files read back with dpkt and tshark."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dpkt
import pytest

from pcapd.engine import CaptureError, CaptureLimits, CaptureOutcome
from pcapd.ring import MIN_CHUNK, Ring, chunk_layout, compiled_filter
from pcapd.ring.store import Span
from tests.helpers import VethPair, free_port, needs_root, netns, run, veth_pair, wait_for

pytestmark = needs_root

PORT = 40_080
PAYLOAD = 200
FAR = 3600  # seconds: a bound that never ends a capture here


@dataclass
class Link:
    pair: VethPair
    sock: socket.socket  # in ns_b, sending to ns_a
    sent: int = 0

    def send(self, count: int, interval: float = 0.0, size: int = PAYLOAD) -> None:
        """Packets numbered self.sent, self.sent + 1, ...; each `interval` s apart."""
        for _ in range(count):
            body = struct.pack("!I", self.sent).ljust(size, b"x")
            self.sock.sendto(body, (self.pair.addr_a, PORT))
            self.sent += 1
            if interval:
                time.sleep(interval)

    def ring(self, seconds: int = 30, max_bytes: int = 8 << 20, bpf: str = "") -> Ring:
        ring = Ring(self.pair.dev_a, seconds, max_bytes, bpf or f"udp and dst port {PORT}")
        with netns(self.pair.ns_a):
            ring.start()
        return ring


@contextlib.contextmanager
def linked(subnet: int) -> Iterator[Link]:
    with veth_pair(subnet=subnet) as pair:
        # Learn the neighbour first, so no numbered packet waits on ARP.
        run(*pair.exec_b("ping", "-c", "1", "-W", "2", pair.addr_a))
        with netns(pair.ns_b):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            yield Link(pair, sock)


@pytest.fixture
def link() -> Iterator[Link]:
    with linked(80) as made:
        yield made


def limits(packets: int = 100_000, size: int = 50_000_000, duration: float = FAR,
           timeout: float = FAR) -> CaptureLimits:  # fmt: skip
    return CaptureLimits(snap=262_144, packets=packets, bytes=size, duration=duration,
                         timeout=timeout)  # fmt: skip


def capture(ring: Ring, *, bpf: str = "", lookback: int = 0, fmt: str = "pcap",
            stop: threading.Event | None = None, **bounds: float) -> CaptureOutcome:  # fmt: skip
    served = ring.register(
        limits(**bounds),  # type: ignore[arg-type]
        fmt=fmt, bpf=bpf, lookback=lookback, comments={"request_id": "t"},
    )  # fmt: skip
    return served.finish(stop or threading.Event())


def numbers(outcome: CaptureOutcome) -> list[tuple[int, int]]:
    """(counter, ts_ns) of every packet in the file, in file order."""
    data = io.BytesIO(bytes(outcome.data))
    reader = dpkt.pcapng.Reader(data) if outcome.data[:4] == b"\n\r\r\n" else dpkt.pcap.Reader(data)
    found = []
    for ts, frame in reader:
        udp = dpkt.ethernet.Ethernet(frame).data.data
        found.append((struct.unpack("!I", udp.data[:4])[0], int(ts * 1_000_000_000)))
    return found


def held(ring: Ring, count: int) -> None:
    wait_for(lambda: ring.stats().packets >= count, timeout=20)


def in_thread(target: object) -> tuple[threading.Thread, list[CaptureOutcome]]:
    out: list[CaptureOutcome] = []
    assert callable(target)
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def test_chunks_hold_the_largest_packet_and_stay_within_the_cap() -> None:
    for cap in (2 << 20, 3 << 20, 64 << 20, 1 << 30):
        count, size = chunk_layout(cap)
        assert count >= 4 and size >= MIN_CHUNK and count * size <= cap


def test_lookback_then_live_each_packet_once_in_order_across_the_seam(link: Link) -> None:
    """Packets flow steadily while two captures start: one with lookback 1
    (even numbers only), one with lookback 3 (everything, longer than the
    traffic so far). Each file is exactly its window, in order, no gap or
    duplicate where the ring's part meets the live part."""
    ring = link.ring()
    try:
        sender = threading.Thread(target=link.send, args=(1500, 0.002), daemon=True)
        sender.start()
        wait_for(lambda: link.sent >= 700, timeout=30)  # > 1 s of traffic held
        even_t, even = in_thread(lambda: capture(ring, bpf="udp[8:4] & 1 = 0", lookback=1,
                                                 duration=1, fmt="pcapng"))  # fmt: skip
        all_t, every = in_thread(lambda: capture(ring, lookback=3, duration=1))
        for thread in (even_t, all_t):
            thread.join(30)
        sender.join(60)
    finally:
        ring.stop()
    (a,), (b,) = even, every
    got_a, got_b = numbers(a), numbers(b)
    # The long lookback reaches the first packet; then every one, once, in order.
    assert [n for n, _ in got_b] == list(range(len(got_b)))
    assert len(got_b) > 700 and b.stop == "duration" and b.lookback is not None
    # The short one: its window's even numbers, contiguous across the seam.
    first = got_a[0][0]
    assert [n for n, _ in got_a] == list(range(first, first + 2 * len(got_a), 2))
    assert a.stop == "duration" and 0.9 <= (a.lookback or 0) <= 1.0
    since = int(a.started * 1e9) - 1_000_000_000
    stamps = dict(got_b)
    assert stamps[first] >= since > stamps[first - 2]  # the window is exact
    before = [n for n, ts in got_a if ts < int(a.started * 1e9)]
    after = [n for n, ts in got_a if ts >= int(a.started * 1e9)]
    assert before and after, "the capture must span the seam"
    # pcapng marks the ring's packets and states the span (tshark reads both).
    path = Path(f"/tmp/pcapd-ring-{os.getpid()}.pcapng")
    path.write_bytes(a.data)
    try:
        fields = run("tshark", "-r", str(path), "-T", "fields", "-e", "frame.comment").stdout
        comments = run("capinfos", "-k", str(path)).stdout
    finally:
        path.unlink()
    marked = fields.splitlines()
    assert marked == ["lookback"] * len(before) + [""] * len(after)
    assert "lookback=1s asked; ring packets from" in comments


def test_lookback_is_its_window_only(link: Link) -> None:
    """Packets older than the lookback are not in the file, even though the ring holds them."""
    ring = link.ring()
    try:
        link.send(20)
        held(ring, 20)
        time.sleep(1.5)
        link.send(10)
        held(ring, 30)
        got = numbers(capture(ring, lookback=1, timeout=0.5))
    finally:
        ring.stop()
    assert [n for n, _ in got] == list(range(20, 30))


def test_overflow_keeps_the_newest_and_counts_what_it_dropped(link: Link) -> None:
    ring = link.ring(max_bytes=2 << 20)
    try:
        link.send(6000, size=1000)  # ~6.3 MB through a 2 MiB ring
        wait_for(lambda: ring.stats().packets + ring.stats().evicted_overflow >= 6000, timeout=30)
        stats = ring.stats()
        got = numbers(capture(ring, lookback=30, timeout=0.5))
    finally:
        ring.stop()
    assert stats.evicted_overflow > 3000 and stats.evicted_age == 0
    assert stats.packets + stats.evicted_overflow == 6000
    assert stats.bytes <= ring.memory <= 2 << 20
    assert [n for n, _ in got] == list(range(6000 - stats.packets, 6000))


def test_concurrent_captures_with_different_filters_get_exactly_theirs(link: Link) -> None:
    ring = link.ring()
    try:
        started = [
            in_thread(lambda r=r: capture(ring, bpf=f"udp[8:4] % 3 = {r}", packets=100))
            for r in range(3)
        ]
        wait_for(lambda: ring.stats().captures == 3, timeout=10)
        link.send(400, 0.0005)
        for thread, _ in started:
            thread.join(30)
    finally:
        ring.stop()
    for r, (_, (outcome,)) in enumerate(started):
        assert outcome.stop == "packets" and outcome.lookback is None
        assert [n for n, _ in numbers(outcome)] == list(range(r, r + 300, 3))


def test_packets_and_bytes_bounds_end_inside_the_lookback_part(link: Link) -> None:
    ring = link.ring()
    try:
        link.send(200)
        held(ring, 200)
        begin = time.monotonic()
        by_packets = capture(ring, lookback=30, packets=50)
        record = 16 + 14 + 20 + 8 + PAYLOAD
        by_bytes = capture(ring, lookback=30, size=24 + 31 * record - 1)
        took = time.monotonic() - begin
    finally:
        ring.stop()
    assert by_packets.stop == "packets" and [n for n, _ in numbers(by_packets)] == list(range(50))
    assert by_bytes.stop == "bytes" and [n for n, _ in numbers(by_bytes)] == list(range(30))
    assert len(by_bytes.data) == 24 + 30 * record
    assert took < 5, "a capture full from the ring ends at once"


def test_shutdown_ends_captures_with_what_they_hold(link: Link) -> None:
    ring = link.ring()
    stop = threading.Event()
    try:
        link.send(10)
        held(ring, 10)
        thread, out = in_thread(lambda: capture(ring, lookback=30, stop=stop))
        wait_for(lambda: ring.stats().captures == 1, timeout=10)
        link.send(5)
        wait_for(lambda: ring.stats().packets >= 15, timeout=10)
        stop.set()
        thread.join(10)
    finally:
        ring.stop()
    (outcome,) = out
    assert outcome.stop == "shutdown" and [n for n, _ in numbers(outcome)] == list(range(15))
    assert outcome.kernel_dropped == 0


def test_a_ring_failure_fails_only_the_captures_it_ended() -> None:
    """The veth goes (the ring's handle fails) after one capture was already
    ended by its packets bound and while another waits: only the waiting
    one carries the ring's error; the full one is as any full capture."""
    with linked(170) as link:
        ring = link.ring()
        try:
            ended = threading.Event()
            full = ring.register(limits(packets=3), fmt="pcap", bpf="", lookback=0,
                                 comments={}, on_full=ended.set)  # fmt: skip
            waiting = ring.register(limits(), fmt="pcap", bpf="", lookback=0, comments={})
            link.send(3)
            assert ended.wait(20)
            run("ip", "-n", link.pair.ns_a, "link", "del", link.pair.dev_a)
            wait_for(lambda: ring.error is not None, timeout=20)
            done, failed = full.finish(threading.Event()), waiting.finish(threading.Event())
        finally:
            ring.stop()
    assert (done.stop, done.error, done.packets) == ("packets", None, 3)
    assert [n for n, _ in numbers(done)] == [0, 1, 2]
    assert (failed.stop, failed.error, failed.packets) == ("shutdown", ring.error, 3)
    assert ring.error == f"lookback ring on {link.pair.dev_a} failed: The interface disappeared"


def test_a_bad_request_filter_is_refused_and_the_ring_serves_on(link: Link) -> None:
    ring = link.ring()
    try:
        with pytest.raises(CaptureError, match=r"bpf: 'host' does not compile for va\w+ "
                                               r"\(link type 1\)"):  # fmt: skip
            capture(ring, bpf="host")
        with pytest.raises(CaptureError, match=r"holds U\+D800 at character 5"):
            capture(ring, bpf="host \ud800")
        with pytest.raises(CaptureError, match=r"^bytes=100 cannot hold even the \d+-byte file "):
            capture(ring, fmt="pcapng", size=100)
        link.send(3)
        held(ring, 3)
        assert len(numbers(capture(ring, lookback=5, timeout=0.3))) == 3
    finally:
        ring.stop()


def test_the_ring_keeps_only_what_lookback_bpf_matches(link: Link) -> None:
    ring = link.ring(bpf=f"udp and dst port {PORT} and udp[8:4] < 5")
    try:
        link.send(10)
        link.sock.sendto(b"\0\0\0\1", (link.pair.addr_a, PORT + 1))
        time.sleep(0.3)
        wait_for(lambda: ring.stats().packets >= 5, timeout=10)
        assert ring.stats().packets == 5
    finally:
        ring.stop()


HISTORY = 1_000_000  # counters of the packets tcpreplay sends start here
HISTORY_FILE = 1000  # distinct packets in its file, looped


def history_file(path: Path, pair: VethPair) -> None:
    """HISTORY_FILE numbered 100-byte UDP frames to pair.addr_a:PORT, for tcpreplay."""
    with path.open("wb") as out:
        writer = dpkt.pcap.Writer(out)
        for n in range(HISTORY_FILE):
            udp = dpkt.udp.UDP(
                sport=PORT, dport=PORT, data=struct.pack("!I", HISTORY + n).ljust(58, b"x")
            )
            udp.ulen = len(udp)
            ip = dpkt.ip.IP(src=socket.inet_aton(pair.addr_b), dst=socket.inet_aton(pair.addr_a),
                            p=dpkt.ip.IP_PROTO_UDP, data=udp)  # fmt: skip
            ip.len = len(ip)
            eth = dpkt.ethernet.Ethernet(src=b"\x02\0\0\0\0\2", dst=b"\x02\0\0\0\0\1", data=ip)
            writer.writepkt(bytes(eth))


def test_a_long_lookback_copy_leaves_the_reader_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 64 MiB ring of ~500k packets: lookback captures register at once, and
    while they copy the ring a live capture on the same ring gets its
    packets. A lookback file is its matches from the ring, then exactly the
    live packets that came meanwhile, up to its bounds."""
    with linked(100) as link:
        ring = link.ring(max_bytes=64 << 20)
        # One copy stops after its first slice until the live capture is done:
        # "while a copy runs" then holds on a machine that copies faster than
        # 20 packets cross the veth.
        live_done, first_copy, held = threading.Event(), threading.Lock(), threading.Event()
        replay = ring.store.replay

        def replay_held(
            spans: tuple[Span, ...],
            take: Callable[[memoryview], tuple[int, int]],
            full: Callable[[], bool],
        ) -> int:
            if not first_copy.acquire(blocking=False):
                return replay(spans, take, full)
            slices = 0

            def take_then_wait(piece: memoryview) -> tuple[int, int]:
                nonlocal slices
                slices += 1
                if slices == 2:
                    held.set()
                    live_done.wait(30)
                return take(piece)

            return replay(spans, take_then_wait, full)

        monkeypatch.setattr(ring.store, "replay", replay_held)
        try:
            path = tmp_path / "history.pcap"
            history_file(path, link.pair)
            for _ in range(30):
                if ring.stats().packets >= 400_000:
                    break
                run(*link.pair.exec_b("tcpreplay", "-q", "-i", link.pair.dev_b, "--topspeed",
                                      "-l", "100", str(path)))  # fmt: skip
                time.sleep(0.2)
            assert ring.stats().packets >= 400_000
            live_only = f"udp[8:4] < {HISTORY}"
            live_t, live = in_thread(lambda: capture(ring, bpf=live_only, packets=20))
            wait_for(lambda: ring.stats().captures == 1, timeout=10)
            record = 16 + 14 + 20 + 8 + PAYLOAD
            # The matches of the ring, then the live ones; and two whose
            # bounds end inside the live packets that wait for their copy.
            asked = [
                (f"udp[8:4] = {HISTORY + 7} or {live_only}", limits(timeout=1)),
                (live_only, limits(packets=10)),
                (live_only, limits(size=24 + 7 * record + 100)),
            ]
            registered = [threading.Event() for _ in asked]
            copied: dict[int, CaptureOutcome] = {}

            def lookback(i: int) -> None:
                bpf, bounds = asked[i]
                served = ring.register(bounds, fmt="pcap", bpf=bpf, lookback=30, comments={})
                registered[i].set()
                copied[i] = served.finish(threading.Event())

            copying = [threading.Thread(target=lookback, args=(i,), daemon=True)
                       for i in range(len(asked))]  # fmt: skip
            for thread in copying:
                thread.start()
            wait_for(lambda: all(e.is_set() for e in registered), timeout=30)
            assert ring.stats().replaying == 3, "registered before their lookback is copied"
            wait_for(held.is_set, timeout=30)
            link.send(20)
            live_t.join(30)
            # The live capture had its 20 while the held copy was midway.
            assert live and ring.stats().replaying >= 1
            live_done.set()
            for thread in copying:
                thread.join(60)
        finally:
            ring.stop()
    (got,), back = live, copied[0]
    assert [n for n, _ in numbers(got)] == list(range(20)) and got.stop == "packets"
    found = [n for n, _ in numbers(back)]
    assert found[-20:] == list(range(20)), "the live part: each once, in order"
    assert found[:-20] and set(found[:-20]) == {HISTORY + 7}
    by_packets, by_bytes = copied[1], copied[2]
    assert by_packets.stop == "packets" and [n for n, _ in numbers(by_packets)] == list(range(10))
    assert by_bytes.stop == "bytes" and [n for n, _ in numbers(by_bytes)] == list(range(7))
    assert len(by_bytes.data) == 24 + 7 * record
    assert back.stop == "timeout" and back.lookback is not None


def held_records(ring: Ring) -> list[tuple[int, int]]:
    """(counter, ts_ns) of every UDP packet the ring holds now, oldest first."""
    with ring.lock:
        return [(struct.unpack_from("!I", pkt, 42)[0], ts) for ts, pkt in ring.store.records()]


def test_a_live_capture_misses_nothing_stamped_after_its_start_under_a_flood() -> None:
    """A flood on lo from a thread of this process (so registrations wait for
    the GIL and the lock, as in the daemon) while 60 live captures start, one
    after the other: each holds every packet the ring holds from its
    `started` on, none missing before its first, none skipped between."""
    port = free_port()
    ring = Ring("lo", 10, 8 << 20, f"udp and dst port {port}")
    ring.start()
    stop = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            n = 0
            while not stop.is_set():
                sock.sendto(struct.pack("!I", n).ljust(64, b"x"), ("127.0.0.1", port))
                n += 1

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    missed: list[tuple[int, list[int]]] = []
    try:
        held(ring, 10_000)
        for trial in range(60):
            live = capture(ring, packets=50, duration=10)
            got = numbers(live)
            assert len(got) == 50 and live.stop == "packets"
            ring_now = held_records(ring)
            first = ring_now.index(got[0])  # counters are unique: the flood never wraps them
            assert [n for n, _ in ring_now[first : first + 50]] == [n for n, _ in got], trial
            begin = int(live.started * 1e9) + 2000  # the file's stamps go through a float
            early = [n for n, ts in ring_now[:first] if ts >= begin]
            if early:
                missed.append((trial, early[:5]))
    finally:
        stop.set()
        sender.join(10)
        ring.stop()
    assert not missed, f"(trial, packets stamped after its start but not in it): {missed}"


def test_the_filter_cache_never_serves_a_program_compiled_for_another_link_type() -> None:
    ip = dpkt.ip.IP(src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02", p=17,
                    data=dpkt.udp.UDP(sport=1, dport=53, data=b"q"))  # fmt: skip
    ip.len = len(bytes(ip))
    ether = bytes(dpkt.ethernet.Ethernet(dst=b"\1" * 6, src=b"\2" * 6, type=0x0800, data=ip))
    # Linux cooked (DLT_LINUX_SLL, 113): 16 bytes, protocol in the last two.
    cooked = struct.pack("!HHH8sH", 0, 1, 6, b"\2" * 6, 0x0800) + bytes(ip)
    compiled_filter.cache_clear()
    on_ether, on_cooked = compiled_filter("udp port 53", 1), compiled_filter("udp port 53", 113)
    assert (on_ether(ether), on_ether(cooked)) == (True, False)
    assert (on_cooked(cooked), on_cooked(ether)) == (True, False)
    # The same expression again is served from the cache, for its own link type.
    assert compiled_filter("udp port 53", 113) is on_cooked
    assert compiled_filter.cache_info().hits == 1
    # What does not compile is refused each time, never cached as a program.
    for _ in range(2):
        with pytest.raises(OSError):
            compiled_filter("udp port", 1)
    assert compiled_filter.cache_info().currsize == 2


def test_on_full_is_called_once_on_the_reader_thread_when_a_bound_ends_the_capture() -> None:
    """What frees the capture's slot as its last packet arrives; a capture
    ended by a timed bound in `finish` does not call it."""
    port = free_port()
    ring = Ring("lo", 5, 2 * 1024 * 1024, f"udp and dst port {port}")
    ring.start()
    try:
        calls: list[str] = []

        def full() -> None:
            calls.append(threading.current_thread().name)

        served = ring.register(
            limits(packets=2), fmt="pcap", bpf="", lookback=0, comments={}, on_full=full
        )
        waiting = ring.register(
            limits(timeout=0.3), fmt="pcap", bpf="udp[8:4] = 7", lookback=0, comments={},
            on_full=lambda: calls.append("timed"),
        )  # fmt: skip
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for index in range(5):
                sock.sendto(struct.pack("!I", index), ("127.0.0.1", port))
        wait_for(lambda: calls, timeout=10)
        outcome = served.finish(threading.Event())
        assert (outcome.stop, outcome.packets) == ("packets", 2)
        assert waiting.finish(threading.Event()).stop == "timeout"
        assert calls == ["ring-lo"]
    finally:
        ring.stop()


def prefill(ring: Ring, stamps: list[int], size: int) -> None:
    """Records of `size` bytes with these stamps (ns) written into the
    ring's store before it starts: its reader writes on after them. They
    are no packet (no BPF matches them) and the test chose their age."""
    append, settle = ring.store.writer(lambda *_: None)
    for stamp in stamps:
        append(stamp, b"\xff" * size)
    settle()


def test_records_older_than_the_ring_keeps_go_whole_chunks_then_one_by_one() -> None:
    """Records an hour old, more than a chunk of them, beside live packets:
    the reader drops the first chunk whole and the rest of the old ones one
    by one, and `stats` says exactly what went. No sleep races the ring's
    clock: the old records' age is written, the live ones have 30 s."""
    port = free_port()
    ring = Ring("lo", 30, 2 << 20, f"udp and dst port {port}")  # 4 chunks of 512 KiB
    per_chunk = chunk_layout(2 << 20)[1] // (16 + 1000)
    old = time.time_ns() - 3600 * 1_000_000_000
    prefill(ring, [old + i * 1000 for i in range(per_chunk + 100)], 1000)
    assert ring.store.order() == [0, 1]
    ring.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for index in range(5):
                sock.sendto(struct.pack("!I", index), ("127.0.0.1", port))
        wait_for(lambda: ring.stats().evicted_age == per_chunk + 100 and ring.stats().packets == 5,
                 timeout=30)  # fmt: skip
        assert ring.store.order() == [1] and ring.stats().evicted_overflow == 0
        assert [struct.unpack_from("!I", pkt, 42)[0] for _, pkt in ring.store.records()] == list(
            range(5)
        )
        got = numbers(capture(ring, lookback=30, timeout=0.3))
    finally:
        ring.stop()
    assert [n for n, _ in got] == list(range(5))


def test_registering_and_counting_hold_the_lock_briefly_beside_a_chunk_of_old_small_records() -> (
    None
):
    """A 4 MiB chunk of 64-byte records (~52k), all but its last older than
    the ring keeps: walking them all under the lock took ~180 ms. A
    registration walks none (its replay skips them by their stamps), `stats`
    at most EVICT_WALK; the reader drops them a bounded walk at a time."""
    port = free_port()
    ring = Ring("lo", 30, 16 << 20, f"udp and dst port {port}")  # 4 chunks of 4 MiB
    per_chunk = chunk_layout(16 << 20)[1] // (16 + 64)
    now = time.time_ns()
    old = now - 3600 * 1_000_000_000
    prefill(ring, [*(old + i * 1000 for i in range(per_chunk - 1)), now, now], 64)
    assert ring.store.order() == [0, 1]
    ring.start()
    try:
        begin = time.monotonic()
        served = ring.register(limits(), fmt="pcap", bpf="", lookback=30, comments={})
        registered = time.monotonic() - begin
        begin = time.monotonic()
        stats = ring.stats()
        counted = time.monotonic() - begin
        served.cancel()
        assert registered < 0.1 and counted < 0.1, (registered, counted)  # ~1 ms idle
        assert stats.evicted_age < per_chunk - 1  # not all at once
        wait_for(lambda: ring.stats().evicted_age == per_chunk - 1, timeout=60)
    finally:
        ring.stop()
