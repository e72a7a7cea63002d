"""Live capture on a veth pair between two namespaces, into a real redis-server.

Redis listens on a unix socket in the test's temp dir: the agent runs inside
namespace A (`ip netns exec`), where the root namespace's 127.0.0.1 is not
reachable, but the file system (and so the socket) is shared.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agents.flow import traffic
from tests.helpers import (
    VethPair,
    needs_root,
    stop_process,
    unix_redis_server,
    veth_pair,
    wait_for,
)

REPO = Path(__file__).resolve().parents[3]
TRAFFIC = Path(traffic.__file__)
AGENT_EXIT_TIMEOUT = 15.0


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    """A private redis-server on a unix socket only (no TCP port)."""
    with unix_redis_server(tmp_path) as sock:
        yield sock


def keys_and_values(client: redis.Redis) -> dict[str, int]:
    return {key.decode(): int(client.get(key) or 0) for key in client.scan_iter(count=1000)}


@contextlib.contextmanager
def flow_agent(pair: VethPair, url: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`pcapd agent flow` on pair's A end, our nets its addresses; stopped with
    SIGTERM (a warm stop, which flushes) when the block ends."""
    ours = f"{pair.addr_a}/32,{pair.addr6_a}/128"
    with log.open("wb") as err:
        agent = subprocess.Popen(
            pair.exec_a(sys.executable, "-m", "pcapd", "agent", "flow", pair.dev_a, ours,
                        "--redis", url, "--stats-interval", "0.5"),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: b"event=flow_started" in log.read_bytes(), timeout=30)
        yield agent
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(AGENT_EXIT_TIMEOUT)
        finally:
            stop_process(agent)


@needs_root
def test_live_capture_both_versions(tmp_path: Path, unix_redis: Path) -> None:
    client = redis.Redis(unix_socket_path=str(unix_redis))
    with veth_pair(subnet=61) as pair:
        a4, b4, a6, b6 = pair.addr_a, pair.addr_b, pair.addr6_a, pair.addr6_b
        log = tmp_path / "agent.log"
        expected = {
            f"client;{a4}": 4,
            f"{a4};{b4};{traffic.TCP_PORT};flow": 1,
            f"{a4};{b4};{traffic.UDP_PORT};flow": 1,
            f"{a4};{b4};peer": 2,
            f"{b4};{a4};peer": 2,
            f"{a4};{b4};{traffic.RST_PORT[socket.AF_INET]}:{traffic.CLOSED_TCP};rst": 1,
            f"{a4};{b4};{traffic.ICMP_PORT[socket.AF_INET]}:{traffic.CLOSED_UDP};3;icmp": 1,
            f"client;{a6}": 4,
            f"{a6};{b6};{traffic.TCP_PORT};flow": 1,
            f"{a6};{b6};{traffic.UDP_PORT};flow": 1,
            f"{a6};{b6};peer": 2,
            f"{b6};{a6};peer": 2,
            f"{a6};{b6};{traffic.RST_PORT[socket.AF_INET6]}:{traffic.CLOSED_TCP};rst": 1,
            f"{a6};{b6};{traffic.ICMP_PORT[socket.AF_INET6]}:{traffic.CLOSED_UDP};4;icmp": 1,
        }
        server = subprocess.Popen(
            pair.exec_b(sys.executable, str(TRAFFIC), "serve", b4, b6),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert server.stdout is not None
            assert server.stdout.readline() == b"ready\n"
            with flow_agent(pair, f"unix://{unix_redis}", log) as agent:
                result = subprocess.run(
                    pair.exec_a(sys.executable, str(TRAFFIC), "client", b4, b6),
                    capture_output=True,
                    timeout=30,
                )
                assert result.returncode == 0, result.stderr.decode()
                wait_for(lambda: set(expected) <= set(keys_and_values(client)), timeout=15)
        finally:
            stop_process(server)
            assert server.stdout is not None
            server.stdout.close()
        assert agent.returncode == 0, log.read_text()
        assert keys_and_values(client) == expected
        for key in expected:
            assert 0 < client.ttl(key) <= 900
        text = log.read_text()
        assert "event=flow_stats" in text and "event=flow_done" in text
        assert "Traceback" not in text


@needs_root
def test_interface_going_away_ends_the_agent_with_an_error(
    tmp_path: Path, unix_redis: Path
) -> None:
    with veth_pair(subnet=62) as pair:
        log = tmp_path / "agent.log"
        with log.open("wb") as err:
            agent = subprocess.Popen(
                pair.exec_a(sys.executable, "-m", "pcapd", "agent", "flow", pair.dev_a,
                            f"{pair.addr_a}/32", "--redis", f"unix://{unix_redis}"),
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        try:
            wait_for(lambda: b"event=flow_started" in log.read_bytes(), timeout=20)
            subprocess.run(["ip", "-n", pair.ns_a, "link", "del", pair.dev_a], check=True)
            agent.wait(AGENT_EXIT_TIMEOUT)
        finally:
            stop_process(agent)
    text = log.read_text()
    assert agent.returncode == 1, text
    assert 'event=flow_capture_failed error="capture failed: The interface disappeared"' in text
    assert "event=flow_done" in text
    assert "Traceback" not in text
