"""The agents' /metrics and /readyz, scraped with a real HTTP client while they
work: dnstap frames from BIND into `pcapd agent dnstap`, the same answers
sniffed off `lo` by `pcapd agent dnswire`, and flow packets on a veth pair
into `pcapd agent flow`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.agents.dnstap.resolvers import bind, dig
from tests.agents.flow import traffic
from tests.helpers import (
    RedisServer,
    free_port,
    needs_root,
    stop_process,
    unix_redis_server,
    veth_pair,
    wait_for,
)
from tests.metrics_scrape import ready, samples, value

REPO = Path(__file__).resolve().parents[2]
EXIT_TIMEOUT = 15.0


@contextmanager
def agent_process(argv: Sequence[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A real agent process; SIGTERM at the end, and it must exit 0."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(EXIT_TIMEOUT) == 0, log.read_text()
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text()


def test_dnstap_and_dnswire_metrics_move_with_bind_answers(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    sock = tmp_path / "dnstap.sock"
    tap_port, wire_port, dns_port = free_port(), free_port(), free_port()
    config = tmp_path / "agents.toml"
    config.write_text(f"""
[redis]
port = {private_redis.port}

[agents.dnstap]
socket = "{sock}"
stats_interval = 0
flush_interval = 0.01
metrics_listen = "127.0.0.1:{tap_port}"
ping_interval = 0.2

[agents.dnswire]
interface = "lo"
ports = [{dns_port}]
stats_interval = 0
metrics_listen = "127.0.0.1:{wire_port}"
ping_interval = 0.2
""")
    tap, wire = f"http://127.0.0.1:{tap_port}", f"http://127.0.0.1:{wire_port}"
    pcapd = [sys.executable, "-m", "pcapd", "agent"]
    with (
        agent_process([*pcapd, "dnstap", "-c", str(config)], tmp_path / "dnstap.log"),
        agent_process([*pcapd, "dnswire", "-c", str(config)], tmp_path / "dnswire.log"),
    ):
        wait_for(lambda: sock.exists(), timeout=20)
        wait_for(lambda: _answers(wire), timeout=20)
        code, report = ready(tap)
        assert code == 503 and report["checks"]["input"] == {
            "ok": False, "detail": "no resolver connected to the dnstap socket or listener",
        }  # fmt: skip
        with bind(tmp_path / "bind", sock, port=dns_port) as named:
            wait_for(lambda: ready(tap)[0] == 200, timeout=30)
            for client in ("127.0.0.61", "127.0.0.62"):
                assert "192.0.2.10" in dig(named.port, "www.example.test", "A", client)
            assert dig(named.port, "nope.example.test", "A", "127.0.0.61") == ""
            wait_for(lambda: value(samples(tap), "pcapd_agent_responses_total") >= 3, timeout=30)
            wait_for(lambda: value(samples(wire), "pcapd_agent_responses_total") >= 3, timeout=30)
            found = samples(tap)
            assert value(found, "pcapd_agent_frames_total", agent="dnstap") >= 3
            assert value(found, "pcapd_agent_messages_total", type="CLIENT_RESPONSE") >= 3
            assert value(found, "pcapd_agent_connections", agent="dnstap") == 1
            wait_for(lambda: value(samples(tap), "pcapd_agent_keys_written_total") > 0, 20)
            assert value(samples(tap), "pcapd_agent_redis_write_seconds_count") > 0
            assert value(found, "pcapd_agent_keys_dropped_total") == 0
            names = {name for name, _ in found}
            assert {"pcapd_agent_expires_lost_total", "pcapd_agent_index_lost_total"} <= names
            found = samples(wire)
            assert value(found, "pcapd_agent_packets_total", agent="dnswire") >= 3
            assert "pcapd_agent_kernel_dropped_total" in {name for name, _ in found}
            wait_for(lambda: value(samples(wire), "pcapd_agent_keys_written_total") > 0, 20)
            # Redis goes away: both unready, naming Redis, seen by the idle
            # writer's next PING (every ping_interval); back: ready again.
            private_redis.stop()
            for base in (tap, wire):
                wait_for(lambda b=base: ready(b)[0] == 503, timeout=30)
                assert ready(base)[1]["checks"]["redis"]["ok"] is False
            private_redis.start()
            for base in (tap, wire):
                wait_for(lambda b=base: ready(b)[0] == 200, timeout=40)


def _answers(base: str) -> bool:
    try:
        return ready(base)[0] in (200, 503)
    except OSError:
        return False


@needs_root
def test_flow_metrics_move_with_packets_on_a_veth(tmp_path: Path) -> None:
    with unix_redis_server(tmp_path) as redis_sock, veth_pair(subnet=51) as pair:
        a4, b4, a6, b6 = pair.addr_a, pair.addr_b, pair.addr6_a, pair.addr6_b
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        config = tmp_path / "flow.toml"
        config.write_text(f"""
