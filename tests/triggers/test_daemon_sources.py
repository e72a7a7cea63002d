"""Durable sources inside `pcapd serve`: a fleet on one Redis stream, SQS
redelivery after a crash, signed requests, duplicates, and a request storm."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import redis

from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request
from tests.triggers.conftest import REGION, TEST_KEY_ID, TEST_SECRET, MotoServer
from triggers.redis_stream import publish_stream

STREAM = 'stream_listen = true\nstream = "capture-requests"'


def groups(server: RedisServer) -> set[str]:
    try:
        return {g["name"].decode() for g in server.client().xinfo_groups("capture-requests")}
    except redis.ResponseError:  # no such key: nothing has created the stream yet
        return set()


def xadd(server: RedisServer, request: dict[str, object]) -> None:
    publish_stream(server.client(), "capture-requests", json.dumps(request).encode(), 1000)


def test_three_nodes_on_one_stream_nodere_matches_two(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    fleet = [
        Daemon(redis_srv, tmp_path / name, node=name, extra_redis=STREAM)
        for name in ("web1", "web2", "db1")
    ]
    try:
        for daemon in fleet:
            daemon.launch()  # side by side
        wait_for(lambda: all(d.subscribed() for d in fleet), timeout=30)
        wait_for(lambda: groups(redis_srv) == {"web1", "web2", "db1"})
        xadd(redis_srv, {"nodere": "^web[0-9]+$", "interface": "lo", "id": "fleet", "timeout": 1,
                         "bpf": f"udp port {free_port()}"})  # fmt: skip
        # db1 reads its group in order: once it answers this, it has passed "fleet".
        xadd(redis_srv, {"node": "db1", "interface": "lo", "id": "db1-after", "packets": "x"})
        first, second = results.for_id("fleet"), results.for_id("fleet")
        assert sorted([first["node"], second["node"]]) == ["web1", "web2"]
        after = results.for_id("db1-after")
        assert (after["node"], after["status"]) == ("db1", "rejected"), after
        assert results.unclaimed() == [], "db1 must stay silent"
        # Acked once stored: as the job settles, beside (not before) the
        # result the results thread publishes.
        client = redis_srv.client()
        wait_for(lambda: client.xpending("capture-requests", "web1")["pending"] == 0, timeout=10)
    finally:
        for daemon in fleet:
            daemon.stop()


def test_pending_entry_of_a_killed_daemon_is_captured_after_restart(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path, extra_redis=STREAM)
    daemon.start()
    wait_for(lambda: groups(redis_srv) == {"testnode"})
    port = free_port()
    xadd(redis_srv, udp_request(port, id="crash", packets=2, duration=30, timeout=30))
    wait_for(lambda: "event=capture_started id=crash" in daemon.log())
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.wait()
    assert redis_srv.client().xpending("capture-requests", "testnode")["pending"] == 1
    restarted = Daemon(redis_srv, tmp_path, extra_redis=STREAM)
    restarted.start()
    try:
        traffic(port, 3, ready=lambda: restarted.started("crash", times=2))
        event = results.for_id("crash", timeout=20)
        assert (event["status"], event["packets"]) == ("ok", 2)
        wait_for(
            lambda: redis_srv.client().xpending("capture-requests", "testnode")["pending"] == 0
        )
    finally:
        restarted.stop()


def sqs_section(moto: MotoServer, url: str) -> str:
    return f"""
