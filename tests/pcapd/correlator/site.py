"""One small site for the correlator tests, every part real and started here.

Namespace A holds the client (10.200.73.1, fd00:200:73::1), BIND answering
its dig, the flow agent on its veth and a `pcapd serve` capturing there;
namespace B the services (10.200.73.2 with DNS behind it, 10.200.73.3
without, fd00:200:73::2). The dnstap agent runs in this process; every agent
writes to one private redis-server (TCP for us, a unix socket for the
namespaces, which cannot reach our 127.0.0.1). `pcapd web` serves the
correlator on a free loopback port, with signing and a token.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.agents.dnstap.harness import RunningAgent, running_agent
from tests.agents.dnstap.resolvers import ZONE_FILE, Resolver, bind, dig
from tests.agents.flow import traffic
from tests.helpers import (
    RedisServer,
    VethPair,
    free_port,
    redis_server,
    run,
    stop_process,
    veth_pair,
    wait_for,
)
from tests.pcapd.daemon_fixture import Daemon

SUBNET = 73
NO_DNS = f"10.200.{SUBNET}.3"  # a service the client talks to without asking DNS
NEIGHBOUR = f"10.200.{SUBNET}.5"  # another client, in namespace A too, who did ask
TOKEN = "correlator-test-token-0123456789"
SIGNING_KEY = "site-signing-key-abcdef"
SCRIPT_NAME = "<script>alert(1)</script>"
IMG_NAME = '"><img/src=x/onerror=alert(1)>'
# As the agents store them: dnspython's text, `"` and `(` `)` escaped.
SCRIPT_KEY = "<script>alert\\(1\\)</script>.example.test."
IMG_KEY = '\\"><img/src=x/onerror=alert\\(1\\)>.example.test.'
ZONE = (
    ZONE_FILE
    + f"""svc      IN A    10.200.{SUBNET}.2
svc      IN AAAA fd00:200:{SUBNET}::2
web      IN CNAME edge.example.test.
edge     IN CNAME svc.example.test.
other    IN A    {NO_DNS}
<script>alert\\(1\\)</script> IN A 192.0.2.66
\\"><img/src=x/onerror=alert\\(1\\)> IN CNAME svc.example.test.
"""
)
WEB_CONFIG = """
[general]
node = "correlator"

[redis]
port = {port}
results_stream = "capture-results"

[[interface]]
name = "{dev}"
alias = ["veth"]

[security]
keys = {{ correlator = "{key}" }}

