"""The controller's shutdown in-process (a real redis-server, a ring on lo):
it returns only once every capture it ended is answered and settled, and
ring captures its rings' stop ends after it gave up waiting are stored
without waiting for their claims, off the ring's lock."""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from pathlib import Path

import pytest
import redis

import pcapd.dedup
from pcapd.controller import Controller
from pcapd.ring import Ring
from tests.helpers import RedisServer, free_port, logged, needs_root, redis_server, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from tests.pcapd.test_controller import Recorded, build, idle, request

ACK_ROUND_TRIP = 0.5  # s a durable source's ack takes here (XACK, an SQS delete)
# dedup.CLAIM_WAIT in these tests: far above what a loaded 2-core machine takes
# to store a capture, so "did not wait for the claims" cannot pass by chance.
CLAIM_WAIT = 60.0


class SlowAck(Recorded):
    """A delivery whose ack is a round trip to its source."""

    def _ack(self) -> None:
        time.sleep(ACK_ROUND_TRIP)
        super()._ack()


def test_shutdown_returns_once_an_empty_capture_it_ended_is_answered_and_acked(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path / "caps")
    got = SlowAck(request(free_port(), id="empty-at-stop", duration=30, timeout=30))
    ctl.handle(got.delivery)
    wait_for(ctl.capture_started.is_set)
    assert ctl.shutdown(timeout=10)
    assert got.acks == 1  # settled before shutdown said it was done
    event = results.for_id("empty-at-stop")
    assert (event["status"], event["stop"]) == ("empty", "shutdown")
    assert idle(ctl) and ctl.running() == 0


@needs_root
def test_ring_captures_ended_after_shutdown_gave_up_are_stored_without_waiting_for_claims(
    redis_srv: RedisServer, results: Results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dedup Redis (a second redis-server) hangs, so the capture's
    claims go unanswered; shutdown gives up at once and the ring's stop ends
    the capture: the stop returns at once (nothing waits under the ring's
    lock, which /metrics takes), and the capture is stored and acked well
    within dedup.CLAIM_WAIT (raised to 60 s here)."""
    monkeypatch.setattr(pcapd.dedup, "CLAIM_WAIT", CLAIM_WAIT)
    with contextlib.ExitStack() as stack:
        (tmp_path / "dedup").mkdir()
        stalled = stack.enter_context(redis_server(tmp_path / "dedup"))
        ring = Ring("lo", 5, 2 * 1024 * 1024, "udp")
        ring.start()
        stack.callback(ring.stop)
        dedup = redis.Redis(port=stalled.port, socket_timeout=30)
        ctl = build(redis_srv, tmp_path / "caps", dedup=dedup, rings={"lo": ring})
        stack.callback(ctl.publisher.stop, 5)
        assert stalled.proc is not None
        stalled.proc.send_signal(signal.SIGSTOP)
        stack.callback(stalled.proc.send_signal, signal.SIGCONT)
        late_ring_capture(ctl, ring, results)
    assert results.unclaimed() == []


def late_ring_capture(
    ctl: Controller, ring: Ring, results: Results, grace: float | None = None
) -> None:
    """A watched capture on `ring` still running when shutdown gives up at
    once (with `grace` left of the stop), ended by the ring's stop and stored
    by `settle_late`."""
    port = free_port()
    got = Recorded(request(port, id="late-ring", packets=100, duration=30, timeout=30))
    ctl.handle(got.delivery)
    wait_for(lambda: len(ctl.watcher) == 1)  # watched: no thread of its own
    send_udp(port, 2, 0.01)
    wait_for(lambda: ring.stats().packets >= 2)
    assert not ctl.shutdown(timeout=0.0, grace=grace)  # it runs still: not finished
    began = time.monotonic()
    ring.stop()
    stopped = time.monotonic() - began
    assert ctl.settle_late() == 1
    event = results.for_id("late-ring", timeout=CLAIM_WAIT)
    took = time.monotonic() - began
    assert stopped < CLAIM_WAIT / 4, f"Ring.stop took {stopped:.1f} s"
    assert took < CLAIM_WAIT / 4, f"stored {took:.1f} s after the ring's stop"
    assert (event["status"], event["packets"], event["stop"]) == ("ok", 2, "shutdown")
    assert Path(event["locations"]["local"]).exists()
    wait_for(lambda: got.acks == 1 and idle(ctl))


@needs_root
@pytest.mark.parametrize("grace", [None, 60.0])
def test_a_ring_capture_stored_past_the_grace_says_so(
    redis_srv: RedisServer,
    results: Results,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    grace: float | None,
) -> None:
    """Stored by `settle_late` once the grace is over (None: none was left
    past shutdown's wait), it is logged `shutdown_past_grace` as the queued
    uploads are, naming the capture; stored within it, it is not."""
    ring = Ring("lo", 5, 2 * 1024 * 1024, "udp")
    ring.start()
    ctl = build(redis_srv, tmp_path / "caps", rings={"lo": ring})
    try:
        with caplog.at_level(logging.WARNING, logger="pcapd"):
            late_ring_capture(ctl, ring, results, grace)
    finally:
        ring.stop()
        ctl.publisher.stop(5)
    said = logged(caplog, "shutdown_past_grace")
    late = {"captures": 1, "storing": "local disk", "id": "late-ring",
            "interface": "lo"}  # fmt: skip
    assert said == ([late] if grace is None else [])


def test_a_capture_handed_over_after_settle_late_runs_at_once(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    """Nothing would run it later: after `settle_late`, a hand-over (a
    watched ring capture's timed bound firing late, say) runs in its
    caller's thread; before it, it waits for `settle_late`."""
    ctl = build(redis_srv, tmp_path / "caps")
    assert ctl.shutdown(timeout=1.0)
    ran: list[str] = []
    ctl.on_capture_thread(ran.append, "before")
    assert ran == []  # the caller may hold a ring's lock: kept
    assert ctl.settle_late() == 1 and ran == ["before"]
    ctl.on_capture_thread(ran.append, "after")
    assert ran == ["before", "after"]
    assert ctl.settle_late() == 0