[redis]
url = "unix://{redis_sock}"

[agents.flow]
stats_interval = 0.5
metrics_listen = "127.0.0.1:{port}"
""")
        inside = pair.exec_a()  # the agent, and so its listener, live in namespace A
        argv = pair.exec_a(sys.executable, "-m", "pcapd", "agent", "flow", "-c", str(config),
                           pair.dev_a, f"{a4}/32,{a6}/128")  # fmt: skip
        server = subprocess.Popen(
            pair.exec_b(sys.executable, str(Path(traffic.__file__)), "serve", b4, b6),
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            with agent_process(argv, tmp_path / "flow.log"):
                assert server.stdout is not None
                assert server.stdout.readline() == b"ready\n"
                wait_for(lambda: _answers_in(base, inside), timeout=20)
                # Not ready until the writer's first round trip (or PING) is answered.
                wait_for(lambda: ready(base, inside)[0] == 200, timeout=10)
                _, report = ready(base, inside)
                assert report["checks"]["input"]["ok"] is True
                before = value(samples(base, inside), "pcapd_agent_packets_total")
                done = subprocess.run(
                    pair.exec_a(sys.executable, str(Path(traffic.__file__)), "client", b4, b6),
                    capture_output=True, timeout=30,
                )  # fmt: skip
                assert done.returncode == 0, done.stderr.decode()
                wait_for(
                    lambda: value(samples(base, inside), "pcapd_agent_keys_written_total") >= 10,
                    timeout=20,
                )
                found = samples(base, inside)
                assert value(found, "pcapd_agent_packets_total", agent="flow") > before
                # two flows, a RST and an ICMP unreachable per address family
                assert value(found, "pcapd_agent_flow_events_total") >= 8
                assert value(found, "pcapd_agent_kernel_dropped_total", agent="flow") == 0
                assert value(found, "pcapd_agent_keys_dropped_total") == 0
                assert value(found, "pcapd_agent_queue_limit") > 0
        finally:
            stop_process(server)
            assert server.stdout is not None
            server.stdout.close()


def _answers_in(base: str, wrap: Sequence[str]) -> bool:
    try:
        return ready(base, wrap)[0] in (200, 503)
    except (OSError, AssertionError):
        return False


def test_an_agent_metrics_port_in_use_names_the_field(tmp_path: Path) -> None:
    config = tmp_path / "agents.toml"
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config.write_text(
            f'[agents.dnstap]\nsocket = "{tmp_path / "s.sock"}"\n'
            f'metrics_listen = "127.0.0.1:{port}"\n'
        )
        done = subprocess.run(
            [sys.executable, "-m", "pcapd", "agent", "dnstap", "-c", str(config)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    message = f"agents.dnstap.metrics_listen: cannot listen on 127.0.0.1:{port}: Address already"
    assert message in done.stderr
    assert not (tmp_path / "s.sock").exists()  # refused before it listened for dnstap
