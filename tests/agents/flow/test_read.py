"""`--read`: crafted captures through parser, rules and suppression into a real redis-server."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import dpkt
import pytest
import redis

from agents.flow.agent import FLUSH_TIMEOUT, AgentError, FlowAgent
from agents.flow.config import parse_flow_config, parse_networks_arg, with_command_line
from agents.redis_writer import make_writer
from pcapd.core.lifecycle import EXIT_COLD
from tests.agents.flow import frames as f
from tests.agents.test_store import refusing_url
from tests.helpers import RedisServer, free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parents[3]
OURS = "10.200.1.0/24,fd00:200:1::/64"
A4, A4b, B4 = "10.200.1.1", "10.200.1.9", "192.0.2.7"
A6, B6 = "fd00:200:1::1", "2001:db8::7"
ACK, RST, SYN = dpkt.tcp.TH_ACK, dpkt.tcp.TH_RST, dpkt.tcp.TH_SYN


def all_keys(client: redis.Redis) -> dict[str, str]:
    return {
        key.decode(): client.get(key).decode()  # type: ignore[union-attr]
        for key in client.scan_iter(count=1000)
    }


def read_in_process(
    path: Path, server: RedisServer, table: dict[str, object] | None = None
) -> dict[str, int]:
    config = with_command_line(parse_flow_config(table or {}), None, parse_networks_arg(OURS))
    writer = make_writer(config, server.client)
    agent = FlowAgent(config, writer)
    agent.open_file(str(path))
    writer.start()
    agent.run_file()
    writer.stop(10)
    return agent.stats()


def read_with_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`pcapd agent flow ARGS` as a process; it must exit 0."""
    result = subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "flow", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def write(path: Path, frames: Iterable[bytes]) -> Path:
    f.write_pcap(path, [f.ether(frame) for frame in frames])
    return path


def test_flows_rst_icmp_both_versions(tmp_path: Path, redis_srv: RedisServer) -> None:
    pcap = write(
        tmp_path / "mixed.pcap",
        [
            f.ip4(B4, A4, 6, f.tcp(443, 50000, ACK)),
            f.ip4(B4, A4, 6, f.tcp(443, 50000, ACK)),  # suppressed
            f.ip4(B4, A4, 6, f.tcp(443, 50001, SYN | ACK)),  # handshake: not a flow
            f.ip4(B4, A4, 6, f.tcp(9, 40001, RST | ACK)),
            f.ip4(B4, A4, 1, f.icmp4_unreach(3, f.ip4(A4, B4, 17, f.udp(40002, 7777)))),
            f.ip6(B6, A6, 17, f.udp(53, 40003)),
            f.ip6(B6, A6, 6, f.tcp(22, 40004, RST)),
            f.ip6(B6, A6, 58, f.icmp6_unreach(4, f.ip6(A6, B6, 6, f.tcp(40005, 8443)))),
        ],
    )
    stats = read_in_process(pcap, redis_srv)
    keys = all_keys(redis_srv.client())
    assert keys == {
        f"client;{A4}": "3",
        f"{A4};{B4};443;flow": "1",
        f"{A4};{B4};peer": "1",
        f"{B4};{A4};peer": "1",
        f"{A4};{B4};40001:9;rst": "1",
        f"{A4};{B4};40002:7777;3;icmp": "1",
        f"client;{A6}": "3",
        f"{A6};{B6};53;flow": "1",
        f"{A6};{B6};peer": "1",
        f"{B6};{A6};peer": "1",
        f"{A6};{B6};40004:22;rst": "1",
        f"{A6};{B6};40005:8443;4;icmp": "1",
    }
    for key in keys:
        assert 0 < redis_srv.client().ttl(key) <= 900
    assert stats["packets"] == 8 and stats["parsed"] == 8
    assert stats["events"] == 6 and stats["suppressed"] == 1 and stats["syn_fin"] == 1
    assert stats["keys_written"] == 2 * 4 + 4 * 2 and stats["keys_dropped"] == 0


