"""`pcapd serve` end to end: a real redis-server, captures on `lo`, files on disk."""

from __future__ import annotations

import functools
import hashlib
import json
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RedisServer, free_port, run, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.engine.test_capture import send_udp


@pytest.fixture
def daemon(redis_srv: RedisServer, tmp_path: Path) -> Iterator[Daemon]:
    proc = Daemon(redis_srv, tmp_path)
    proc.start()
    yield proc
    proc.stop()


def udp_request(port: int, **fields: Any) -> dict[str, Any]:
    request = {"node": "testnode", "interface": ["lo"], "bpf": f"udp and dst port {port}"}
    request.update(fields)
    return request


def traffic(
    port: int,
    count: int,
    interval: float = 0.01,
    delay: float = 0.0,
    ready: Callable[[], bool] | None = None,
) -> None:
    """Send `count` datagrams from a thread, once `ready()` says the capture runs."""

    def go() -> None:
        if ready is not None:
            wait_for(ready, timeout=20)
        time.sleep(delay)
        send_udp(port, count, interval)

    threading.Thread(target=go, daemon=True).start()


def test_request_captures_to_local_disk_with_sidecar(
    daemon: Daemon, results: Results, redis_srv: RedisServer
) -> None:
    port = free_port()
    daemon.publish(udp_request(port, id="req-1", packets=5, alertid=655443, tags="x,y"))
    traffic(port, 10, ready=lambda: daemon.started("req-1"))
    event = results.for_id("req-1")
    assert event["status"] == "ok", event
    assert (event["stop"], event["packets"], event["node"], event["interface"]) == (
        "packets", 5, "testnode", "lo",
    )  # fmt: skip
    assert event["alertid"] == 655443 and event["format"] == "pcap"
    path = Path(event["locations"]["local"])
    assert path.parent == daemon.localdir
    assert path.name.startswith("testnode_lo_") and path.name.endswith("_req-1.pcap")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    data = path.read_bytes()
    assert len(data) == event["bytes"]
    assert hashlib.sha256(data).hexdigest() == event["sha256"]
    # The sidecar is written before the event is sent, so before it has its event_id.
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert sidecar["event_id"] is None and isinstance(event["event_id"], str)
    assert {**sidecar, "event_id": event["event_id"]} == event
    count = run("capinfos", "-c", "-T", "-m", str(path)).stdout.splitlines()[1].split(",")[1]
    assert count == "5"
    stream: Any = redis_srv.client().xrange("capture-results")
    assert [json.loads(fields[b"event"]) for _, fields in stream] == [event]


def test_zero_packets_is_empty_and_writes_nothing(daemon: Daemon, results: Results) -> None:
    daemon.publish(udp_request(free_port(), id="quiet", timeout=1))
    event = results.for_id("quiet")
    assert (event["status"], event["stop"], event["packets"]) == ("empty", "timeout", 0)
    assert event["locations"] == {} and not list(daemon.localdir.glob("*quiet*"))


def lo(**fields: Any) -> dict[str, Any]:
    return {"node": "testnode", "interface": "lo", **fields}


BAD_MESSAGES: list[tuple[bytes | dict[str, Any], str]] = [
    (b"not json", "request is not valid JSON"),
    (b"[1, 2]", "request must be a JSON object, got list"),
    (b'"capture"', "request must be a JSON object, got str"),
    ({"node": "testnode"}, "exactly one of interface and alias is required"),
    ({"interface": ["lo"]}, "exactly one of node and nodere is required"),
    ({"node": "testnode", "nodere": "test", "interface": "lo"}, "node and nodere are exclusive"),
    (lo(alias="local"),
     "interface and alias are exclusive"),
    ({"node": "testnode", "interface": ["nosuch0"]},
     "interface: none of ['nosuch0'] exists on this node"),
    ({"node": "testnode", "interface": ["../../etc/passwd"]}, "is not a valid name"),
    ({"node": "testnode", "interface": ["lo", "a/b"]}, 'interface: "a/b" is not a valid name'),
    ({"node": "testnode", "interface": ["lo", "lo\x07"]},
     'interface: "lo\\u0007" is not a valid name'),
    ({"node": "testnode", "alias": ["ghost"]},
     "alias: none of ['ghost'] exists on this node (interface 'ghost0': no such device"),
    ({"node": "testnode", "alias": ["nope"]}, "alias 'nope': not configured on this node"),
    (lo(bpf="port nonsense"),
     "bpf: 'port nonsense' does not compile for lo (link type 1)"),
    (lo(packets=5000), "packets=5000 exceeds maxpackets=1000"),
    (lo(bytes=10**9),
     "bytes=1000000000 exceeds maxbytes=10000000"),
    (lo(duration=31), "duration=31 exceeds maxduration=30"),
    (lo(timeout=31), "timeout=31 exceeds maxtimeout=30"),
    (lo(snap=-1), "snap=-1: must be positive"),
    (lo(packets=0), "packets=0: must be positive"),
    (lo(duration=-5), "duration=-5: must be positive"),
    (lo(packets=10**30),
     f"packets={10**30} exceeds maxpackets=1000"),
    (lo(packets="10"),
     'packets: expected a JSON integer, got "10"'),
    (lo(timeout=1.5), "timeout: expected a JSON integer, got 1.5"),
    (lo(snap=True), "snap: expected a JSON integer, got true"),
    (lo(bpf=5), "bpf: expected a string, got 5"),
    ({"nodere": "(", "interface": "lo"}, "nodere: '(' is not a valid regular expression"),
    (lo(pad="x" * (1 << 20)),
     "bytes; the limit is 65536 (general.max_request_bytes)"),
]  # fmt: skip


