"""A ring capture starts when its request arrived (`head_start`), not when
it registered: on a veth pair between namespaces this test creates, packets
numbered by a counter in their UDP payload."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from pcapd.ring import MAX_HEAD_START, reader
from tests.helpers import needs_root
from tests.pcapd.ring.test_reader import Link, held, limits, linked, numbers

pytestmark = needs_root

GAP = 0.3  # s between the packets before the request's arrival and those after


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