def test_suppression_window_follows_packet_time(tmp_path: Path, redis_srv: RedisServer) -> None:
    same = f.ip4(B4, A4, 17, f.udp(53, 4000))
    path = tmp_path / "window.pcap"
    # 0 s, 10 s, 31 s, 40 s, 62 s: a 30 s window lets through 0, 31 and 62;
    # then the clock steps back 100 s: sent again rather than held for 100 s.
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for seconds in (0, 10, 31, 40, 62, -100, -90):
            writer.writepkt(f.ether(same), ts=1e9 + seconds)
    stats = read_in_process(path, redis_srv)
    assert redis_srv.client().get(f"{A4};{B4};53;flow") == b"4"
    assert stats["events"] == 4 and stats["suppressed"] == 3


def test_own_network_rules_and_ignore_flows(tmp_path: Path, redis_srv: RedisServer) -> None:
    pcap = write(
        tmp_path / "rules.pcap",
        [
            f.ip4(A4b, A4, 17, f.udp(53, 4000)),  # both ours: suppressed
            f.ip4(A4b, A4, 6, f.tcp(80, 4000, RST)),  # RST between ours: recorded
            f.ip4(B4, A4, 17, f.udp(53, 4001)),  # ignored flow: client counted only
            f.ip4(B4, A4, 17, f.udp(8080, 4002)),  # dropped by rule
            f.ip4(B4, "198.51.100.1", 17, f.udp(123, 4003)),  # in no network
            f.ip4(A4, B4, 6, f.tcp(4004, 25, RST)),  # RST to outside: a flow by lower_port
            f.ip4(A4, B4, 1, f.icmp4_unreach(1, f.ip4(B4, A4, 6, f.tcp(1, 2)))),  # not ours
        ],
    )
    table = {
        "networks": [
            {"name": "our_nets"},
            {"name": "v6", "cidr": "::/0"},
            {"name": "web", "cidr": "192.0.2.0/24"},
        ],
        "rules": [
            {"src": "web", "action": "port_match", "ports": [8080], "drop": True},
            {"action": "lower_port"},
        ],
        "ignore_flows": [{"address": B4, "port": 53}],
    }
    stats = read_in_process(pcap, redis_srv, table)
    assert all_keys(redis_srv.client()) == {
        f"client;{A4}": "3",  # the RST, the ignored flow, the flow to port 25
        f"{A4};{A4b};4000:80;rst": "1",
        f"{A4};{B4};25;flow": "1",
        f"{A4};{B4};peer": "1",
        f"{B4};{A4};peer": "1",
    }
    assert stats["drop_own_network"] == 1
    assert stats["drop_rule"] == 1 and stats["drop_no_network"] == 1
    assert stats["not_ours"] == 1 and stats["dropped_by_rule"] == 2


def test_cache_bound_restarts_suppression(tmp_path: Path, redis_srv: RedisServer) -> None:
    frames = [f.ip4(B4, A4, 17, f.udp(1000 + i, 50000)) for i in range(250)]
    pcap = write(tmp_path / "many.pcap", frames + frames)
    stats = read_in_process(pcap, redis_srv, {"max_tracked": 100})
    assert stats["cache_resets"] >= 2
    # 250 distinct flow keys, each written at least once; resets re-send some.
    flows = [k for k in all_keys(redis_srv.client()) if k.endswith(";flow")]
    assert len(flows) == 250
    assert 250 <= stats["events"] <= 500


CORRUPT = [
    f.ether(f.ip4(B4, A4, 6, f.tcp(443, 50000)))[:40],
    b"\xff" * 5,
    f.ether(b"\x4f" + f.ip4(B4, A4, 17, f.udp(1, 2))[1:])[:30],
    f.ether(f.ip6(B6, A6, 0, f.udp(1, 2), ext=f.ext_header(0) * 12)),
    f.MAC_B + f.MAC_A + b"\x81\x00",
]


