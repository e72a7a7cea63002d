"""A request on a ring interface is captured from when its source had it
(`Delivery.received`), through the controller in-process (a ring on lo, a
real redis-server): the packets that came while it was parsed and admitted
are in its file; a request that waited longer than MAX_HEAD_START starts
at its registration."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from pcapd.ring import Ring, reader
from tests.helpers import RedisServer, free_port, needs_root, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from tests.pcapd.test_controller import Recorded, build, idle, request

pytestmark = needs_root

WAITED = 0.3  # s between the request's arrival and its handling here


def handle_late(
    redis_srv: RedisServer, results: Results, tmp_path: Path, request_id: str
) -> dict[str, object]:
    """3 packets to the request's port after it arrived and before it is
    handled, 2 after: its result event. The ring keeps only that port: a
    head start begins at a read mark from before the arrival, and on a busy
    lo (everyone's traffic) the ring's last READ_MARKS reads would not reach
    WAITED back."""
    port = free_port()
    lo_ring = Ring("lo", 5, 2 * 1024 * 1024, f"udp and dst port {port}")
    lo_ring.start()
    try:
        wait_for(lambda: lo_ring._read_marks, timeout=10)  # a read before the arrival
        ctl = build(redis_srv, tmp_path / "caps", rings={"lo": lo_ring})
        try:
            got = Recorded(request(port, id=request_id, packets=5, timeout=1))
            delivery = dataclasses.replace(got.delivery, received=time.monotonic())
            send_udp(port, 3)
            # Read by the ring, so stamped: a loaded machine's loopback can
            # deliver (and stamp) them late, after the registration.
            wait_for(lambda: lo_ring.stats().packets >= 3, timeout=10)
            time.sleep(WAITED)
            ctl.handle(delivery)
            send_udp(port, 2)
            event = results.for_id(request_id)
            wait_for(lambda: got.acks == 1 and idle(ctl), timeout=20)
            return event
        finally:
            ctl.shutdown(5)
            ctl.publisher.stop(5)
    finally:
        lo_ring.stop()


def test_packets_since_the_request_arrived_are_in_its_file(
    redis_srv: RedisServer, results: Results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reader, "MAX_HEAD_START", WAITED * 10)
    # Reads are remembered READ_MARKS at a time, one per READ_WAIT on an idle
    # ring (1.6 s): a loaded machine's wait for the 3 packets outlasted them,
    # leaving no read from before the arrival to start at.
    monkeypatch.setattr(reader, "READ_MARKS", 1000)
    event = handle_late(redis_srv, results, tmp_path, "early")
    assert (event["status"], event["packets"], event["stop"]) == ("ok", 5, "packets")
    assert event["lookback"] is None


def test_a_request_that_waited_past_the_bound_starts_at_its_registration(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    assert WAITED > reader.MAX_HEAD_START
    event = handle_late(redis_srv, results, tmp_path, "late")
    assert (event["status"], event["packets"], event["stop"]) == ("ok", 2, "timeout")
