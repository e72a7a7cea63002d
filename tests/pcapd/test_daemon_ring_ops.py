"""A lookback ring as operations see it: `pcapd serve` in a namespace of a
veth pair this test creates, with a ring on the veth end and none on `lo`,
scraped over HTTP inside the namespace, listed and judged by `pcapd nodes`
(a subprocess) against a private redis-server; then the veth is deleted
under the running daemon, so the ring really fails."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pcapd.ring import chunk_layout
from tests.helpers import needs_root, netns, redis_server, veth_pair, wait_for
from tests.metrics_scrape import get, samples, value
from tests.pcapd.daemon_fixture import Daemon, Results

pytestmark = [needs_root, pytest.mark.timeout(240)]

SUBNET = 105  # this file's veth subnet: 10.200.105.0/24
PORT = 40_105  # what the captures want
FLOOD_PORT = 40_106  # what only the ring keeps
RING_BYTES = 4 * 1024 * 1024
FLOOD = 60_000  # 1400-byte packets: well past the ring handle's 32 MiB kernel buffer
WINDOW = 5  # s: the drop-counting captures outlast the stop and the flood (~1 s)


def answers(results: Results, request_id: str, count: int) -> list[dict[str, Any]]:
    """The next `count` result events about `request_id`."""
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(found) < count:
        event = results.next(max(0.1, deadline - time.monotonic()))
        if event.get("id") == request_id:
            found.append(event)
    return found


def nodes(server_url: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "nodes", "--redis-url", server_url, "--json", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout)


def agree(verdict: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """The daemon's events say what `--match` said: the same interfaces
    captured, the same ones rejected with the same words."""
    rejected = {e["interface"]: e["error"] for e in events if e["status"] == "rejected"}
    captured = sorted(e["interface"] for e in events if e["status"] != "rejected")
    assert rejected == verdict["rejected"], (verdict, events)
    assert captured == sorted(verdict["interfaces"]), (verdict, events)


def test_ring_health_metrics_heartbeat_and_match_follow_the_ring(tmp_path: Path) -> None:
    sock_path = tmp_path / "redis.sock"
    (tmp_path / "redis").mkdir()
    with (
        redis_server(tmp_path / "redis", unixsocket=sock_path) as server,
        veth_pair(subnet=SUBNET) as pair,
    ):
        mport = 9_105
        base = f"http://127.0.0.1:{mport}"
        wrap = ("ip", "netns", "exec", pair.ns_a)
        ring_iface = (
            f'[[interface]]\nname = "lo"\n\n[[interface]]\nname = "{pair.dev_a}"\n'
            f"lookback = 5\nlookback_bytes = {RING_BYTES}\n"
        )
        daemon = Daemon(
            server, tmp_path / "daemon", wrap=wrap, interfaces=ring_iface,
            extra_redis=f'url = "unix://{sock_path}"',
            extra_sections=f'[metrics]\nlisten = "127.0.0.1:{mport}"\n'
            "[fleet]\nheartbeat_interval = 1\n",
        )  # fmt: skip
        results = Results(server)
        with netns(pair.ns_b):
            out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        daemon.start()
        try:
            with out:
                _run(server.url, pair.dev_a, pair.ns_a, pair.addr_a, daemon, results, out, wrap,
                     base)  # fmt: skip
        finally:
            daemon.stop()
            results.close()


def _run(
    url: str,
    dev: str,
    ns: str,
    addr: str,
    daemon: Daemon,
    results: Results,
    out: socket.socket,
    wrap: tuple[str, ...],
    base: str,
) -> None:
    assert daemon.proc is not None
    wait_for(lambda: "event=ring_started" in daemon.log(), timeout=15)
    wait_for(lambda: get(base + "/healthz", wrap)[0] == 200, timeout=20)
    for _ in range(5):
        out.sendto(b"x" * 100, (addr, PORT))

    # Ready, with a check for the ring; its metrics from Ring.stats().
    code, body = get(base + "/readyz", wrap)
    assert code == 200, body
    assert json.loads(body)["checks"][f"ring:{dev}"] == {
        "ok": True, "detail": "reading its interface"}  # fmt: skip
    count, size = chunk_layout(RING_BYTES)
    wait_for(lambda: value(samples(base, wrap), "pcapd_ring_packets", interface=dev) >= 5)
    found = samples(base, wrap)
    assert value(found, "pcapd_ring_up", interface=dev) == 1
    assert value(found, "pcapd_ring_bytes", interface=dev) >= 5 * 112
    assert 0 <= value(found, "pcapd_ring_oldest_age_seconds", interface=dev) < 5
    assert value(found, "pcapd_ring_evicted_total", interface=dev, cause="overflow") == 0
    assert value(found, "pcapd_lookback_reserved_bytes") == count * size
    assert value(found, "pcapd_memory_reserved_bytes") == 0

    # The heartbeat carries each interface's lookback and ring, and the
    # ring's link type (the pool has no handle there).
    def beat() -> dict[str, Any]:
        listed = nodes(url)
        return {i["name"]: i for node in listed for i in node["interfaces"]}

    # lo's comes from the pool's spare handle, opened in the background, so
    # it may show a beat after the ring's.
    wait_for(lambda: {n: i.get("linktype") for n, i in beat().items()} == {"lo": 1, dev: 1},
             timeout=15)  # fmt: skip
    assert beat() == {
        "lo": {"name": "lo", "aliases": [], "linktype": 1, "present": True, "lookback": 0,
               "lookback_bytes": 0, "ring": False, "ring_error": None},
        dev: {"name": dev, "aliases": [], "linktype": 1, "present": True, "lookback": 5,
              "lookback_bytes": RING_BYTES, "ring": True, "ring_error": None},
    }  # fmt: skip

    # --match agrees with the daemon, interface by interface.
    bpf = f"udp and dst port {PORT}"
    # (timeout 1: what it holds is not the point, so it need not wait for more)
    both = {"node": "any", "interface": ["lo", dev], "lookback": 3, "packets": 2, "bpf": bpf,
            "timeout": 1, "id": "both"}  # fmt: skip
    (verdict,) = nodes(url, "--match", json.dumps(both))
    assert verdict["verdict"] == "capture" and verdict["interfaces"] == [dev], verdict
    assert verdict["rejected"] == {
        "lo": "lookback: interface 'lo' keeps no lookback ring (no [[interface]] lookback)"
    }
    daemon.publish(both)
    agree(verdict, answers(results, "both", 2))
    too_far = {"node": "any", "interface": dev, "lookback": 6, "bpf": bpf, "id": "too-far"}
    (verdict,) = nodes(url, "--match", json.dumps(too_far))
    error = f"lookback=6 exceeds what the ring on {dev} holds (interface[1].lookback=5)"
    assert (verdict["verdict"], verdict["error"]) == ("rejected", error), verdict
    daemon.publish(too_far)
    agree(verdict, answers(results, "too-far", 1))
    # The request's own ask, not a bound: counted as rejected.
    found = samples(base, wrap)
    assert value(found, "pcapd_requests_total", status="rejected") == 1
    assert ("pcapd_requests_total", frozenset({("source", "redis-pubsub:capture"),
                                               ("status", "refused")})) not in found  # fmt: skip

    # Two ring captures at once while the kernel drops on the ring's handle
    # (the daemon is stopped while a flood fills the handle's buffer): each
    # result reports the drops of its window, the counter counts them once.
    for rid in ("d1", "d2"):
        daemon.publish({"node": "testnode", "interface": dev, "bpf": bpf, "duration": WINDOW,
                        "timeout": WINDOW, "id": rid})  # fmt: skip
    wait_for(lambda: daemon.started("d1") and daemon.started("d2"), timeout=15)
    daemon.proc.send_signal(signal.SIGSTOP)
    try:
        chunk = b"f" * 1400
        for _ in range(FLOOD):
            out.sendto(chunk, (addr, FLOOD_PORT))
    finally:
        daemon.proc.send_signal(signal.SIGCONT)
    drops = [e["kernel_dropped"] for e in (results.for_id("d1", 30), results.for_id("d2", 30))]
    assert drops[0] > 0 and drops[0] == drops[1], drops
    found = samples(base, wrap)
    ring_drops = value(found, "pcapd_ring_kernel_dropped_total", interface=dev)
    assert ring_drops == drops[0]
    assert value(found, "pcapd_kernel_dropped_total") == ring_drops  # not twice

    # The veth goes away under the daemon: the ring fails, and everything says so.
    subprocess.run(["ip", "-n", ns, "link", "del", dev], check=True, timeout=30)
    wait_for(lambda: "event=ring_failed" in daemon.log(), timeout=20)
    code, body = get(base + "/readyz", wrap)
    assert code == 503, body
    check = json.loads(body)["checks"][f"ring:{dev}"]
    assert check["ok"] is False and check["detail"].startswith(f"lookback ring on {dev} failed: ")
    assert value(samples(base, wrap), "pcapd_ring_up", interface=dev) == 0
    wait_for(lambda: beat()[dev]["ring_error"] == check["detail"], timeout=15)
    live = {"node": "any", "interface": dev, "packets": 1, "id": "after"}
    (verdict,) = nodes(url, "--match", json.dumps(live))
    assert (verdict["verdict"], verdict["error"]) == ("rejected", check["detail"]), verdict
    daemon.publish(live)
    agree(verdict, answers(results, "after", 1))
    # Not the request's fault: refused; and the daemon serves on.
    assert value(samples(base, wrap), "pcapd_requests_total", status="refused") == 1
    assert daemon.proc.poll() is None
