"""Real BIND and Unbound answering dig inside network namespaces; the agent
(`pcapd agent dnswire`, a subprocess in namespace A) sniffs the answers on
the veth. The same BIND sends dnstap to the dnstap agent (in this process),
so one answer set goes through both agents and the key spaces must match.

Namespace B holds BIND (10.200.71.2, fd00:200:71::2, authoritative, no
recursion: RA clear) and Unbound (10.200.71.3, recursive over BIND: RA
set). Namespace A holds the clients: 10.200.71.1 and fd00:200:71::1 ask
BIND, 10.200.71.4 asks Unbound. Redis for the wire agent is on a unix
socket, which both namespaces reach through the shared file system.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.agents.dnstap.builders import reference
from tests.agents.dnstap.harness import RunningAgent, redis_dump, running_agent
from tests.agents.dnstap.resolvers import bind, dig, unbound
from tests.agents.dnswire import dnsflow_reader as reader
from tests.agents.dnswire import wire as w
from tests.helpers import (
    RedisServer,
    VethPair,
    needs_root,
    redis_server,
    run,
    stop_process,
    unix_redis_server,
    veth_pair,
    wait_for,
)

REPO = Path(__file__).resolve().parents[3]
SUBNET = 71
UNBOUND4 = f"10.200.{SUBNET}.3"
CLIENT_U = f"10.200.{SUBNET}.4"
EXIT_TIMEOUT = 15.0

pytestmark = needs_root


@dataclass
class Site:
    pair: VethPair
    tap_redis: RedisServer
    tap: RunningAgent
    wire_redis: redis.Redis
    agent: subprocess.Popen[bytes]
    log: Path
    capture: Path
    tcpdump: subprocess.Popen[bytes]

    def ask(self, name: str, qtype: str = "A", *, v6: bool = False, options: tuple[str, ...] = (),
            server: str | None = None, source: str | None = None) -> str:  # fmt: skip
        p = self.pair
        return dig(
            53, name, qtype,
            source or (p.addr6_a if v6 else p.addr_a),
            server=server or (p.addr6_b if v6 else p.addr_b),
            netns=p.ns_a, options=options,
        )  # fmt: skip

    def wire_keys(self, *clients: str) -> dict[str, str]:
        return {k: v for k, v in w.keys(self.wire_redis).items() if k.split(";")[0] in clients
                or k.split(";")[1] in clients}  # fmt: skip

    def tap_keys(self, *clients: str) -> dict[str, str]:
        dump = redis_dump(self.tap_redis.client())
        return {k: v for k, v in dump.items() if k.split(";")[0] in clients
                or k.split(";")[1] in clients}  # fmt: skip

    def last_stats(self) -> dict[str, int]:
        """The integer counters of the latest stats line."""
        lines = [x for x in self.log.read_text().splitlines() if "event=dnswire_stats" in x]
        return (
            {m[1]: int(m[2]) for m in re.finditer(r" (\w+)=(\d+)(?= |$)", lines[-1])}
            if lines
            else {}
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("dnswire-live")
    sock = base / "dnstap.sock"
    with (
        veth_pair(subnet=SUBNET) as pair,
        redis_server(base) as tap_redis,
        unix_redis_server(base) as wire_sock,
        running_agent(tap_redis.url, sock) as tap,
    ):
        run("ip", "-n", pair.ns_b, "addr", "add", f"{UNBOUND4}/24", "dev", pair.dev_b)
        run("ip", "-n", pair.ns_a, "addr", "add", f"{CLIENT_U}/24", "dev", pair.dev_a)
        log = base / "dnswire.log"
        capture = base / "seen.pcap"
        with (
            bind(base / "bind", sock, listen=pair.addr_b, listen6=pair.addr6_b, port=53,
                 netns=pair.ns_b, extra="    max-udp-size 4096;\n    edns-udp-size 4096;\n"),
            unbound(base / "unbound", 53, listen=UNBOUND4, port=53, bind_addr=pair.addr_b,
                    netns=pair.ns_b),
            log.open("wb") as err,
        ):  # fmt: skip
            tcpdump = subprocess.Popen(
                pair.exec_a("tcpdump", "-i", pair.dev_a, "-U", "-w", str(capture), "-s", "0",
                            "port 53 or (ip[6:2] & 0x3fff != 0) or (ip6 and ip6[6] = 44)"),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            agent = subprocess.Popen(
                pair.exec_a(sys.executable, "-m", "pcapd", "agent", "dnswire",
                            "--interface", pair.dev_a, "--redis-url", f"unix://{wire_sock}",
                            "--stats-interval", "0.3"),
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
            try:
                assert tcpdump.stderr is not None
                tcpdump.stderr.readline()  # "listening on ..."
                wait_for(lambda: b"event=dnswire_started" in log.read_bytes(), timeout=20)
                yield Site(pair, tap_redis, tap, redis.Redis(unix_socket_path=str(wire_sock)),
                           agent, log, capture, tcpdump)  # fmt: skip
            finally:
                stop_process(agent)
                stop_process(tcpdump)
                assert tcpdump.stderr is not None
                tcpdump.stderr.close()


def test_bind_answers_through_both_agents_give_the_same_keys(site: Site) -> None:
    p = site.pair
    assert "192.0.2.10" in site.ask("www.example.test")
    assert "2001:db8::10" in site.ask("www.example.test", "AAAA")
    assert "198.51.100.7" in site.ask("alias.example.test")
    assert site.ask("nope.example.test") == ""
    assert "198.51.100.7" in site.ask("mid.example.test", options=("+tcp",))
    assert "192.0.2.95" in site.ask("big.example.test", options=("+bufsize=4096", "+notcp"))
    assert "2001:db8:0:1::7" in site.ask("target.example.test", "AAAA", v6=True)
    assert "192.0.2.11" in site.ask("www.example.test", v6=True, options=("+tcp",))
    clients = (p.addr_a, p.addr6_a)

    last = (f"{p.addr_a};192.0.2.95;dns", f"{p.addr6_a};192.0.2.11;dns",
            f"{p.addr6_a};2001:db8:0:1::7;dns")  # fmt: skip

    def same() -> bool:
        tap = site.tap_keys(*clients)
        return all(k in tap for k in last) and site.wire_keys(*clients) == tap

    wait_for(same, timeout=15)
    keys = site.wire_keys(*clients)
    assert keys[f"{p.addr_a};mid.example.test.;cname"] == ";alias.example.test.;"
    assert keys[f"{p.addr_a};192.0.2.95;dns"] == ";big.example.test.;"
    assert keys[f"{p.addr6_a};2001:db8:0:1::7;dns"] == ";target.example.test.;"
    assert f"{p.addr_a};nope.example.test.;nx" in keys
    for key in keys:
        assert 0 < site.wire_redis.ttl(key) <= 900
    # The big answer came in fragments, and two answers over TCP.
    wait_for(lambda: site.last_stats().get("reassembled", 0) >= 1
             and site.last_stats().get("tcp_messages", 0) >= 2, timeout=10)  # fmt: skip


def dnspython_keys(capture: Path) -> dict[str, set[str]]:
    """The name keys implied by every response in `capture`, as tshark
    reassembles the packets (fragments, TCP) and dnspython reads them."""
    out = subprocess.run(
        ["tshark", "-r", str(capture), "-Y", "dns.flags.response == 1", "-T", "json", "-x"],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    keys: dict[str, set[str]] = {}
    for packet in json.loads(out.stdout):
        layers = packet["_source"]["layers"]
        raw = bytes.fromhex(layers["dns_raw"][0])
        if "tcp" in layers:
            raw = raw[2:]  # the length prefix
        ip = layers.get("ip") or layers["ipv6"]
        client = str(ipaddress.ip_address(ip.get("ip.dst") or ip["ipv6.dst"]))
        resp = reference(raw)
        if resp.rcode != 0 or resp.qtype not in (1, 28):
            continue
        for alias, target in itertools.pairwise(resp.chain):
            keys.setdefault(f"{client};{target};cname", set()).add(alias)
        for _rtype, address in resp.addresses:
            keys.setdefault(f"{client};{address};dns", set()).add(resp.chain[-1])
    return keys


def test_keys_match_dnspython_reading_of_the_captured_packets(site: Site) -> None:
    p = site.pair
    wait_for(lambda: site.capture.stat().st_size > 5000, timeout=10)
    expected = dnspython_keys(site.capture)
    assert f"{p.addr_a};192.0.2.95;dns" in expected  # the fragmented answer
    clients = (p.addr_a, p.addr6_a)
    names = {k: set(v.strip(";").split(";;")) for k, v in site.wire_keys(*clients).items()
             if k.endswith((";dns", ";cname"))}  # fmt: skip
    assert names == {k: v for k, v in expected.items() if k.split(";")[0] in clients}


def test_recursive_answers_from_unbound(site: Site) -> None:
    assert "198.51.100.7" in site.ask("alias.example.test", server=UNBOUND4, source=CLIENT_U)
    c = CLIENT_U
    expected = {
        f"client;{c}": "1",
        f"{c};mid.example.test.;cname": ";alias.example.test.;",
        f"{c};target.example.test.;cname": ";mid.example.test.;",
        f"{c};198.51.100.7;dns": ";target.example.test.;",
    }
    wait_for(lambda: site.wire_keys(c) == expected, timeout=15)
    assert site.tap_keys(c) == {}  # Unbound sends no dnstap here: only the wire saw it


RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 0))
print(sock.getsockname()[1], flush=True)
while True:
    print(sock.recv(65535).hex(), flush=True)
"""


