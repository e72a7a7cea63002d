"""`pcapd agent dnstap` as a process: config file plus overrides, resolvers
started before it (they reconnect), a restart, SIGTERM, config errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.dnstap.agent import FLUSH_TIMEOUT
from agents.dnstap.client import FrameWriter
from pcapd.core.lifecycle import EXIT_COLD, EXIT_CONFIG
from tests.agents.dnstap.builders import response_wire, tap_payload
from tests.agents.dnstap.resolvers import bind, dig, unbound
from tests.helpers import RedisServer, free_port, stop_process, wait_for

WIRE = response_wire("www.example.test.", "A", [("www.example.test.", "A", "192.0.2.10")])

ROOT = Path(__file__).resolve().parents[3]
COLD_EXIT_WITHIN = FLUSH_TIMEOUT / 2  # s


def _agent(config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pcapd", "agent", "dnstap", "-c", str(config), *extra],
            cwd=ROOT, stdout=out, stderr=out,
        )  # fmt: skip


def test_resolvers_first_then_agent_restarts(redis_srv: RedisServer, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "dnstap.sock"
    config = tmp_path / "pcapd.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_srv.url}"\n\n'
        f'[agents.dnstap]\nsocket = "/nonexistent/overridden.sock"\nsocket_mode = "0666"\n'
        "stats_interval = 0.5\n"
    )
    log = tmp_path / "agent.log"
    r = redis_srv.client()
    with (
        bind(tmp_path / "bind", sock) as named,
        unbound(tmp_path / "unbound", named.port, socket_path=sock) as ub,
    ):
        # Both resolvers run before the agent exists: they retry the socket.
        agent = _agent(config, log, "--socket", str(sock))
        try:

            def probe(client: str) -> bool:
                dig(named.port, "www.example.test", "A", client)
                dig(ub.port, "alias.example.test", "A", client)
                return (
                    r.get(f"{client};192.0.2.10;dns") is not None
                    and r.get(f"{client};198.51.100.7;dns") is not None
                )

            wait_for(lambda: probe("127.0.0.51"), timeout=20, interval=0.2)
            assert os.stat(sock).st_mode & 0o777 == 0o666
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
            assert not sock.exists()
            agent = _agent(config, log, "--socket", str(sock))
            wait_for(lambda: probe("127.0.0.52"), timeout=20, interval=0.2)
            wait_for(lambda: "event=dnstap_stats" in log.read_text(), timeout=5)
        finally:
            stop_process(agent)
    text = log.read_text()
    assert text.count("event=dnstap_starting") == 2
    assert "event=dnstap_stopping" in text
    assert "keys_written=" in text and "event=dnstap_connection_stats" in text


def test_config_errors_are_printed_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "pcapd.toml"
    config.write_text('[agents.dnstap]\nsocket_mode = "xyz"\nrecord_types = ["MX"]\n')
    out = subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "dnstap", "-c", str(config), "--ttl-grace", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # The file's path starts each line, as for every command (a command-line
    # override is checked as if the file held it).
    assert out.returncode == EXIT_CONFIG
    assert out.stderr.splitlines() == [
        f"{config}: error: agents.dnstap.socket_mode: 'xyz' is not an octal mode such as \"0660\"",
        f"{config}: error: agents.dnstap.ttl_grace: "
        "must be at least 1 and at most 2147483647, got 0",
        f"{config}: error: agents.dnstap.record_types: expected one of A, AAAA, got 'MX'",
    ]


def test_a_regular_file_at_the_socket_path_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dnstap.sock"
    path.write_text("keep me")
    out = subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "dnstap", "--socket", str(path),
         "--redis-url", "redis://127.0.0.1:1/0"],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"error: cannot listen: {path} exists and is not a socket" in out.stderr
    assert path.read_text() == "keep me"


def test_second_sigterm_exits_at_once_while_redis_is_down(tmp_path: Path) -> None:
    sock = tmp_path / "dnstap.sock"
    log = tmp_path / "agent.log"
    config = tmp_path / "pcapd.toml"
    config.write_text("[agents.dnstap]\nstats_interval = 0\n")
    agent = _agent(config, log, "--socket", str(sock), "--redis-url",
                   f"redis://127.0.0.1:{free_port()}/0")  # fmt: skip
    try:
        # The log line, not the file: a bound but not yet listening socket refuses.
        wait_for(lambda: "event=dnstap_listening" in log.read_text())
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            writer = FrameWriter(s)
            writer.start()
            writer.write([tap_payload(WIRE, client=f"10.3.0.{i}") for i in range(50)])
            writer.stop()
        wait_for(lambda: "event=redis_write_failed" in log.read_text())
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: "event=dnstap_stopping" in log.read_text())
        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        # Well inside the warm flush the first signal started, which Redis
        # being down would otherwise use up.
        assert agent.wait(COLD_EXIT_WITHIN) == EXIT_COLD
        assert time.monotonic() - started < COLD_EXIT_WITHIN
    finally:
        stop_process(agent)


def test_shodohflos_dnstap_agent_command_line(redis_srv: RedisServer, tmp_path: Path) -> None:
    """`dnstap_agent.py /tmp/dnstap 10.0.0.42:3047`, ShoDoHFlo's documented
    invocation, as `pcapd agent dnstap SOCKET ADDRESS:PORT`: the socket is
    the one named, the JSON datagrams go where named, and Redis gets the keys
    its dns_agent wrote from them (refused as unknown arguments before)."""
    sock = tmp_path / "dnstap"
    log = tmp_path / "agent.log"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        target = f"127.0.0.1:{rx.getsockname()[1]}"
        with log.open("ab") as out:
            agent = subprocess.Popen(
                [sys.executable, "-m", "pcapd", "agent", "dnstap", str(sock), target,
                 "--redis-url", redis_srv.url],
                cwd=ROOT, stdout=out, stderr=out,
            )  # fmt: skip
        try:
            wait_for(lambda: "event=dnstap_listening" in log.read_text(), timeout=20)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))
                writer = FrameWriter(s)
                writer.start()
                writer.write([tap_payload(WIRE, client="10.3.0.1")])
                writer.stop()
            datagram = json.loads(rx.recv(65535))
            r = redis_srv.client()
            wait_for(lambda: r.get("10.3.0.1;192.0.2.10;dns") is not None)
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(10) == 0
        finally:
            stop_process(agent)
    assert datagram == {
        "chain": ["www.example.test."], "client": "10.3.0.1", "qtype": "A",
        "status": "NOERROR", "address": "192.0.2.10", "id": 1,
    }  # fmt: skip
    assert r.get("10.3.0.1;192.0.2.10;dns") == b";www.example.test.;"
    assert r.get("client;10.3.0.1") == b"1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/tmp/a", "127.0.0.1:3047", "10.0.0.1", "extra"],
         "error: too many arguments ['/tmp/a', '127.0.0.1:3047', '10.0.0.1', 'extra']: "
         "expected SOCKET [ADDRESS:PORT [INTERFACE-ADDRESS]]"),
        (["/tmp/a", "--socket", "/tmp/b"], "error: SOCKET '/tmp/a' and --socket both given"),
        # after an option, the next positional argument is still ADDRESS:PORT
        (["/tmp/a", "--ttl-grace", "60", "nowhere"],
         "error: agents.dnstap.udp_output: 'nowhere' is not ADDRESS:PORT "
         "with a literal IP address"),
        (["--ttl-grace", "60", "/tmp/a", "--dedup-window", "2", "127.0.0.1:3047", "10.0.0.1",
          "extra"],
         "error: too many arguments ['/tmp/a', '127.0.0.1:3047', '10.0.0.1', 'extra']: "
         "expected SOCKET [ADDRESS:PORT [INTERFACE-ADDRESS]]"),
        # an unknown option among them is refused as argparse refuses it
        (["/tmp/a", "--no-such-option", "127.0.0.1:3047"],
         "pcapd agent dnstap: error: unrecognized arguments: --no-such-option"),
        (["/tmp/a", "nowhere"],
         "error: agents.dnstap.udp_output: 'nowhere' is not ADDRESS:PORT "
         "with a literal IP address"),
        # the third is the multicast interface's address: --udp-interface
        (["/tmp/a", "239.1.2.3:3047", "::1"],
         "error: agents.dnstap.udp_interface: '::1' is IPv6 but udp_output "
         "239.1.2.3:3047 is IPv4"),
    ],
)  # fmt: skip
def test_shodohflos_arguments_are_checked(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "dnstap", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == EXIT_CONFIG
    assert message in out.stderr.splitlines()