def test_cli_read_counts_bad_packets_and_goes_on(tmp_path: Path, redis_srv: RedisServer) -> None:
    good = [f.ether(f.ip4(B4, A4, 17, f.udp(53, 4000 + i))) for i in range(3)]
    path = tmp_path / "corrupt.pcap"
    f.write_pcap(path, [good[0], *CORRUPT, good[1], *CORRUPT, good[2]])
    result = read_with_cli("--read", str(path), OURS, "--redis", redis_srv.url)
    done = re.search(r"event=flow_done (.*)", result.stderr)
    assert done, result.stderr
    stats = dict(pair.split("=") for pair in done.group(1).split())
    assert stats["packets"] == "13" and stats["parsed"] == "3"
    assert int(stats["truncated"]) + int(stats["malformed"]) == 10
    assert stats["errors"] == "0" and stats["events"] == "1"
    assert redis_srv.client().get(f"{A4};{B4};53;flow") == b"1"
    assert redis_srv.client().get(f"client;{A4}") == b"1"


def test_cli_read_exits_non_zero_when_keys_were_dropped(
    tmp_path: Path, private_redis: RedisServer
) -> None:
    """A file is read once: keys a Redis refused (an ACL here) are lost, and
    the exit status says so."""
    url = refusing_url(private_redis)
    pcap = write(tmp_path / "one.pcap", [f.ip4(B4, A4, 17, f.udp(53, 4000))])
    result = subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "flow", "--read", str(pcap), OURS,
         "--redis", url],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "event=redis_writes_refused cause=NOPERM" in result.stderr
    assert re.search(r"event=keys_dropped agent=flow keys=[1-9]", result.stderr), result.stderr
    assert re.search(r"event=flow_done .*keys_dropped=[1-9]", result.stderr), result.stderr


def test_cli_read_counts_a_flow_seen_both_ways_once(tmp_path: Path, redis_srv: RedisServer) -> None:
    """ShoDoHFlo's pcap_agent `Server.process_data` suppresses by the flow key
    (`self.recently.seen(k)`), and both directions map to the same key."""
    path = tmp_path / "both-ways.pcap"
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        there, back = f.tcp(443, 50000), f.tcp(50000, 443)
        writer.writepkt(f.ether(f.ip4("10.0.0.5", "10.1.0.10", 6, there)), ts=1e9)
        writer.writepkt(f.ether(f.ip4("10.1.0.10", "10.0.0.5", 6, back)), ts=1e9 + 0.01)
    result = read_with_cli("--read", str(path), "10.1.0.0/24", "--redis", redis_srv.url)
    assert all_keys(redis_srv.client()) == {
        "client;10.1.0.10": "1",
        "10.1.0.10;10.0.0.5;443;flow": "1",
        "10.1.0.10;10.0.0.5;peer": "1",
        "10.0.0.5;10.1.0.10;peer": "1",
    }
    assert "events=1 suppressed=1" in result.stderr


def test_read_rejects_non_capture_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("not a pcap\n" * 10)
    config = with_command_line(parse_flow_config({}), None, parse_networks_arg(OURS))
    agent = FlowAgent(config, make_writer(config, lambda: redis.Redis()))
    with pytest.raises(AgentError, match="not a capture file"):
        agent.open_file(str(path))


def test_sll_capture_file(tmp_path: Path, redis_srv: RedisServer) -> None:
    path = tmp_path / "sll.pcap"
    f.write_pcap(path, [f.sll(f.ip6(B6, A6, 17, f.udp(443, 50000)))], linktype=113)
    stats = read_in_process(path, redis_srv)
    assert stats["events"] == 1
    assert redis_srv.client().get(f"{A6};{B6};443;flow") == b"1"