def test_every_bad_message_is_rejected_precisely_and_the_daemon_keeps_serving(
    daemon: Daemon, results: Results
) -> None:
    for message, expected in BAD_MESSAGES:
        daemon.publish(message)
        event = results.next()
        assert event["status"] == "rejected", (message, event)
        assert expected in event["error"], (expected, event["error"])
        assert event["node"] == "testnode"
    # A pathological regex costs nothing (RE2 is linear) and is simply no match.
    daemon.publish({"nodere": "(x+x+)+y" * 3, "interface": "lo", "id": "redos"})
    port = free_port()
    daemon.publish(udp_request(port, id="after-bad", packets=2))
    traffic(port, 5, ready=lambda: daemon.started("after-bad"))
    event = results.next()
    assert (event["id"], event["status"]) == ("after-bad", "ok")
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_request_for_another_node_is_silent(daemon: Daemon, results: Results) -> None:
    daemon.publish({"node": "othernode", "interface": "lo", "id": "not-mine"})
    daemon.publish({"nodere": "^web[0-9]+$", "interface": "lo", "id": "not-mine-re"})
    # A filter nothing sends to: other loopback traffic must not keep it open.
    nothing = f"udp and dst port {free_port()}"
    daemon.publish({"nodere": "stnod", "interface": "lo", "id": "mine-re", "timeout": 1,
                    "bpf": nothing})  # fmt: skip
    assert results.next()["id"] == "mine-re"
    assert results.events.empty()


def test_missing_interfaces_are_skipped_with_warnings_and_unknown_fields_listed(
    daemon: Daemon, results: Results
) -> None:
    daemon.publish(
        # a name too long for Linux is lacking here like eth9, not a refusal
        {"node": "any", "interface": ["eth9", "enp0s31f6-longname20", "lo"], "id": "skip",
         "timeout": 1,
         "color": "blue", "bpf": f"udp and dst port {free_port()}"}
    )  # fmt: skip
    event = results.for_id("skip")
    assert event["interface"] == "lo" and event["status"] == "empty"
    assert "interface 'eth9': no such device on this node" in event["warnings"]
    assert "interface 'enp0s31f6-longname20': no such device on this node" in event["warnings"]
    assert "color: unknown field, ignored" in event["warnings"]


def test_packetdebug_logs_one_line_per_packet(daemon: Daemon, results: Results) -> None:
    port = free_port()
    daemon.publish(udp_request(port, id="dbg", packets=3, packetdebug=True))
    traffic(port, 3, ready=lambda: daemon.started("dbg"))
    assert results.for_id("dbg")["packets"] == 3
    lines = [line for line in daemon.log().splitlines() if "event=packet " in line]
    assert len(lines) == 3
    assert all(f"dport={port}" in line and "src=127.0.0.1" in line for line in lines)


