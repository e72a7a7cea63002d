"""`-r FILE`: generated captures of each link type and encapsulation, through
the decoder and the dnstap agent's Recorder into a real redis-server."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import dns.rcode
import pytest

from agents.flow.packets import (
    DLT_EN10MB,
    DLT_LINUX_SLL,
    DLT_LINUX_SLL2,
    DLT_NULL,
    DLT_RAW,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
)
from tests.agents.dnswire import wire as w
from tests.agents.flow import frames as f
from tests.helpers import RedisServer

CHAIN = w.response(
    "alias.example.test", "A",
    [("alias.example.test.", "CNAME", "mid.example.test."),
     ("mid.example.test.", "CNAME", "target.example.test."),
     ("target.example.test.", "A", "198.51.100.7"),
     ("target.example.test.", "A", "198.51.100.8")],
)  # fmt: skip


def chain_keys(client: str) -> dict[str, str]:
    return {
        f"client;{client}": "1",
        f"{client};mid.example.test.;cname": ";alias.example.test.;",
        f"{client};target.example.test.;cname": ";mid.example.test.;",
        f"{client};198.51.100.7;dns": ";target.example.test.;",
        f"{client};198.51.100.8;dns": ";target.example.test.;",
    }


def names(keys: dict[str, str]) -> dict[str, str]:
    """The dns and cname keys: what the name chain gives, whatever the counters."""
    return {k: v for k, v in keys.items() if k.endswith((";dns", ";cname"))}


def null(packet: bytes) -> bytes:
    family = 2 if packet[0] >> 4 == 4 else 24  # AF_INET6 as BSDs number it, which libpcap reads
    return struct.pack("=I", family) + packet


LINKS: list[tuple[str, int, Callable[[bytes], bytes]]] = [
    ("ethernet", DLT_EN10MB, f.ether),
    ("vlan", DLT_EN10MB, lambda p: f.ether(p, vlans=[10])),
    ("qinq", DLT_EN10MB, lambda p: f.ether(p, vlans=[10, 20])),
    ("sll", DLT_LINUX_SLL, f.sll),
    ("sll2", DLT_LINUX_SLL2, f.sll2),
    ("raw", DLT_RAW, lambda p: p),
    ("null", DLT_NULL, null),
]


@pytest.mark.parametrize(("name", "linktype", "frame"), LINKS, ids=[x[0] for x in LINKS])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_each_link_type(
    tmp_path: Path, redis_srv: RedisServer, name: str, linktype: int,
    frame: Callable[[bytes], bytes], v6: bool,
) -> None:  # fmt: skip
    path = tmp_path / f"{name}.pcap"
    f.write_pcap(path, [frame(w.udp_packet(CHAIN, v6=v6))], linktype=linktype)
    with w.file_agent(redis_srv.url, path) as agent:
        assert agent.counts[0] == 1
    client = w.CLIENT6 if v6 else w.CLIENT4
    got = w.keys(redis_srv.client())
    assert got == w.dnstap_view(redis_srv.url, [(client, CHAIN)])
    assert names(got) == names(chain_keys(client))


def test_ipv4_and_ipv6_link_types(tmp_path: Path, redis_srv: RedisServer) -> None:
    for linktype, v6 in ((LINKTYPE_IPV4, False), (LINKTYPE_IPV6, True)):
        path = tmp_path / f"{linktype}.pcap"
        f.write_pcap(path, [w.udp_packet(CHAIN, v6=v6)], linktype=linktype)
        with w.file_agent(redis_srv.url, path):
            pass
    assert w.keys(redis_srv.client()) == w.dnstap_view(
        redis_srv.url, [(w.CLIENT4, CHAIN), (w.CLIENT6, CHAIN)]
    )


def test_ipv6_extension_headers_are_walked(tmp_path: Path, redis_srv: RedisServer) -> None:
    udp = f.udp(53, 40000, CHAIN)
    ext = f.ext_header(60, 1) + f.ext_header(17, 0)  # hop-by-hop -> destination options
    path = tmp_path / "ext.pcap"
    f.write_pcap(path, [f.ether(f.ip6(w.RESOLVER6, w.CLIENT6, 0, udp, ext=ext))])
    with w.file_agent(redis_srv.url, path):
        pass
    assert w.keys(redis_srv.client()) == w.dnstap_view(redis_srv.url, [(w.CLIENT6, CHAIN)])


def test_nxdomain_aaaa_and_ignored_kinds(tmp_path: Path, redis_srv: RedisServer) -> None:
    messages = [
        w.response("nope.example.test", "A", rcode=dns.rcode.NXDOMAIN),
        w.response("www.example.test", "AAAA", [("www.example.test", "AAAA", "2001:db8::10")]),
        w.response("www.example.test", "MX", [("www.example.test", "MX", "10 mx.example.test.")]),
        w.response("bad.example.test", "A", rcode=dns.rcode.SERVFAIL),
    ]
    path = tmp_path / "kinds.pcap"
    f.write_pcap(path, [f.ether(w.udp_packet(m)) for m in messages])
    with w.file_agent(redis_srv.url, path) as agent:
        assert agent.record_stats.other_qtype == 1
        assert agent.record_stats.other_rcode == 1
    c = w.CLIENT4
    got = w.keys(redis_srv.client())
    assert got == w.dnstap_view(redis_srv.url, [(c, m) for m in messages])
    assert f"{c};nope.example.test.;nx" in got
    assert names(got) == {f"{c};2001:db8::10;dns": ";www.example.test.;"}


def test_queries_and_other_ports_are_not_responses(tmp_path: Path, redis_srv: RedisServer) -> None:
    packets = [
        f.ip4(w.CLIENT4, w.RESOLVER4, 17, f.udp(40000, 53, CHAIN)),  # to port 53, not from
        f.ip4(w.RESOLVER4, w.CLIENT4, 17, f.udp(5353, 40000, CHAIN)),  # mDNS, not asked for
    ]
    path = tmp_path / "other.pcap"
    f.write_pcap(path, [f.ether(p) for p in packets])
    with w.file_agent(redis_srv.url, path, bpf="udp") as agent:
        assert agent.counts[0] == 0
    assert w.keys(redis_srv.client()) == {}
    with w.file_agent(redis_srv.url, path, bpf="udp", mdns=True) as agent:
        assert agent.counts[0] == 1
    assert w.keys(redis_srv.client()) == w.dnstap_view(redis_srv.url, [(w.CLIENT4, CHAIN)])


def test_extra_source_ports(tmp_path: Path, redis_srv: RedisServer) -> None:
    path = tmp_path / "port.pcap"
    f.write_pcap(path, [f.ether(f.ip4(w.RESOLVER4, w.CLIENT4, 17, f.udp(5300, 4, CHAIN)))])
    with w.file_agent(redis_srv.url, path, ports=[5300]) as agent:
        assert agent.counts[0] == 1
    assert w.keys(redis_srv.client()) == w.dnstap_view(redis_srv.url, [(w.CLIENT4, CHAIN)])


BIG = w.response(
    "big.example.test", "A",
    [("big.example.test", "A", f"192.0.2.{i}") for i in range(1, 201)],
)  # fmt: skip


def big_keys(client: str) -> dict[str, str]:
    keys = {f"{client};192.0.2.{i};dns": ";big.example.test.;" for i in range(1, 201)}
    return keys | {f"client;{client}": "1"}


@pytest.mark.parametrize("shuffle", [False, True], ids=["in_order", "out_of_order"])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_dns_over_tcp(tmp_path: Path, redis_srv: RedisServer, shuffle: bool, v6: bool) -> None:
    path = tmp_path / "tcp.pcap"
    segments = w.tcp_segments([CHAIN, BIG], v6=v6, cut=97, shuffle=shuffle)
    f.write_pcap(path, [f.ether(s) for s in segments])
    with w.file_agent(redis_srv.url, path) as agent:
        assert agent.reassembly_counts[7] == 2  # tcp_messages
        assert len(agent.streams) == 0 and agent.streams.held == 0  # closed by FIN
    client = w.CLIENT6 if v6 else w.CLIENT4
    got = w.keys(redis_srv.client())
    assert got == w.dnstap_view(redis_srv.url, [(client, CHAIN), (client, BIG)])
    assert names(got) == names(chain_keys(client) | big_keys(client))


def test_ipv4_fragments(tmp_path: Path, redis_srv: RedisServer) -> None:
    packet = w.udp_packet(BIG)
    pieces = w.ip4_fragments(packet, 512)
    assert len(pieces) > 3
    path = tmp_path / "frag4.pcap"
    f.write_pcap(path, [f.ether(p) for p in reversed(pieces)])
    with w.file_agent(redis_srv.url, path) as agent:
        assert agent.reassembly_counts[1] == 1  # reassembled
        assert len(agent.fragments) == 0 and agent.fragments.held == 0
    got = w.keys(redis_srv.client())
    assert got == w.dnstap_view(redis_srv.url, [(w.CLIENT4, BIG)])
    assert names(got) == names(big_keys(w.CLIENT4))


def test_ipv6_fragments(tmp_path: Path, redis_srv: RedisServer) -> None:
    pieces = w.ip6_fragments(f.udp(53, 40000, BIG), size=504)
    path = tmp_path / "frag6.pcap"
    f.write_pcap(path, [f.ether(p) for p in pieces])
    with w.file_agent(redis_srv.url, path) as agent:
        assert agent.reassembly_counts[1] == 1
    assert w.keys(redis_srv.client()) == w.dnstap_view(redis_srv.url, [(w.CLIENT6, BIG)])


def test_pcap_record_and_jmirror_encapsulations(tmp_path: Path, redis_srv: RedisServer) -> None:
    inner = f.ether(w.udp_packet(CHAIN))
    record = struct.pack("<IIII", 1, 2, len(inner), len(inner)) + inner
    x = f.ip4("10.9.9.1", "10.9.9.2", 17, f.udp(999, 2055, record))
    j = f.ip4("10.9.9.1", "10.9.9.2", 17, f.udp(999, 30030, struct.pack("!II", 1, 2) +
                                           w.udp_packet(CHAIN, v6=True)))  # fmt: skip
    path = tmp_path / "encap.pcap"
    f.write_pcap(path, [f.ether(x), f.ether(j)])
    with w.file_agent(redis_srv.url, path) as agent:
        assert agent.counts[0] == 0  # not asked to open them: other ports
    assert w.keys(redis_srv.client()) == {}
    with w.file_agent(redis_srv.url, path, pcap_record_port=2055, jmirror_port=30030) as agent:
        assert agent.counts[6] == 2 and agent.counts[0] == 2
    assert w.keys(redis_srv.client()) == w.dnstap_view(
        redis_srv.url, [(w.CLIENT4, CHAIN), (w.CLIENT6, CHAIN)]
    )


def test_sampling_keeps_about_one_in_n_and_says_so(tmp_path: Path, redis_srv: RedisServer) -> None:
    path = tmp_path / "many.pcap"
    # 4,000 distinct responses: dnspython builds one, the others differ in
    # the name's digits (building each costs ~1 ms; so many, most of the test).
    template = w.response("h0000.example.test", "A", [("h0000.example.test", "A", "192.0.2.1")])
    assert template.count(b"\x05h0000\x07example") == 1
    frames = [f.ether(w.udp_packet(template.replace(b"h0000", b"h%04d" % i))) for i in range(4000)]
    f.write_pcap(path, frames)
    with w.file_agent(redis_srv.url, path, sample_rate=4) as agent:
        kept = agent.record_stats.responses
        assert agent.sampled_out + kept == 4000
        assert 800 <= kept <= 1200  # binomial(4000, 1/4): 1000 +- 5 sigma
        assert agent.snapshot()["sample_rate"] == 4
    assert w.keys(redis_srv.client())[f"client;{w.CLIENT4}"] == str(kept)


def test_a_file_waits_for_a_slower_redis_and_loses_nothing(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    # 2,000 distinct answers, ~3 operations each, through a queue of 1,000:
    # a live capture would drop what does not fit, a file read waits.
    messages = [
        w.response(f"h{i}.test", "A", [(f"h{i}.test", "A", f"198.18.{i >> 8}.{i & 255}")])
        for i in range(2000)
    ]
    path = tmp_path / "many.pcap"
    f.write_pcap(path, [f.ether(w.udp_packet(m)) for m in messages])
    with w.file_agent(redis_srv.url, path, max_queue_ops=1000, batch_ops=100) as agent:
        pass
    assert agent.writer is not None and agent.writer.stats.dropped_ops == 0
    client = redis_srv.client()
    assert client.get(f"client;{w.CLIENT4}") == b"2000"
    assert client.get(f"{w.CLIENT4};198.18.7.207;dns") == b";h1999.test.;"