[correlator]
port = {web_port}
token = "{token}"
kid = "correlator"
scan_count = 50
max_duration = 20
default_duration = 10
"""
REPO = Path(__file__).resolve().parents[3]
TRAFFIC = Path(traffic.__file__)


@dataclass
class Site:
    redis: RedisServer
    pair: VethPair
    bind: Resolver
    dnstap: RunningAgent
    daemon: Daemon
    web_url: str
    web_config: Path
    web_log: Path

    @property
    def client(self) -> str:
        return self.pair.addr_a

    @property
    def client6(self) -> str:
        return self.pair.addr6_a

    @property
    def service(self) -> str:
        return self.pair.addr_b

    @property
    def service6(self) -> str:
        return self.pair.addr6_b

    def traffic(self, *addresses: str) -> None:
        send_traffic(self.pair, *addresses)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.web_url + path, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()


def send_traffic(pair: VethPair, *addresses: str) -> None:
    """The traffic client in namespace A: echo on TCP and UDP, an RST, an ICMP."""
    done = subprocess.run(
        pair.exec_a(sys.executable, str(TRAFFIC), "client", *addresses),
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode()


def _lookups(pair: VethPair, port: int) -> None:
    def ask(name: str, qtype: str = "A") -> str:
        return dig(port, name, qtype, pair.addr_a, netns=pair.ns_a)

    assert pair.addr_b in ask("svc.example.test")
    assert pair.addr6_b in ask("svc.example.test", "AAAA")
    assert pair.addr_b in ask("web.example.test")
    assert ask("nope.example.test") == ""
    assert "192.0.2.66" in ask("<script>alert\\(1\\)</script>.example.test")
    assert pair.addr_b in ask('\\"><img/src=x/onerror=alert\\(1\\)>.example.test')
    assert NO_DNS in dig(port, "other.example.test", "A", NEIGHBOUR, netns=pair.ns_a)


@contextlib.contextmanager
def _process(args: list[str], log: Path, **options: object) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **options)  # type: ignore[call-overload]
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
        stop_process(proc)


@contextlib.contextmanager
def site(base: Path) -> Iterator[Site]:
    sock = base / "redis.sock"
    with (
        redis_server(base, unixsocket=sock) as rs,
        veth_pair(subnet=SUBNET) as pair,
        running_agent(rs.url, base / "dnstap.sock") as dnstap,
        bind(base / "bind", base / "dnstap.sock", zone=ZONE, netns=pair.ns_a) as named,
    ):
        run("ip", "-n", pair.ns_b, "addr", "add", f"{NO_DNS}/24", "dev", pair.dev_b)
        run("ip", "-n", pair.ns_a, "addr", "add", f"{NEIGHBOUR}/24", "dev", pair.dev_a)
        serve = [sys.executable, str(TRAFFIC), "serve", pair.addr_b, NO_DNS, pair.addr6_b]
        flow = [sys.executable, "-m", "pcapd", "agent", "flow", pair.dev_a,
                f"{pair.addr_a}/32,{pair.addr6_a}/128", "--redis", f"unix://{sock}"]  # fmt: skip
        flow_log = base / "flow.log"
        with (
            _process(pair.exec_b(*serve), base / "traffic.log") as server,
            _process(pair.exec_a(*flow), flow_log, cwd=REPO),
        ):
            wait_for(lambda: b"ready" in (base / "traffic.log").read_bytes(), timeout=20)
            assert server.poll() is None
            wait_for(lambda: b"event=flow_started" in flow_log.read_bytes(), timeout=20)
            _lookups(pair, named.port)
            send_traffic(pair, pair.addr_b, NO_DNS, pair.addr6_b)
            wait_for(lambda: set(expected_keys(pair)) <= _keys(rs), timeout=20)
            daemon = Daemon(
                rs, base / "daemon", wrap=("ip", "netns", "exec", pair.ns_a),
                extra_redis=f'url = "unix://{sock}"',
                extra_sections=f'[[interface]]\nname = "{pair.dev_a}"\nalias = ["veth"]\n\n'
                f'[security]\nkeys = {{ correlator = "{SIGNING_KEY}" }}\nrequire_signed = true\n',
            )  # fmt: skip
            web_port = free_port()
            web_config = base / "web.toml"
            web_config.write_text(WEB_CONFIG.format(port=rs.port, dev=pair.dev_a, key=SIGNING_KEY,
                                                    web_port=web_port, token=TOKEN))  # fmt: skip
            web_log = base / "web.log"
            daemon.start()
            try:
                with web_server(web_config, web_log) as url:
                    yield Site(rs, pair, named, dnstap, daemon, url, web_config, web_log)
            finally:
                daemon.stop()


def expected_keys(pair: VethPair) -> list[str]:
    a4, b4, a6, b6 = pair.addr_a, pair.addr_b, pair.addr6_a, pair.addr6_b
    rst4, rst6 = traffic.RST_PORT[socket.AF_INET], traffic.RST_PORT[socket.AF_INET6]
    icmp4, icmp6 = traffic.ICMP_PORT[socket.AF_INET], traffic.ICMP_PORT[socket.AF_INET6]
    keys = [
        f"{a4};svc.example.test.;cname", f"{a4};edge.example.test.;cname",
        f"{a4};{b4};dns", f"{a4};{b6};dns", f"{a4};192.0.2.66;dns",
        f"{a4};nope.example.test.;nx", f"{NEIGHBOUR};{NO_DNS};dns",
        f"{a6};{b6};{traffic.TCP_PORT};flow",
        f"{a6};{b6};{rst6}:{traffic.CLOSED_TCP};rst",
        f"{a6};{b6};{icmp6}:{traffic.CLOSED_UDP};4;icmp",
    ]  # fmt: skip
    for service in (b4, NO_DNS):
        keys += [
            f"{a4};{service};{traffic.TCP_PORT};flow", f"{a4};{service};{traffic.UDP_PORT};flow",
            f"{a4};{service};{rst4}:{traffic.CLOSED_TCP};rst",
            f"{a4};{service};{icmp4}:{traffic.CLOSED_UDP};3;icmp",
        ]  # fmt: skip
    return keys


def _keys(server: RedisServer) -> set[str]:
    return {k.decode() for k in server.client().scan_iter(count=1000)}


@contextlib.contextmanager
def web_server(config: Path, log: Path) -> Iterator[str]:
    """`pcapd web -c config` as a subprocess; yields its base URL once it answers."""
    port = int(re.search(r"\[correlator\]\nport = (\d+)", config.read_text())[1])  # type: ignore[index]
    url = f"http://127.0.0.1:{port}"
    web = [sys.executable, "-m", "pcapd", "web", "-c", str(config)]
    with _process(web, log, env={**os.environ, "PYTHONUNBUFFERED": "1"}) as proc:

        def up() -> bool:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(url + "/", timeout=5) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        wait_for(up, timeout=20)
        yield url