def test_reply_to_and_pcapng_with_request_comments(
    daemon: Daemon, results: Results, redis_srv: RedisServer
) -> None:
    reply = Results(redis_srv, channel="my-replies")
    try:
        port = free_port()
        daemon.publish(
            udp_request(port, id="ng", packets=4, format="pcapng", reply_to="my-replies",
                        alertid=7, tags="alpha,beta")
        )  # fmt: skip
        traffic(port, 4, ready=lambda: daemon.started("ng"))
        event = reply.for_id("ng")
        assert event == results.for_id("ng")
    finally:
        reply.close()
    path = event["locations"]["local"]
    comments = run("capinfos", "-k", path).stdout
    for comment in ("request_id=ng", "alertid=7", "node=testnode", "tags=alpha,beta"):
        assert comment in comments
    packets = run("tshark", "-r", path, "-T", "fields", "-e", "udp.dstport").stdout.split()
    assert packets == [str(port)] * 4


def test_two_captures_at_once_on_one_interface(daemon: Daemon, results: Results) -> None:
    port = free_port()
    daemon.publish(udp_request(port, id="twin-a", packets=6))
    daemon.publish(udp_request(port, id="twin-b", packets=6))
    traffic(port, 6, ready=lambda: daemon.started("twin-a") and daemon.started("twin-b"))
    got = {results.next()["id"]: None, results.next()["id"]: None}
    assert set(got) == {"twin-a", "twin-b"}
    for name in ("twin-a", "twin-b"):
        files = list(daemon.localdir.glob(f"*_{name}.pcap"))
        assert len(files) == 1
        count = run("capinfos", "-c", "-T", "-m", str(files[0])).stdout.splitlines()[1]
        assert count.split(",")[1] == "6"


