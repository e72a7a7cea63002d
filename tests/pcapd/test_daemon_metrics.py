"""`pcapd serve` with `[metrics] listen`: scraped with a real HTTP client while
it captures on `lo`, rejects a bad request, fails an upload into the spool,
and while its (private) Redis goes away and comes back."""

from __future__ import annotations

import errno
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pcapd.core.config import DEFAULT_FLEET_PREFIX
from pcapd.core.metrics import HANDLER_TIMEOUT, MAX_HANDLERS
from pcapd.fleet import node_key
from tests.helpers import RedisServer, free_port, silent_server, wait_for
from tests.metrics_scrape import get, ready, samples, value
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request
from tests.uploaders.test_daemon_delivery import sections

SOURCE = "redis-pubsub:capture"


def metrics_section(port: int) -> str:
    return f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n'


def test_metrics_move_with_captures_rejections_and_failed_uploads(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with silent_server() as hung:
        s3 = sections(hung, "caps", tmp_path / "spool", None, "attempt_timeout = 0.5")
        daemon = Daemon(redis_srv, tmp_path, extra_sections=metrics_section(port) + s3)
        daemon.start()
        try:
            code, body = get(base + "/healthz")
            assert (code, json.loads(body)) == (200, {"alive": True})
            before = samples(base)
            assert value(before, "pcapd_memory_limit_bytes") == 64 * 1024 * 1024
            assert value(before, "pcapd_spool_entries") == 0
            assert value(before, "pcapd_source_connected", source=SOURCE) == 1

            # A bad request: counted as rejected, the daemon keeps serving.
            daemon.publish(b'{"node": "testnode", "interface": "lo", "packets": "many"}')
            wait_for(
                lambda: value(samples(base), "pcapd_requests_total", status="rejected") == 1,
                timeout=20,
            )

            # A capture on lo whose S3 upload fails: kept on disk and in the spool.
            udp = free_port()
            daemon.publish(udp_request(udp, id="m-1", packets=5))
            traffic(udp, 10, ready=lambda: daemon.started("m-1"))
            event = results.for_id("m-1", timeout=30)
            assert event["status"] == "spooled", event
            after = samples(base)
            assert value(after, "pcapd_requests_total", source=SOURCE, status="admitted") == 1
            assert value(after, "pcapd_captures_total", stop="packets") == 1
            assert value(after, "pcapd_packets_captured_total") == 5
            assert value(after, "pcapd_captured_bytes_total") == event["bytes"] > 0
            assert value(after, "pcapd_capture_duration_seconds_count") == 1
            assert value(after, "pcapd_trigger_latency_seconds_count") == 1
            # The upload and then the drainer's retries, each given up after 0.5 s.
            assert value(after, "pcapd_uploads_total", sink="s3", outcome="failed") >= 1
            assert value(after, "pcapd_uploads_total", sink="s3", outcome="ok") == 0
            assert value(after, "pcapd_uploads_total", sink="local", outcome="ok") == 1
            assert value(after, "pcapd_upload_duration_seconds_sum", sink="s3") >= 0.5
            assert value(after, "pcapd_spool_entries") == 1
            assert value(after, "pcapd_spool_bytes") >= event["bytes"]
            assert value(after, "pcapd_spool_oldest_age_seconds") >= 0
            assert value(after, "pcapd_memory_reserved_bytes") == 0  # stored: given back
            assert value(after, "pcapd_spare_handles", interface="lo") in (0, 1)
            assert value(after, "pcapd_results_dropped_total") == 0
        finally:
            daemon.stop()


def test_readyz_follows_redis_away_and_back(
    private_redis: RedisServer, results: Results, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(private_redis, tmp_path, extra_sections=metrics_section(port))
    daemon.start()
    try:
        wait_for(lambda: ready(base)[0] == 200, timeout=20)
        _, report = ready(base)
        assert report["ready"] is True
        assert set(report["checks"]) == {f"source:{SOURCE}", "redis", "disk:local"}
        private_redis.stop()
        wait_for(lambda: ready(base)[0] == 503, timeout=30)
        _, report = ready(base)
        assert report["ready"] is False
        assert report["checks"][f"source:{SOURCE}"]["ok"] is False
        assert report["checks"]["redis"]["ok"] is False
        assert "unreachable" in report["checks"]["redis"]["detail"]
        assert report["checks"]["disk:local"]["ok"] is True
        assert get(base + "/healthz")[0] == 200  # alive all the same
        private_redis.start()
        wait_for(lambda: ready(base)[0] == 200, timeout=40)
        reconnects = value(samples(base), "pcapd_source_reconnects_total", source=SOURCE)
        assert reconnects >= 1
    finally:
        daemon.stop()


def _serve(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "serve", "-c", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_bad_listen_address_names_the_field(redis_srv: RedisServer, tmp_path: Path) -> None:
    daemon = Daemon(redis_srv, tmp_path, extra_sections='\n[metrics]\nlisten = "localhost:x"\n')
    done = _serve(daemon.config_path)
    assert done.returncode == 2
    assert "metrics.listen: 'localhost:x' is not ADDRESS:PORT with a literal IP address" in (
        done.stderr
    )
    daemon = Daemon(redis_srv, tmp_path, extra_sections='\n[metrics]\nlisten = "127.0.0.1:0"\n')
    done = _serve(daemon.config_path)
    assert done.returncode == 2
    assert "metrics.listen: 127.0.0.1:0: port 0 is not a fixed port" in done.stderr


def test_a_port_in_use_names_the_field(redis_srv: RedisServer, tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        daemon = Daemon(redis_srv, tmp_path, extra_sections=metrics_section(port))
        done = _serve(daemon.config_path)
    assert done.returncode == 2
    output = done.stdout + done.stderr
    assert f"metrics.listen: cannot listen on 127.0.0.1:{port}: Address already in use" in output


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


IDLE_CONNECTIONS = 300


def connect_all(port: int, count: int, timeout: float = 30.0) -> list[socket.socket]:
    """`count` connections to `port` on loopback, opened at once (non-blocking).

    One by one, each connect that meets the listener's full backlog waits a
    1 s SYN retransmit; opened together, those retransmits overlap."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket()
            socks.append(sock)
            sock.setblocking(False)
            assert sock.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS)
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                selector.register(sock, selectors.EVENT_WRITE)
            deadline = time.monotonic() + timeout
            while selector.get_map():
                ready = selector.select(max(0.0, deadline - time.monotonic()))
                assert ready, f"{len(selector.get_map())} of {count} connects still pending"
                for key, _ in ready:
                    sock = key.fileobj  # type: ignore[assignment]
                    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert error == 0, os.strerror(error)
                    selector.unregister(sock)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def test_idle_connections_neither_pile_up_threads_nor_stop_scrapes(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(redis_srv, tmp_path, extra_sections=metrics_section(port))
    daemon.start()
    assert daemon.proc is not None
    idle: list[socket.socket] = []
    try:
        wait_for(lambda: get(base + "/healthz")[0] == 200, timeout=20)
        before = _threads(daemon.proc.pid)
        idle = connect_all(port, IDLE_CONNECTIONS)
        time.sleep(1.0)  # the listener accepts them all meanwhile
        # At most MAX_HANDLERS of them hold a thread; the rest were closed.
        assert _threads(daemon.proc.pid) <= before + MAX_HANDLERS
        # Once the held ones time out (HANDLER_TIMEOUT), scrapes answer again,
        # while all of them are still open on this side.

        def scraped() -> bool:
            try:
                return get(base + "/metrics")[0] == 200
            except OSError:
                return False

        wait_for(scraped, timeout=HANDLER_TIMEOUT * 4, interval=0.2)
        pid = daemon.proc.pid
        wait_for(lambda: _threads(pid) <= before + 1, timeout=HANDLER_TIMEOUT * 4)
    finally:
        for sock in idle:
            sock.close()
        daemon.stop()


def test_a_removed_spool_directory_leaves_the_node_listed_and_metrics_served(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spool = tmp_path / "spool"
    with silent_server() as hung:
        s3 = sections(hung, "caps", spool, None, "attempt_timeout = 0.5")
        daemon = Daemon(
            redis_srv, tmp_path / "d",
            extra_sections=metrics_section(port) + s3 + "\n[fleet]\nheartbeat_interval = 1\n",
        )  # fmt: skip
        daemon.start()
        try:
            key = node_key(DEFAULT_FLEET_PREFIX, "testnode")
            client = redis_srv.client()
            wait_for(lambda: client.exists(key) == 1, timeout=20)
            assert value(samples(base), "pcapd_spool_entries") == 0
            shutil.rmtree(spool)
            removed = time.time()
            # The beat goes on (a partial one, logged once), Redis is not blamed.
            wait_for(lambda: float(client.hget(key, "last_seen") or 0) > removed + 1, timeout=20)
            wait_for(lambda: "event=heartbeat_partial" in daemon.log(), timeout=10)
            code, text = get(base + "/metrics")
            assert code == 200, text
            found = samples(base)
            assert value(found, "pcapd_memory_limit_bytes") == 64 * 1024 * 1024
            assert ("pcapd_spool_entries", frozenset()) not in found
            assert "event=metrics_partial part=spool" in daemon.log()
            assert "event=heartbeat_failed" not in daemon.log()
            assert daemon.log().count("event=heartbeat_partial") == 1
            # Still serving: a bad request is answered and counted.
            daemon.publish(b'{"node": "testnode", "interface": "lo", "packets": "many"}')
            wait_for(
                lambda: value(samples(base), "pcapd_requests_total", status="rejected") == 1,
                timeout=20,
            )
        finally:
            daemon.stop()


OTHERS = 1_500  # requests for another node in one burst, 4 KB each: ~6 MB
OTHER_PAD = 3_900  # each body stays under the 4096 bytes a refused one is read for


def test_an_overflowing_burst_for_another_node_is_ignored_not_overloaded(
    private_redis: RedisServer, results: Results, tmp_path: Path
) -> None:
    """Requests for another node that the full pub/sub queue refuses unread
    stay silent and count as `ignored`, as they would have read."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = Daemon(
        private_redis, tmp_path, extra_sections=metrics_section(port),
        extra_redis=f"pubsub_queue_bytes = {1024 * 1024}",  # the least: ~240 of them
        extra_general="logrequests = true",  # each body logged: handled slower than read
    )  # fmt: skip
    daemon.start()
    assert daemon.proc is not None
    client = private_redis.client()
    # The burst waits in Redis for the stopped daemon, all of it.
    client.config_set("client-output-buffer-limit", "pubsub 0 0 0")
    try:
        wait_for(lambda: get(base + "/healthz")[0] == 200, timeout=20)
        daemon.signal(signal.SIGSTOP)
        try:
            pipe = client.pipeline(transaction=False)
            for index in range(OTHERS):
                body = {"node": "othernode", "interface": "lo", "id": f"other-{index}",
                        "pad": "x" * OTHER_PAD}  # fmt: skip
                pipe.publish("capture", json.dumps(body))
            pipe.execute()
        finally:
            daemon.signal(signal.SIGCONT)
        # Read off the socket faster than handled: the queue overflowed.
        wait_for(lambda: "event=requests_overloaded" in daemon.log(), timeout=30, interval=0.5)

        def counts() -> dict[str, float]:
            found = samples(base)
            return {s: value(found, "pcapd_requests_total", source=SOURCE, status=s)
                    for s in ("ignored", "overloaded")}  # fmt: skip

        wait_for(lambda: sum(counts().values()) == OTHERS, timeout=60)
        assert counts() == {"ignored": OTHERS, "overloaded": 0}
        # Still serving, and what it answered was only this node's request.
        daemon.publish(b'{"node": "testnode", "interface": "lo", "packets": "many", "id": "mine"}')
        assert results.next(timeout=20)["id"] == "mine"
        assert results.events.empty()
    finally:
        daemon.stop()
