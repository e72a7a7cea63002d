"""`pcapd serve` with a lookback ring, inside a namespace of a veth pair this
test creates, against a private redis-server (its unix socket reaches into
the namespace); requests sent with `pcapd trigger` and raw PUBLISH."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt
import pytest

from tests.helpers import (
    RedisServer,
    VethPair,
    free_port,
    needs_root,
    netns,
    redis_server,
    veth_pair,
    wait_for,
)
from tests.metrics_scrape import get, samples, value
from tests.pcapd.daemon_fixture import Daemon, Results

pytestmark = [needs_root, pytest.mark.timeout(180)]

PORT = 40_081
RING_BYTES = 32 * 1024 * 1024
MAX_MEMORY = 48 * 1024 * 1024
RING = """
[[interface]]
name = "{dev}"
alias = ["ringed"]
lookback = 5
lookback_bytes = {ring_bytes}
lookback_bpf = "udp"
"""


@dataclass
class Site:
    server: RedisServer
    pair: VethPair
    daemon: Daemon
    results: Results
    sock: socket.socket
    sent: int = 0

    def send(self, count: int) -> None:
        for _ in range(count):
            body = struct.pack("!I", self.sent).ljust(100, b"x")
            self.sock.sendto(body, (self.pair.addr_a, PORT))
            self.sent += 1

    def request(self, **fields: Any) -> dict[str, Any]:
        return {"node": "testnode", "interface": self.pair.dev_a,
                "bpf": f"udp and dst port {PORT}", **fields}  # fmt: skip

    def trigger(self, *args: str) -> list[dict[str, Any]]:
        """`pcapd trigger ... --wait`: the result events it prints."""
        done = subprocess.run(
            [sys.executable, "-m", "pcapd", "trigger", "--redis-url", self.server.url,
             "--node", "testnode", "-i", self.pair.dev_a, "--wait", "30", "--count", "1",
             *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [json.loads(line) for line in done.stdout.splitlines()]


@contextlib.contextmanager
def site(base: Path, subnet: int, extra: str = "") -> Iterator[Site]:
    sock_path = base / "redis.sock"
    with (
        redis_server(base, unixsocket=sock_path) as server,
        veth_pair(subnet=subnet) as pair,
    ):
        daemon = Daemon(
            server, base / "daemon", wrap=("ip", "netns", "exec", pair.ns_a),
            max_memory=MAX_MEMORY, extra_redis=f'url = "unix://{sock_path}"',
            extra_sections=RING.format(dev=pair.dev_a, ring_bytes=RING_BYTES) + extra,
        )  # fmt: skip
        results = Results(server)
        with netns(pair.ns_b):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        daemon.start()
        try:
            with sock:
                yield Site(server, pair, daemon, results, sock)
        finally:
            daemon.stop()
            results.close()


def counters(path: str) -> list[int]:
    with open(path, "rb") as handle:
        magic = handle.read(4)
        handle.seek(0)
        reader = dpkt.pcapng.Reader(handle) if magic == b"\n\r\r\n" else dpkt.pcap.Reader(handle)
        return [
            struct.unpack("!I", dpkt.ethernet.Ethernet(frame).data.data.data[:4])[0]
            for _, frame in reader
        ]


def test_lookback_live_and_rejections_over_a_running_daemon(tmp_path: Path) -> None:
    with site(tmp_path, 81) as s:
        wait_for(lambda: "event=ring_started" in s.daemon.log(), timeout=15)
        s.send(40)
        # Odd numbers only, from the ring: 20 of them, before any new packet.
        (event,) = s.trigger("--lookback", "5", "--packets", "20", "--format", "pcapng",
                             "udp[8:4] & 1 = 1")  # fmt: skip
        assert (event["status"], event["stop"], event["packets"]) == ("ok", "packets", 20), event
        assert 0 < event["lookback"] <= 5 and event["kernel_dropped"] == 0
        assert counters(event["locations"]["local"]) == list(range(1, 40, 2))

        # Over what the ring holds, and on an interface with no ring: rejected,
        # each saying why; the daemon serves on.
        for request, error in (
            (s.request(id="too-far", lookback=6),
             f"lookback=6 exceeds what the ring on {s.pair.dev_a} holds "
             "(interface[2].lookback=5)"),
            (s.request(id="no-ring", interface="lo", lookback=1),
             "lookback: interface 'lo' keeps no lookback ring (no [[interface]] lookback)"),
            (s.request(id="over-cap", lookback=301), "lookback=301 exceeds maxlookback=300"),
        ):  # fmt: skip
            s.daemon.publish(request)
            answer = s.results.for_id(request["id"])
            assert (answer["status"], answer["error"]) == ("rejected", error), answer

        # A live capture on the ring interface: only what comes after it, in
        # order; packets are sent until it has its 5.
        s.daemon.publish(s.request(id="live", packets=5))
        wait_for(lambda: s.daemon.started("live"), timeout=10)

        def answered() -> bool:
            s.send(1)
            return "event=capture_done id=live " in s.daemon.log()

        wait_for(answered, timeout=30, interval=0.02)
        live = s.results.for_id("live", timeout=30)
        assert (live["status"], live["stop"], live["lookback"]) == ("ok", "packets", None), live
        got = counters(live["locations"]["local"])
        assert got[0] >= 40 and got == list(range(got[0], got[0] + 5))


def test_ring_memory_is_reserved_and_sigterm_ends_ring_captures(tmp_path: Path) -> None:
    with site(tmp_path, 82) as s:
        wait_for(lambda: "event=ring_started" in s.daemon.log(), timeout=15)
        s.daemon.publish(s.request(id="big", bytes=10_000_000, duration=25, timeout=25))
        wait_for(lambda: s.daemon.started("big"), timeout=10)
        s.daemon.publish(s.request(id="no-room", bytes=10_000_000))
        refused = s.results.for_id("no-room")
        assert refused["error"] == (
            f"bytes=10000000 does not fit: 10000000 of max_memory={MAX_MEMORY} held by "
            f"captures running or awaiting upload and {RING_BYTES} by lookback rings"
        ), refused
        s.send(3)
        # The ring holds the three (a lookback capture sees them), then SIGTERM.
        (seen,) = s.trigger("--lookback", "5", "--packets", "3", "--bytes", "100000")
        assert (seen["status"], seen["packets"]) == ("ok", 3), seen
        s.daemon.signal()
        event = s.results.for_id("big", timeout=30)
        assert (event["status"], event["stop"], event["packets"]) == ("ok", "shutdown", 3)
        assert counters(event["locations"]["local"]) == [0, 1, 2]
        assert s.daemon.wait() == 0
        assert "event=stopped clean=true" in s.daemon.log()


def test_a_lookback_bpf_the_link_type_refuses_stops_the_start(tmp_path: Path) -> None:
    """Checked for Ethernet at load, compiled again for the real link type
    when the ring opens: `any` is Linux cooked capture, with no Ethernet header."""
    with redis_server(tmp_path) as server, veth_pair(subnet=83) as pair:
        daemon = Daemon(
            server, tmp_path / "daemon",
            extra_sections='[[interface]]\nname = "any"\nlookback = 5\nlookback_bytes = 4194304\n'
            'lookback_bpf = "ether host 01:02:03:04:05:06"\n',
        )  # fmt: skip
        done = subprocess.run(
            pair.exec_a(sys.executable, "-m", "pcapd", "serve", "-c", str(daemon.config_path)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr  # EXIT_CONFIG: not restarted
    assert (
        "event=ring_failed error=\"lookback_bpf of any: bpf: 'ether host 01:02:03:04:05:06' "
        "does not compile for any (link type 113)"
    ) in done.stdout + done.stderr


def test_ring_captures_say_what_lookback_bpf_keeps_and_count_their_trigger_latency(
    tmp_path: Path,
) -> None:
    """The ring keeps only "udp": a live and a lookback capture each carry a
    warning naming the interface and the ring's filter, and both are counted
    in pcapd_trigger_latency_seconds (scraped inside the daemon's namespace)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with site(tmp_path, 102, f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n') as s:
        wrap = ("ip", "netns", "exec", s.pair.ns_a)
        wait_for(lambda: "event=ring_started" in s.daemon.log(), timeout=15)
        wait_for(lambda: get(base + "/healthz", wrap)[0] == 200, timeout=15)
        before = value(samples(base, wrap), "pcapd_trigger_latency_seconds_count")
        s.send(5)
        (back,) = s.trigger("--lookback", "5", "--packets", "5")
        s.daemon.publish(s.request(id="live", packets=1))
        wait_for(lambda: s.daemon.started("live"), timeout=10)
        s.send(1)
        live = s.results.for_id("live", timeout=30)
        warning = f'ring on {s.pair.dev_a} keeps only "udp" (interface[2].lookback_bpf)'
        for event in (back, live):
            assert (event["status"], event["warnings"]) == ("ok", [warning]), event
        after = value(samples(base, wrap), "pcapd_trigger_latency_seconds_count")
        assert after - before == 2