def test_dnsflow_command_line_of_an_old_unit_keeps_working(site: Site, tmp_path: Path) -> None:
    """`dnsflow -i IFACE -u ADDR -M 0` as DNSFlow's units run it; the v4
    records of Unbound's (recursive) answers arrive, then a stats packet."""
    p = site.pair
    conf = tmp_path / "pcapd.toml"
    conf.write_text("[agents.dnswire]\nrecord = false\nexport_stats_interval = 0.5\n")
    receiver = subprocess.Popen(p.exec_a(sys.executable, "-c", RECEIVER, p.addr_a),
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert receiver.stdout is not None
    port = int(receiver.stdout.readline())
    log = tmp_path / "dnsflow.log"
    with log.open("wb") as err:
        dnsflow = subprocess.Popen(
            p.exec_a(str(Path(sys.executable).parent / "dnsflow"), "-i", p.dev_a,
                     "-u", f"{p.addr_a}:{port}", "-M", "0", "--config", str(conf)),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: b"event=dnswire_started" in log.read_bytes(), timeout=20)
        assert "198.51.100.7" in site.ask("alias.example.test", server=UNBOUND4, source=CLIENT_U)
        assert "192.0.2.10" in site.ask("www.example.test")  # BIND: RA clear, not exported
        packets: list[reader.Packet] = []
        while not any(x.flags & 1 for x in packets) or not any(x.sets for x in packets):
            packets.append(reader.read(bytes.fromhex(receiver.stdout.readline().decode())))
    finally:
        stop_process(dnsflow)
        stop_process(receiver)
        receiver.stdout.close()
    sets = [s for x in packets for s in x.sets]
    assert [(s.client, s.resolver) for s in sets] == [(CLIENT_U, UNBOUND4)]
    assert [reader.text(n) for n in sets[0].names] == [
        "alias.example.test.", "mid.example.test.", "target.example.test."]  # fmt: skip
    assert sets[0].ips == ["198.51.100.7"]
    stats = next(x for x in packets if x.flags & 1)
    assert stats.stats is not None and stats.stats[0] >= 2  # both answers captured
    assert "Traceback" not in log.read_text()


def test_sigterm_flushes_and_exits_cleanly(site: Site) -> None:
    site.agent.send_signal(signal.SIGTERM)
    assert site.agent.wait(EXIT_TIMEOUT) == 0
    text = site.log.read_text()
    assert "event=dnswire_done" in text and "Traceback" not in text


SENDER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
sock.sendto(bytes.fromhex(sys.argv[3]), (sys.argv[2], 40000))
"""


def test_an_interface_named_as_linux_allows_is_captured(tmp_path: Path) -> None:
    """`tap#1` and `wg+home`, names Linux allows (and the config's rule refused
    for a while): `dnsflow -i 'tap#1'` captures there and exports the answer
    `wg+home`'s side sent."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"hfx-a-{tag}", f"hfx-b-{tag}"
    addr_a, addr_b = "10.226.0.1", "10.226.0.2"
    run("ip", "netns", "add", ns_a)
    run("ip", "netns", "add", ns_b)
    receiver = None
    try:
        run("ip", "link", "add", "tap#1", "netns", ns_a, "type", "veth",
            "peer", "name", "wg+home", "netns", ns_b)  # fmt: skip
        for ns, dev, addr in ((ns_a, "tap#1", addr_a), (ns_b, "wg+home", addr_b)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        run("ip", "-n", ns_a, "link", "set", "lo", "up")
        receiver = subprocess.Popen(["ip", "netns", "exec", ns_a, sys.executable, "-c", RECEIVER,
                                     "127.0.0.1"], stdout=subprocess.PIPE)  # fmt: skip
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        conf = tmp_path / "pcapd.toml"
        conf.write_text("[agents.dnswire]\nrecord = false\n")
        log = tmp_path / "dnsflow.log"
        with log.open("wb") as err:
            dnsflow = subprocess.Popen(
                ["ip", "netns", "exec", ns_a, str(Path(sys.executable).parent / "dnsflow"),
                 "-i", "tap#1", "-u", f"127.0.0.1:{port}", "--config", str(conf)],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        try:
            wait_for(lambda: b"event=dnswire_started" in log.read_bytes(), timeout=20)
            answer = w.response("www.example.test", "A", [("www.example.test", "A", "192.0.2.10")])
            run("ip", "netns", "exec", ns_b, sys.executable, "-c", SENDER, addr_b, addr_a,
                answer.hex())  # fmt: skip
            ready, _, _ = select.select([receiver.stdout], [], [], 20)
            assert ready, log.read_text()
            packet = reader.read(bytes.fromhex(receiver.stdout.readline().decode()))
        finally:
            stop_process(dnsflow)
        assert [(s.client, s.resolver, s.ips) for s in packet.sets] == [
            (addr_a, addr_b, ["192.0.2.10"])
        ]
        assert "Traceback" not in log.read_text()
    finally:
        if receiver is not None:
            stop_process(receiver)
            assert receiver.stdout is not None
            receiver.stdout.close()
        run("ip", "netns", "del", ns_a, check=False)
        run("ip", "netns", "del", ns_b, check=False)
