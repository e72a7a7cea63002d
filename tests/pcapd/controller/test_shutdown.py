"""The controller's shutdown in-process (a real redis-server, a ring on lo):
it returns only once every capture it ended is answered and settled, and
ring captures its rings' stop ends after it gave up waiting are stored
without waiting for their claims, off the ring's lock."""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path

import redis

from pcapd.controller import Controller
from pcapd.ring import Ring
from tests.helpers import RedisServer, free_port, needs_root, redis_server, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from tests.pcapd.test_controller import Recorded, build, idle, request

ACK_ROUND_TRIP = 0.5  # s a durable source's ack takes here (XACK, an SQS delete)


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
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    """The dedup Redis (a second redis-server) hangs, so the capture's
    claims go unanswered; shutdown gives up at once and the ring's stop ends
    the capture: the stop returns at once (nothing waits under the ring's
    lock, which /metrics takes), and the capture is stored and acked well
    within dedup.CLAIM_WAIT (5 s)."""
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


def late_ring_capture(ctl: Controller, ring: Ring, results: Results) -> None:
    port = free_port()
    got = Recorded(request(port, id="late-ring", packets=100, duration=30, timeout=30))
    ctl.handle(got.delivery)
    wait_for(lambda: len(ctl.watcher) == 1)  # watched: no thread of its own
    send_udp(port, 2, 0.01)
    wait_for(lambda: ring.stats().packets >= 2)
    assert not ctl.shutdown(timeout=0.0)  # it runs still: not finished
    began = time.monotonic()
    ring.stop()
    stopped = time.monotonic() - began
    assert ctl.settle_late() == 1
    event = results.for_id("late-ring", timeout=20)
    took = time.monotonic() - began
    assert stopped < 1.0, f"Ring.stop took {stopped:.1f} s"
    assert took < 2.5, f"stored {took:.1f} s after the ring's stop"
    assert (event["status"], event["packets"], event["stop"]) == ("ok", 2, "shutdown")
    assert Path(event["locations"]["local"]).exists()
    wait_for(lambda: got.acks == 1 and idle(ctl))
