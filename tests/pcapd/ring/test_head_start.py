"""A ring capture starts when its request arrived (`head_start`), not when
it registered: on a veth pair between namespaces this test creates, packets
numbered by a counter in their UDP payload."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pcapd.ring import HEAD_START_BYTES, MAX_HEAD_START, RING_BUFFER_SIZE, Ring, reader
from pcapd.ring.reader import READ_MARKS
from pcapd.ring.store import NS
from tests.helpers import free_port, needs_root, wait_for
from tests.pcapd.ring.test_reader import (
    Link,
    held,
    held_records,
    limits,
    linked,
    numbers,
    prefill,
)

pytestmark = needs_root

GAP = 0.3  # s between the packets before the request's arrival and those after


@contextlib.contextmanager
def sending(send: Callable[[], None]) -> Iterator[None]:
    """`send` over and over, from a thread of this process, while the block runs."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            send()

    sender = threading.Thread(target=loop, daemon=True)
    sender.start()
    try:
        yield
    finally:
        stop.set()
        sender.join(10)


@pytest.fixture
def link() -> Iterator[Link]:
    with linked(190) as made:
        yield made


def test_packets_since_the_arrival_are_kept_once_in_order_none_before(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packets 0-9 come before the request arrives, 10-19 while it is read
    (the ring holds them when it registers: copied at registration, with no
    thread of its own), 20-29 after: the file holds 10-29, each once, in
    order, none marked as lookback."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 5.0)  # the held part is ~0.1 s old here
    ring = link.ring()
    try:
        link.send(10)
        time.sleep(GAP)
        arrived = time.monotonic()
        link.send(10)
        held(ring, 20)
        served = ring.register(
            limits(timeout=0.5), fmt="pcapng", bpf="", lookback=0,
            comments={"request_id": "t"}, arrived=arrived,
        )  # fmt: skip
        assert served.copying  # the ring held part of its window when it registered
        served.copy_head_start()
        assert not served.copying  # so the watcher can serve it: no thread needed
        link.send(10)
        outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    got = numbers(outcome)
    assert [n for n, _ in got] == list(range(10, 30))
    assert outcome.lookback is None and outcome.stop == "timeout"
    assert all(ts >= int(outcome.started * 1e9) for _, ts in got)
    assert b"lookback" not in bytes(outcome.data)  # no packet marked, no span comment


def test_a_request_that_waited_longer_than_the_bound_starts_at_its_registration(
    link: Link,
) -> None:
    """Past MAX_HEAD_START (a queue's backlog) there is no head start: what the
    ring took before the registration is not in the file."""
    ring = link.ring()
    try:
        link.send(10)
        held(ring, 10)
        served = ring.register(
            limits(timeout=0.5), fmt="pcap", bpf="", lookback=0,
            comments={"request_id": "t"}, arrived=time.monotonic() - MAX_HEAD_START * 10,
        )  # fmt: skip
        assert not served.copying
        link.send(5)
        outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    assert [n for n, _ in numbers(outcome)] == list(range(10, 15))
    assert outcome.started * 1e9 > 0 and outcome.started <= time.time()


def test_a_clock_stepped_back_copies_nothing_at_registration() -> None:
    """Records stamped an hour after now, and reads ended then too (the
    clock was stepped back since): every held record is "newer" than any
    start. A capture with no head start copies nothing; one with a head
    start finds no read before it, so it starts at its registration and
    copies nothing either (walking the ring from its tail took 9.9 ms per
    request on a 16 MiB ring, seconds on 1 GiB)."""
    port = free_port()
    ring = Ring("lo", 30, 16 << 20, f"udp and dst port {port}")
    later = time.time_ns() + 3600 * NS
    prefill(ring, [later + i * 1000 for i in range(100_000)], 64)  # past the first chunk
    ring.start()
    try:
        with ring.lock:  # the reads before the step, as the ring remembers them
            ring._read_marks.clear()
            ring._read_marks.extend((later + i, ring.store.mark(), 0) for i in range(READ_MARKS))
        for arrived in (None, time.monotonic() - MAX_HEAD_START / 2):
            begin = time.time_ns()
            served = ring.register(
                limits(timeout=0.2), fmt="pcap", bpf="", lookback=0, comments={}, arrived=arrived
            )
            assert not served.copying, arrived
            assert served.started * NS >= begin - 1000, "no head start without a read mark"
            served.cancel()
    finally:
        ring.stop()


def test_a_head_start_over_its_byte_budget_starts_at_the_registration(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The records since the last read before the arrival are more than
    HEAD_START_BYTES (a high packet rate): none is copied on the caller's
    thread, the capture starts at its registration."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 5.0)  # the held part is ~0.1 s old here
    ring = link.ring()
    try:
        wait_for(lambda: ring._read_marks, timeout=10)  # a read before the arrival
        arrived = time.monotonic()
        count = HEAD_START_BYTES // 1400 + 10
        link.send(count, size=1400)
        held(ring, count)
        begin = time.time_ns()
        served = ring.register(
            limits(timeout=0.5), fmt="pcap", bpf="", lookback=0, comments={}, arrived=arrived
        )
        assert not served.copying and served.started * NS >= begin - 1000
        link.send(5, size=1400)
        outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    assert [n for n, _ in numbers(outcome)] == list(range(count, count + 5))


@pytest.mark.parametrize(
    ("fmt", "debug", "head_start"),
    [("pcap", False, True), ("pcapng", False, False), ("pcap", True, False)],
)
def test_the_head_start_budget_follows_what_framing_a_record_costs(
    link: Link, monkeypatch: pytest.MonkeyPatch, fmt: str, debug: bool, head_start: bool
) -> None:
    """Half of HEAD_START_BYTES came since the arrival: passed through as
    pcap it is copied (the head start applies); framed anew as pcapng (a
    quarter of the budget) or shown by packet debug (none: ~100 us a
    record) it is not, and the capture starts at its registration."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 5.0)  # the held part is ~0.1 s old here
    ring = link.ring()
    shown: list[int] = []
    try:
        wait_for(lambda: ring._read_marks, timeout=10)  # a read before the arrival
        arrived = time.monotonic()
        count = HEAD_START_BYTES // 2 // 1400
        link.send(count, size=1400)
        held(ring, count)
        begin = time.time_ns()
        served = ring.register(
            limits(timeout=0.5), fmt=fmt, bpf="", lookback=0, comments={}, arrived=arrived,
            packet_debug=(lambda ts, packet: shown.append(ts)) if debug else None,
        )  # fmt: skip
        assert (served.started * NS < begin - 1000) is head_start
        if served.copying:
            served.copy_head_start()
        link.send(5, size=1400)
        outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    first = 0 if head_start else count
    assert [n for n, _ in numbers(outcome)] == list(range(first, count + 5))


def test_a_head_start_counts_the_kernel_drops_of_its_window(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel drops packets between the request's arrival and its
    registration (the reader is kept from reading until its 32 MiB buffer
    overflows): the capture's `kernel_dropped` counts them, from the read
    mark its head start begins at."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 30.0)
    monkeypatch.setattr(reader, "HEAD_START_BYTES", 1 << 30)
    ring = link.ring(max_bytes=64 << 20)
    try:
        wait_for(lambda: ring._read_marks, timeout=10)
        arrived = time.monotonic()
        with ring.lock:  # the reader waits; the kernel's buffer fills, then drops
            link.send(RING_BUFFER_SIZE // 1000, size=1400)
        wait_for(lambda: ring.stats().kernel_dropped > 0, timeout=20)
        dropped = ring.stats().kernel_dropped
        served = ring.register(
            limits(timeout=0.3), fmt="pcap", bpf="", lookback=0, comments={}, arrived=arrived
        )
        assert served.copying  # the ring holds what came since the arrival
        served.copy_head_start()
        outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    assert outcome.packets > 0 and outcome.kernel_dropped >= dropped > 0


def test_a_lookback_with_a_head_start_delivers_the_seconds_asked(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lookback of all the ring's seconds, from a request that arrived a
    while before it registered: its start is not moved back past what the
    ring keeps, so the result's `lookback` is what was asked, not the ring's
    seconds less the head start."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 1.0)
    ring = link.ring(seconds=1)
    try:
        with sending(lambda: link.send(10, interval=0.001)):
            wait_for(lambda: ring.stats().evicted_age > 100, timeout=20)  # a full second held
            begin = time.time_ns()
            served = ring.register(
                limits(duration=0.2), fmt="pcap", bpf="", lookback=1, comments={},
                arrived=time.monotonic() - 0.3,
            )  # fmt: skip
            outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    assert outcome.started * NS >= begin - 1000, "no head start past the ring's seconds"
    # The oldest record held is within a packet gap (~1 ms) of the ring's
    # cutoff; moved back 0.3 s, the start read 0.7 here.
    # As asked, not 0.7 (the head start eating into it); the oldest record
    # held is as close to `since` as the sender's gaps were there.
    assert outcome.lookback is not None and 0.95 <= outcome.lookback <= 1.0
    got = numbers(outcome)
    assert [n for n, _ in got] == list(range(got[0][0], got[0][0] + len(got)))


def test_no_gap_and_no_duplicate_when_traffic_flows_through_a_head_start(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flood on the veth from a thread of this process while captures
    register, each with an arrival a few ms back: each file holds the
    sender's counters consecutively (no gap, no duplicate across the copy,
    the tail and the live part), from the first packet stamped at its start
    on (the one before is older)."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 0.1)  # the lock's wait under the flood
    monkeypatch.setattr(reader, "HEAD_START_BYTES", 4 << 20)
    ring = link.ring(max_bytes=8 << 20)
    problems: list[str] = []
    applied = 0
    try:
        with sending(lambda: link.send(100, size=64)):
            held(ring, 10_000)
            for trial in range(20):
                arrived = time.monotonic() - 0.003
                begin = time.time_ns()
                served = ring.register(
                    limits(packets=300, duration=10), fmt="pcap", bpf="", lookback=0,
                    comments={}, arrived=arrived,
                )  # fmt: skip
                applied += served.started * NS < begin - 1_000_000
                served.copy_head_start()
                outcome = served.finish(threading.Event())
                got = [n for n, _ in numbers(outcome)]
                if got != list(range(got[0], got[0] + 300)):
                    problems.append(f"{trial}: not consecutive, dropped {outcome.kernel_dropped}")
                before = [ts for n, ts in held_records(ring) if n == got[0] - 1]
                if before and before[0] >= int(outcome.started * NS) + 2000:
                    problems.append(f"{trial}: {got[0] - 1} stamped after its start, not in it")
    finally:
        ring.stop()
    assert not problems, problems
    assert applied >= 15, "most registrations had their head start"


def test_a_head_start_overwritten_before_its_copy_says_so(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunk a head start copies from is reused before the copy (its
    generation moved on): the result says those packets, which came after
    the request arrived, were lost, not that a lookback was."""
    monkeypatch.setattr(reader, "MAX_HEAD_START", 5.0)
    ring = link.ring()
    try:
        wait_for(lambda: ring._read_marks, timeout=10)
        arrived = time.monotonic()
        link.send(10)
        held(ring, 10)
        served = ring.register(
            limits(timeout=0.2), fmt="pcap", bpf="", lookback=0, comments={}, arrived=arrived
        )
        with ring.lock:  # as the writer does when it reuses a chunk
            ring.store._gens[served._spans[0].chunk] += 1
        served.copy_head_start()
        outcome = served.finish(threading.Event())
    finally:
        ring.stop()
    assert outcome.packets == 0
    (warning,) = [w for w in served.warnings if "overwritten" in w]
    assert (
        warning.startswith("up to 10 packets of the ring on ")
        and "after the request arrived" in warning
    )
    assert "lookback:" not in warning