def test_bounds_reject_with_the_reason_never_queue(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    proc = Daemon(redis_srv, tmp_path, max_concurrent=2, max_memory=16 * 1024 * 1024)
    proc.start()
    try:
        port = free_port()
        for name in ("slot-1", "slot-2", "slot-3"):
            proc.publish(udp_request(port, id=name, bytes=1_000_000, timeout=3))
        third = results.for_id("slot-3")
        assert third["status"] == "rejected"
        assert third["error"] == "max_concurrent=2 captures already running"
        for name in ("slot-1", "slot-2"):
            assert results.for_id(name)["status"] == "empty"
        proc.publish(udp_request(port, id="mem-1", bytes=10_000_000, timeout=2))
        proc.publish(udp_request(port, id="mem-2", bytes=10_000_000, timeout=2))
        second = results.for_id("mem-2")
        assert second["status"] == "rejected"
        assert second["error"] == (
            "bytes=10000000 does not fit: 10000000 of max_memory=16777216 held by "
            "captures running or awaiting upload"
        )
        assert results.for_id("mem-1")["status"] == "empty"
    finally:
        proc.stop()


def test_sigterm_ends_running_capture_writes_it_and_exits_zero(
    daemon: Daemon, results: Results
) -> None:
    port = free_port()
    daemon.publish(udp_request(port, id="long", duration=30, timeout=30))
    traffic(port, 3, ready=lambda: daemon.started("long"))
    time.sleep(1.0)
    daemon.signal()
    event = results.for_id("long")
    assert (event["status"], event["stop"], event["packets"]) == ("ok", "shutdown", 3)
    data = Path(event["locations"]["local"]).read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (event["bytes"], event["sha256"])
    assert daemon.wait() == 0
    assert "event=stopped clean=true" in daemon.log()


def test_second_sigterm_exits_at_once(
    daemon: Daemon, results: Results, private_redis: RedisServer
) -> None:
    daemon.publish(udp_request(free_port(), id="long2", duration=30, timeout=30))
    wait_for(lambda: "event=capture_started" in daemon.log())
    # A frozen Redis makes the warm stop hang on publishing the result, as a
    # partitioned network would; the second signal must not wait for it.
    assert private_redis.proc is not None
    private_redis.proc.send_signal(signal.SIGSTOP)
    try:
        daemon.signal()
        wait_for(lambda: "event=shutdown_requested" in daemon.log())
        time.sleep(0.3)
        assert daemon.proc is not None and daemon.proc.poll() is None
        daemon.signal()
        assert daemon.wait(5) == 1
    finally:
        private_redis.proc.send_signal(signal.SIGCONT)
    assert "event=exit_now" in daemon.log()


def test_redis_restart_resubscribes_and_serves_the_next_request(
    daemon: Daemon, results: Results, private_redis: RedisServer
) -> None:
    private_redis.stop()
    time.sleep(2.0)  # long enough for redis-py's own reconnect attempts to give up
    private_redis.start()
    wait_for(daemon.subscribed, timeout=20)
    port = free_port()
    daemon.publish(udp_request(port, id="after-restart", packets=2))
    traffic(port, 4, ready=lambda: daemon.started("after-restart"))
    assert results.for_id("after-restart", timeout=15)["status"] == "ok"
    assert "event=redis_unavailable" in daemon.log()


def test_trigger_cli_waits_for_its_result(daemon: Daemon, redis_srv: RedisServer) -> None:
    port = free_port()
    traffic(port, 5, ready=lambda: "event=capture_started" in daemon.log())
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "trigger", "--redis-url", redis_srv.url,
         "--node", "testnode", "-i", "lo", "--packets", "3", "--wait", "15", "--count", "1",
         "udp", "and", "dst", "port", str(port)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    assert (event["status"], event["packets"], event["stop"]) == ("ok", 3, "packets")


def test_config_errors_stop_serve_with_every_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[general]\nmaxpackets = "lots"\nformat = "cap"\n[redis]\nport = 70000\n')
    done = subprocess.run([sys.executable, "-m", "pcapd", "serve", "-c", str(bad)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    # Every problem at once, each naming its field, value and rule; nothing
    # else (no traceback, no sign of the daemon starting).
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"{bad}: error: general.maxpackets: expected an integer, got 'lots'",
        f"{bad}: error: general.format: expected one of pcap, pcapng, got 'cap'",
        f"{bad}: error: redis.port: must be at least 1 and at most 65535, got 70000",
    ]


def test_serve_without_a_config_file_says_none_was_given() -> None:
    """`pcapd serve` with no -c runs on the defaults, which enable no
    destination: the error says that no file was given, not only what is off."""
    done = subprocess.run([sys.executable, "-m", "pcapd", "serve"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert (done.returncode, done.stdout) == (2, "")
    [line] = done.stderr.splitlines()
    assert line.endswith(
        ' level=error event=config_error path=null error="general.writelocal, s3.upload, '
        "cloudshark.upload: at least one destination must be enabled; no config file was "
        'given (-c FILE)"'
    ), line


def test_any_clean_alias_selects_its_interface_and_a_mixed_list_captures_once(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    """A pcapdaemon config's alias "public facing" loads with no warning; a
    request naming it beside "local" (both on lo) captures on lo once, as
    pcapdaemon did; one naming an alias no interface has is refused."""
    interfaces = '[[interface]]\nname = "lo"\nalias = ["local", "public facing"]\n'
    proc = Daemon(redis_srv, tmp_path, interfaces=interfaces)
    proc.start()
    try:
        assert "config_warning" not in proc.log()
        port = free_port()
        request = udp_request(port, id="mixed", packets=2, interface=None)
        proc.publish({**request, "node": "any", "alias": ["local", "public facing"]})
        traffic(port, 5, ready=functools.partial(proc.started, "mixed"))
        event = results.for_id("mixed")
        assert (event["status"], event["interface"], event["warnings"]) == ("ok", "lo", []), event
        proc.publish({"node": "testnode", "alias": ["public  facing"], "id": "odd"})
        event = results.for_id("odd")
        assert (event["status"], event["error"]) == ("rejected", (
            "alias: none of ['public  facing'] exists on this node (alias 'public  facing': "
            "not configured on this node)"
        ))  # fmt: skip
        # One event per (request, interface): lo was not captured twice.
        assert [e for e in results.unclaimed() if e.get("id") == "mixed"] == []
    finally:
        proc.stop()


def test_results_cli_replays_the_stream_and_follows_the_channel(
    daemon: Daemon, results: Results, redis_srv: RedisServer
) -> None:
    daemon.publish(udp_request(free_port(), id="past", timeout=1))
    results.for_id("past")
    replay = subprocess.run(
        [sys.executable, "-m", "pcapd", "results", "--redis-url", redis_srv.url, "--stream",
         "--from-start", "--count", "1", "--timeout", "10"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["id"] == "past"
    follower = subprocess.Popen(
        [sys.executable, "-m", "pcapd", "results", "--redis-url", redis_srv.url,
         "--count", "1", "--timeout", "20"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: redis_srv.client().pubsub_numsub("capture-results")[0][1] >= 2)
    daemon.publish(udp_request(free_port(), id="live", timeout=1))
    out, _ = follower.communicate(timeout=30)
    assert json.loads(out)["id"] == "live"
