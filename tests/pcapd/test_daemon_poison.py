"""`pcapd serve` as a real process, fed issue 9's poisonous requests over pub/sub
and a Redis stream: each is rejected with its reason, the process keeps serving
(it used to abort in pypcap), and a stream entry does not come back to kill
the next start."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import RedisServer, free_port
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request
from tests.triggers.test_daemon_sources import STREAM
from triggers.redis_stream import publish_stream

POISON_BPF = b'{"id":"poison","node":"any","interface":"lo","bpf":"\\ud800"}'
POISON_ERROR = 'bpf: "\\ud800" holds U+D800 at character 0; a filter is printable ASCII'


def captures_after(daemon: Daemon, results: Results, request_id: str) -> None:
    """A good request is still captured: the process is alive and serving."""
    port = free_port()
    daemon.publish(udp_request(port, id=request_id, packets=3))
    traffic(port, 10, ready=lambda: daemon.started(request_id))
    event = results.for_id(request_id, timeout=20)
    assert (event["status"], event["packets"]) == ("ok", 3), event


def test_poisonous_requests_over_pubsub_leave_the_daemon_serving(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path, extra_general="max_request_bytes = 2048")
    daemon.start()
    try:
        daemon.publish(POISON_BPF)
        event = results.for_id("poison")
        assert (event["status"], event["error"]) == ("rejected", POISON_ERROR)
        daemon.publish(b'{"node":"any","interface":"lo","x":"' + b"y" * 3000 + b'"}')
        event = results.next()
        assert event["status"] == "rejected"
        assert event["error"].endswith("bytes; the limit is 2048 (general.max_request_bytes)")
        captures_after(daemon, results, "after-poison")
        assert daemon.proc is not None and daemon.proc.poll() is None
    finally:
        daemon.stop()
    assert "Traceback" not in daemon.log()


def test_poisonous_stream_entry_is_acked_and_does_not_kill_the_next_start(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path, extra_redis=STREAM)
    publish_stream(redis_srv.client(), "capture-requests", POISON_BPF, 1000)
    daemon.start()
    try:
        event = results.for_id("poison")
        assert (event["status"], event["error"]) == ("rejected", POISON_ERROR)
        captures_after(daemon, results, "first-run")
    finally:
        daemon.stop()
    again = Daemon(redis_srv, tmp_path / "again", extra_redis=STREAM)
    again.start()
    try:
        captures_after(again, results, "second-run")
        # The poison was acked in the first run: not delivered again.
        assert "id=poison " not in again.log()
        assert redis_srv.client().xpending("capture-requests", "testnode")["pending"] == 0
    finally:
        again.stop()
