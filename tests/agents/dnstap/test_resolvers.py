"""Real BIND 9.18 and Unbound 1.17 sending dnstap to the agent, real dig,
real redis-server. One set of servers for the module: each test queries
from its own loopback source address (127.0.0.N) so keys do not mix."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agents.dnstap.message import decode_dnstap
from agents.dnstap.response import parse_response
from tests.agents.dnstap.builders import reference
from tests.agents.dnstap.harness import RunningAgent, redis_dump, running_agent
from tests.agents.dnstap.resolvers import (
    STATUS_AND_ANSWER,
    Resolver,
    bind,
    dig,
    serves_zone,
    unbound,
)
from tests.helpers import RedisServer, free_port, redis_server, wait_for


@dataclass
class Site:
    redis: RedisServer
    agent: RunningAgent
    bind: Resolver
    unbound_unix: Resolver
    unbound_tcp: Resolver
    frames: list[bytes]

    def keys_of(self, client: str) -> dict[str, str]:
        dump = redis_dump(self.redis.client())
        return {k: v for k, v in dump.items() if k.split(";")[0] == client or k.endswith(client)}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("dnstap-site")
    sock = base / "dnstap.sock"
    frames: list[bytes] = []
    with (
        redis_server(base) as rs,
        running_agent(rs.url, sock, record=frames, listen="127.0.0.1:0") as ra,
        bind(base / "bind", sock) as named,
        unbound(base / "unbound-unix", named.port, socket_path=sock) as ub_unix,
        unbound(base / "unbound-tcp", named.port, tcp_port=ra.tcp_port) as ub_tcp,
    ):
        yield Site(rs, ra, named, ub_unix, ub_tcp, frames)


def _keys(client: str) -> dict[str, str]:
    return {
        f"client;{client}": "5",  # +1 per address (www A holds two), +1 per NXDOMAIN
        f"{client};192.0.2.10;dns": ";www.example.test.;",
        f"{client};192.0.2.11;dns": ";www.example.test.;",
        f"{client};2001:db8::10;dns": ";www.example.test.;",
        f"{client};mid.example.test.;cname": ";alias.example.test.;",
        f"{client};target.example.test.;cname": ";mid.example.test.;",
        f"{client};198.51.100.7;dns": ";target.example.test.;",
        f"{client};nope.example.test.;nx": "1",
    }


def _lookups(port: int, client: str) -> None:
    assert "192.0.2.10" in dig(port, "www.example.test", "A", client)
    assert "2001:db8::10" in dig(port, "www.example.test", "AAAA", client)
    assert "198.51.100.7" in dig(port, "alias.example.test", "A", client)
    assert dig(port, "nope.example.test", "A", client) == ""


@pytest.mark.parametrize(
    ("resolver", "client"),
    [("bind", "127.0.0.11"), ("unbound_unix", "127.0.0.12"), ("unbound_tcp", "127.0.0.13")],
)
def test_a_aaaa_cname_chain_and_nxdomain(site: Site, resolver: str, client: str) -> None:
    server: Resolver = getattr(site, resolver)
    _lookups(server.port, client)
    expected = _keys(client)
    wait_for(lambda: site.keys_of(client) == expected, timeout=10)
    assert site.redis.client().ttl(f"{client};198.51.100.7;dns") > 890


def test_bind_gives_shodohflos_values(site: Site) -> None:
    """dig through BIND, values as ShoDoHFlo writes them: dnstap_agent's
    `MyMapper.map_fields` sends a datagram per final address, which dns_agent's
    `Consumer.process_message` drops when the "address" is no address (NODATA,
    a CNAME out of the zone); `nx_to_redis` counts every NXDOMAIN and
    unescapes `\\;`."""
    client = "127.0.0.14"
    port = site.bind.port
    assert "192.0.2.11" in dig(port, "www.example.test", "A", client)
    assert dig(port, "v6only.example.test", "A", client) == ""  # NODATA
    assert "elsewhere.invalid." in dig(port, "away.example.test", "A", client)
    for _ in range(2):  # within the 1 s dedup window: both count
        assert dig(port, "nope.example.test", "A", client) == ""
    assert dig(port, "semi\\;colon.example.test", "A", client) == ""
    expected = {
        f"client;{client}": "5",  # two addresses + three NXDOMAIN
        f"{client};192.0.2.10;dns": ";www.example.test.;",
        f"{client};192.0.2.11;dns": ";www.example.test.;",
        f"{client};nope.example.test.;nx": "2",
        f"{client};semi;colon.example.test.;nx": "1",
    }
    wait_for(lambda: site.keys_of(client) == expected, timeout=10)


def test_two_clients_asking_the_same_name_both_get_keys(site: Site) -> None:
    for client in ("127.0.0.21", "127.0.0.22"):
        assert "203.0.113.5" in dig(site.bind.port, "MiXeD.example.test", "A", client)
    for client in ("127.0.0.21", "127.0.0.22"):
        want = {f"client;{client}": "1", f"{client};203.0.113.5;dns": ";mixed.example.test.;"}
        wait_for(lambda c=client, w=want: site.keys_of(c) == w)


def test_both_resolvers_connected_at_once(site: Site) -> None:
    for server in (site.bind, site.unbound_unix, site.unbound_tcp):
        dig(server.port, "www.example.test", "A", "127.0.0.31")
    wait_for(lambda: site.agent.snapshot()["connections_open"] >= 3)
    listeners = sorted(c["listener"] for c in site.agent.snapshot()["per_connection"])
    assert listeners.count("unix") >= 2 and "tcp" in listeners
    assert site.agent.snapshot()["frame_errors"] == {}


def test_fast_parser_matches_dnspython_on_real_traffic(site: Site) -> None:
    n0 = len(site.frames)  # the shared site has carried other tests' traffic
    for name, qtype in [("alias.example.test", "AAAA"), ("www.example.test", "A"),
                        ("nope.example.test", "AAAA"), ("example.test", "NS")]:  # fmt: skip
        dig(site.unbound_unix.port, name, qtype, "127.0.0.41")
        dig(site.bind.port, name, qtype, "127.0.0.41")
    wait_for(lambda: len(site.frames) - n0 >= 8)
    for payload in list(site.frames[n0:]):
        wire = decode_dnstap(payload).response_message
        assert wire is not None
        assert parse_response(wire) == reference(wire)


def test_unbound_dnstap_tls(site: Site, tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
         "-subj", "/CN=dnstap.test", "-addext", "subjectAltName=DNS:dnstap.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    tls: dict[str, Any] = {"listen": "127.0.0.1:0", "tls_cert": str(cert), "tls_key": str(key)}
    client = "127.0.0.61"
    with (
        running_agent(site.redis.url, None, **tls) as ra,
        unbound(
            tmp_path / "ub", site.bind.port, tcp_port=ra.tcp_port, tls=(str(cert), "dnstap.test")
        ) as ub,  # fmt: skip
    ):
        assert "192.0.2.10" in dig(ub.port, "www.example.test", "A", client)
        want = {f"client;{client}": "2", f"{client};192.0.2.10;dns": ";www.example.test.;",
                f"{client};192.0.2.11;dns": ";www.example.test.;"}  # fmt: skip
        wait_for(lambda: site.keys_of(client) == want)
        assert [c["listener"] for c in ra.snapshot()["per_connection"]] == ["tls"]


FRESH_STARTS = 8  # a fresh named SERVFAILed its first query in about 1 start of 3


def test_the_readiness_probe_wants_an_answer_not_dig_output() -> None:
    """Before anything listens, dig prints ";; communications error" on
    stdout, even with +short: the probe must not take that for an answer."""
    assert not serves_zone(free_port())


def test_a_fresh_bind_answers_its_first_query(tmp_path: Path) -> None:
    """Once `bind()` returns, named has loaded the zone: the first query, from
    a client it has not seen, is answered NOERROR with the address."""
    for start in range(FRESH_STARTS):
        with bind(tmp_path / f"bind{start}", tmp_path / "nobody.sock") as named:
            out = dig(named.port, "www.example.test", "A", "127.0.0.91", options=STATUS_AND_ANSWER)
            assert "status: NOERROR," in out and "192.0.2.10" in out, (start, out)