[sqs]
listen = true
url = "{url}"
endpoint = "{moto.endpoint}"
region = "{REGION}"
accessid = "{TEST_KEY_ID}"
accesskey = "{TEST_SECRET}"
waitseconds = 1
visibility_timeout = 2
"""


def test_sqs_message_survives_a_daemon_killed_mid_capture(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_sqs: MotoServer
) -> None:
    url = moto_sqs.new_queue(visibility=2)
    config = sqs_section(moto_sqs, url)
    daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
    daemon.start()
    port = free_port()
    moto_sqs.client().send_message(
        QueueUrl=url, MessageBody=json.dumps(udp_request(port, id="sqs-1", packets=2, timeout=30))
    )
    wait_for(lambda: "event=capture_started id=sqs-1" in daemon.log(), timeout=15)
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.wait()

    def counts() -> tuple[int, int]:
        attrs = moto_sqs.client().get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attrs["ApproximateNumberOfMessages"]), int(
            attrs["ApproximateNumberOfMessagesNotVisible"]
        )

    assert sum(counts()) == 1  # still queued, not deleted before capture
    wait_for(lambda: counts() == (1, 0), timeout=10)  # visible again after the timeout
    restarted = Daemon(redis_srv, tmp_path, extra_sections=config)
    restarted.start()
    try:
        traffic(port, 3, ready=lambda: restarted.started("sqs-1", times=2))
        event = results.for_id("sqs-1", timeout=20)
        assert (event["status"], event["packets"]) == ("ok", 2)
        wait_for(lambda: counts() == (0, 0), timeout=10)  # deleted once stored
    finally:
        restarted.stop()


def test_sqs_with_only_pcapdaemons_keys_reads_the_queue_its_url_names(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_sqs: MotoServer
) -> None:
    """pcapdaemon's [sqs] has no endpoint: the queue URL (moto_server's) says where."""
    url = moto_sqs.new_queue()
    config = (
        f'[sqs]\nlisten = true\nregion = "{REGION}"\naccessid = "{TEST_KEY_ID}"\n'
        f'accesskey = "{TEST_SECRET}"\nurl = "{url}"\nwaitseconds = 1\nchunksize = 10\n'
    )
    daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
    daemon.start()
    try:
        port = free_port()
        moto_sqs.client().send_message(
            QueueUrl=url, MessageBody=json.dumps(udp_request(port, id="sqs-url", packets=2))
        )
        traffic(port, 3, ready=lambda: daemon.started("sqs-url"))
        event = results.for_id("sqs-url", timeout=20)
        assert (event["status"], event["packets"]) == ("ok", 2), event
    finally:
        daemon.stop()


def test_signed_requests_and_duplicates(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    from pcapd.core.secret import Secret
    from pcapd.signing import sign

    os.environ["PCAPD_TEST_KEY"] = "k3y-material"
    security = '[security]\nkeys = { ops = "env:PCAPD_TEST_KEY" }\nrequire_signed = true\n'
    daemon = Daemon(redis_srv, tmp_path, extra_sections=security)
    daemon.start()
    try:
        base = udp_request(free_port(), timeout=1)
        now = time.time()
        good = sign({**base, "id": "signed"}, "ops", Secret("k3y-material"), now)
        daemon.publish(good)
        assert results.for_id("signed")["status"] == "empty"
        daemon.publish(good)  # the same request again: a duplicate, not a second capture
        assert results.for_id("signed")["status"] == "duplicate"
        cases = {
            "unsigned": ({**base, "id": "unsigned"}, "sig: missing"),
            "forged": ({**sign({**base, "id": "forged"}, "ops", Secret("wrong"), now)},
                       "sig: does not match"),
            "stale": (sign({**base, "id": "stale"}, "ops", Secret("k3y-material"), now - 3600),
                      "s old; the limit is max_skew=300"),
        }  # fmt: skip
        for name, (request, reason) in cases.items():
            daemon.publish(request)
            event = results.for_id(name)
            assert event["status"] == "rejected" and reason in event["error"], event
        assert "k3y-material" not in daemon.log()
    finally:
        daemon.stop()
        del os.environ["PCAPD_TEST_KEY"]


def most_at_once(events: list[dict[str, str]]) -> int:
    """The most captures running at one instant, from their started/ended
    stamps (an end and a start in the same millisecond do not overlap: a
    slot is freed only after its capture ended)."""
    edges = sorted([(e["started"], 1) for e in events] + [(e["ended"], -1) for e in events],
                   key=lambda edge: (edge[0], edge[1]))  # fmt: skip
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_storm_of_requests_gets_one_result_each_within_bounds(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    """2,000 pub/sub requests in one burst: what exceeds the bounds is rejected
    with the reason. Stream requests meanwhile wait in the stream (the source
    reads only as many as there are free slots) and are all served."""
    daemon = Daemon(redis_srv, tmp_path, max_concurrent=4, max_memory=16 * 1024 * 1024,
                    extra_redis=STREAM)  # fmt: skip
    daemon.start()
    wait_for(lambda: groups(redis_srv) == {"testnode"})
    try:
        pipe = redis_srv.client().pipeline(transaction=False)
        streamed, published = 12, 2000
        # A port nothing sends to (tests run side by side send to port 9).
        bpf = f"udp port {free_port()}"
        for index in range(streamed + published):
            request = json.dumps(
                {"node": "testnode", "interface": "lo", "id": f"storm-{index}", "timeout": 1,
                 "bytes": 1_000_000, "bpf": bpf}
            )  # fmt: skip
            if index < streamed:
                pipe.xadd("capture-requests", {"body": request})
            else:
                pipe.publish("capture", request)
        pipe.execute()
        seen: dict[str, dict[str, str]] = {}
        while len(seen) < streamed + published:
            event = results.next(timeout=30)
            assert event["id"] not in seen, f"two results for {event['id']}"
            seen[event["id"]] = event
        rejected = [e for e in seen.values() if e["status"] == "rejected"]
        # How many 1 s captures fit while the burst is read depends on the
        # machine's load; that never more than 4 ran at once does not.
        assert len(rejected) >= published // 2
        assert {e["error"] for e in rejected} == {"max_concurrent=4 captures already running"}
        served = {i for i, e in seen.items() if e["status"] == "empty"}
        assert len(served) + len(rejected) == streamed + published
        assert most_at_once([seen[i] for i in served]) <= 4
        assert {f"storm-{i}" for i in range(streamed)} <= served
        assert daemon.proc is not None and daemon.proc.poll() is None
        status = Path(f"/proc/{daemon.proc.pid}/status").read_text()
        peak_kib = int(
            next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]
        )
        assert peak_kib < 200 * 1024, f"daemon peaked at {peak_kib} KiB"
    finally:
        daemon.stop()


def test_trigger_cli_signs_and_publishes_to_the_stream(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    import subprocess
    import sys

    security = '[security]\nkeys = { ops = "file:KEYFILE" }\nrequire_signed = true\n'
    keyfile = tmp_path / "ops.key"
    keyfile.write_text("cli-k3y\n")
    daemon = Daemon(redis_srv, tmp_path / "d", extra_redis=STREAM,
                    extra_sections=security.replace("KEYFILE", str(keyfile)))  # fmt: skip
    daemon.start()
    wait_for(lambda: groups(redis_srv) == {"testnode"})
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pcapd", "trigger", "-c", str(daemon.config_path),
             "--stream", "--kid", "ops", "--key", f"file:{keyfile}", "--node", "testnode",
             "-i", "lo", "--timeout", "1", "--wait", "15", "--count", "1",
             "udp", "port", str(free_port())],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "to stream 'capture-requests'" in done.stderr
        event = json.loads(done.stdout)
        assert event["status"] == "empty", event
        unsigned = subprocess.run(
            [sys.executable, "-m", "pcapd", "trigger", "-c", str(daemon.config_path),
             "--node", "testnode", "-i", "lo", "--wait", "10", "--count", "1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert json.loads(unsigned.stdout)["error"].startswith("sig: missing")
    finally:
        daemon.stop()