def test_cli_config_file_only(tmp_path: Path, redis_srv: RedisServer) -> None:
    """`-c FILE` alone: Redis from [redis], OUR-NETS and rules from [agents.flow]."""
    path = tmp_path / "seed.pcap"
    f.write_pcap(
        path,
        [
            f.ether(f.ip4("203.0.113.53", "10.0.0.1", 17, f.udp(53, 40000))),  # dropped by rule
            f.ether(f.ip4("203.0.113.9", "10.0.0.1", 6, f.tcp(51000, 22))),
            f.ether(f.ip4("198.51.100.1", "192.168.1.10", 6, f.tcp(443, 50000))),
        ],
    )
    seed = (REPO / "docs" / "flow.md").read_text().split("```toml\n# seed-001\n", 1)[1]
    config = tmp_path / "site.toml"
    config.write_text(
        f'[redis]\nurl = "{redis_srv.url}"\n\n'
        + seed.split("```", 1)[0].replace(
            "[agents.flow]\n", '[agents.flow]\nour_nets = ["192.168.0.0/16"]\n'
        )
    )
    result = read_with_cli("-c", str(config), "--read", str(path))
    assert all_keys(redis_srv.client()) == {
        "client;203.0.113.9": "1",
        "203.0.113.9;10.0.0.1;22;flow": "1",
        "203.0.113.9;10.0.0.1;peer": "1",
        "10.0.0.1;203.0.113.9;peer": "1",
        "client;192.168.1.10": "1",
        "192.168.1.10;198.51.100.1;443;flow": "1",
        "192.168.1.10;198.51.100.1;peer": "1",
        "198.51.100.1;192.168.1.10;peer": "1",
    }
    assert "drop_rule=1" in result.stderr


def test_redis_outage_is_retried_and_counted(tmp_path: Path, private_redis: RedisServer) -> None:
    """Redis away while packets are processed: the agent goes on, the writer
    retries with backoff, and the keys arrive once Redis is back."""
    pcap = write(
        tmp_path / "outage.pcap", [f.ip4(B4, A4, 17, f.udp(53, 4000 + i)) for i in range(3)]
    )
    config = with_command_line(parse_flow_config({}), None, parse_networks_arg(OURS))
    writer = make_writer(config, private_redis.client)
    agent = FlowAgent(config, writer)
    agent.open_file(str(pcap))
    private_redis.stop()
    writer.start()
    agent.run_file()
    wait_for(lambda: writer.stats.redis_errors >= 1, timeout=10)
    stats = agent.stats()
    assert stats["events"] == 1 and stats["keys_written"] == 0 and stats["queue_depth"] == 4
    private_redis.start()
    writer.stop(10)
    assert writer.stats.written_ops == 4 and writer.stats.dropped_ops == 0
    assert all_keys(private_redis.client())[f"{A4};{B4};53;flow"] == "1"


def test_second_signal_leaves_at_once_while_redis_is_down(tmp_path: Path) -> None:
    """The daemon's lifecycle: the first signal is warm (the queue is still
    being sent), the second leaves at once with status 1, not 128+n."""
    path = tmp_path / "one.pcap"
    with path.open("wb") as handle:
        dpkt.pcap.Writer(handle).writepkt(
            f.ether(f.ip4("10.0.0.5", "10.1.0.10", 6, f.tcp(443, 50000))), ts=1e9
        )
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "pcapd", "agent", "flow", "--read", str(path), "10.1.0.0/24",
             "--redis", f"redis://127.0.0.1:{free_port()}/0"],
            stderr=out, cwd=REPO,
        )  # fmt: skip
    try:
        wait_for(lambda: "event=redis_write_failed" in log.read_text())
        agent.send_signal(signal.SIGTERM)
        wait_for(lambda: "event=shutdown_requested" in log.read_text())
        started = time.monotonic()
        agent.send_signal(signal.SIGINT)
        assert agent.wait(FLUSH_TIMEOUT / 2) == EXIT_COLD
        assert time.monotonic() - started < FLUSH_TIMEOUT / 2
    finally:
        stop_process(agent)
    assert "event=exit_now" in log.read_text()
