"""The hot-path parser on frames built with dpkt: every link type, IPv6 extension
headers, ICMP unreachables, and truncated / malformed input counted, never raised."""

from __future__ import annotations

import ipaddress
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.flow import packets
from tests.agents.flow import frames as f

A4, B4 = "10.200.1.1", "192.0.2.7"
A6, B6 = "fd00:200:1::1", "2001:db8::7"
ACK, SYN, FIN, RST = dpkt.tcp.TH_ACK, dpkt.tcp.TH_SYN, dpkt.tcp.TH_FIN, dpkt.tcp.TH_RST


class Recorder:
    """A Sink that keeps what the parser hands it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes, int]] = []

    def flow(self, ts: int, key: bytes, flags: int) -> None:
        self.events.append(("flow", key, flags))

    def rst(self, ts: int, key: bytes, flags: int) -> None:
        self.events.append(("rst", key, flags))

    def icmp(self, ts: int, key: bytes) -> None:
        self.events.append(("icmp", key, 0))


def run(linktype: int, *frames: bytes) -> tuple[Recorder, dict[str, int]]:
    sink = Recorder()
    counts = packets.new_counts()
    handler = packets.make_handler(linktype, sink, counts)
    for frame in frames:
        handler(0, frame)
    return sink, dict(zip(packets.COUNTER_NAMES, counts, strict=True))


def flow_key(src: str, dst: str, sport: int, dport: int) -> bytes:
    a, b = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    return a + b + struct.pack("!HH", sport, dport)


def tcp4(flags: int = ACK, sport: int = 443, dport: int = 50000) -> bytes:
    return f.ip4(B4, A4, 6, f.tcp(sport, dport, flags))


def tcp6(flags: int = ACK, sport: int = 443, dport: int = 50000) -> bytes:
    return f.ip6(B6, A6, 6, f.tcp(sport, dport, flags))


@pytest.mark.parametrize(
    ("linktype", "wrap"),
    [
        (packets.DLT_EN10MB, f.ether),
        (packets.DLT_EN10MB, lambda p: f.ether(p, vlans=[100])),
        (packets.DLT_EN10MB, lambda p: f.ether(p, vlans=[10, 20])),
        (packets.DLT_LINUX_SLL, f.sll),
        (packets.DLT_LINUX_SLL2, f.sll2),
        (packets.DLT_RAW, lambda p: p),
        (packets.LINKTYPE_RAW, lambda p: p),
        (packets.DLT_NULL, lambda p: struct.pack("=I", 2 if p[0] >> 4 == 4 else 10) + p),
    ],
    ids=["ether", "vlan", "qinq", "sll", "sll2", "raw", "linktype-raw", "null"],
)
def test_link_types_both_versions(linktype: int, wrap: object) -> None:
    assert callable(wrap)
    sink, counts = run(
        linktype, wrap(tcp4()), wrap(tcp6()), wrap(f.ip4(B4, A4, 17, f.udp(53, 4000)))
    )
    assert sink.events == [
        ("flow", flow_key(B4, A4, 443, 50000), ACK),
        ("flow", flow_key(B6, A6, 443, 50000), ACK),
        ("flow", flow_key(B4, A4, 53, 4000), 0),
    ]
    assert counts["parsed"] == 3


def test_ipv4_only_and_ipv6_only_link_types() -> None:
    sink, _ = run(packets.LINKTYPE_IPV4, tcp4())
    assert sink.events == [("flow", flow_key(B4, A4, 443, 50000), ACK)]
    sink, _ = run(packets.LINKTYPE_IPV6, f.ip6(B6, A6, 17, f.udp(123, 123)))
    assert sink.events == [("flow", flow_key(B6, A6, 123, 123), 0)]


def test_unsupported_link_type_is_refused() -> None:
    with pytest.raises(ValueError, match="link type 105 is not supported"):
        packets.make_handler(105, Recorder(), packets.new_counts())


def test_tcp_flags_syn_fin_rst() -> None:
    sink, counts = run(
        packets.DLT_EN10MB,
        f.ether(tcp4(SYN)),
        f.ether(tcp4(SYN | ACK)),
        f.ether(tcp4(FIN | ACK)),
        f.ether(tcp4(RST | ACK)),
        f.ether(tcp4(ACK | dpkt.tcp.TH_PUSH)),
    )
    assert [(kind, flags) for kind, _key, flags in sink.events] == [
        ("rst", RST | ACK),
        ("flow", ACK | dpkt.tcp.TH_PUSH),
    ]
    assert counts["syn_fin"] == 3 and counts["parsed"] == 5


def test_ipv6_extension_headers_are_walked() -> None:
    chain = (
        f.ext_header(60) + f.ext_header(43, 1) + f.ext_header(6)
    )  # hop -> dest -> routing -> tcp
    first_fragment = f.fragment_header(17, 0, more=True)
    later_fragment = f.fragment_header(17, 100)
    sink, counts = run(
        packets.DLT_EN10MB,
        f.ether(f.ip6(B6, A6, 0, f.tcp(443, 50000, ACK), ext=chain)),
        f.ether(f.ip6(B6, A6, 44, f.udp(53, 4000), ext=first_fragment)),
        f.ether(f.ip6(B6, A6, 44, b"\0" * 16, ext=later_fragment)),
        f.ether(f.ip6(B6, A6, 59, b"")),  # no next header
    )
    assert sink.events == [
        ("flow", flow_key(B6, A6, 443, 50000), ACK),
        ("flow", flow_key(B6, A6, 53, 4000), 0),
    ]
    assert counts["fragment"] == 1 and counts["other_proto"] == 1


def test_ipv4_fragments_other_than_the_first_are_skipped() -> None:
    sink, counts = run(
        packets.DLT_EN10MB,
        f.ether(f.ip4(B4, A4, 17, f.udp(53, 4000), more=True)),  # first fragment
        f.ether(f.ip4(B4, A4, 17, b"\0" * 16, frag_offset=185)),
    )
    assert sink.events == [("flow", flow_key(B4, A4, 53, 4000), 0)]
    assert counts["fragment"] == 1


def test_icmp_unreachable_v4_and_v6() -> None:
    quoted4 = f.ip4(A4, B4, 17, f.udp(40002, 7777))
    quoted6 = f.ip6(A6, B6, 60, f.udp(40002, 7777), ext=f.ext_header(17))
    sink, counts = run(
        packets.DLT_EN10MB,
        f.ether(f.ip4(B4, A4, 1, f.icmp4_unreach(3, quoted4))),
        f.ether(f.ip6(B6, A6, 58, f.icmp6_unreach(4, quoted6))),
        f.ether(f.ip4(B4, A4, 1, bytes(dpkt.icmp.ICMP(type=8, data=b"ping")))),
        f.ether(f.ip4(B4, A4, 1, f.icmp4_unreach(1, f.ip4(A4, B4, 47, b"gre-payload")))),
    )
    assert sink.events == [
        ("icmp", ipaddress.ip_address(A4).packed + ipaddress.ip_address(B4).packed
         + struct.pack("!HHB", 40002, 7777, 3), 0),
        ("icmp", ipaddress.ip_address(A6).packed + ipaddress.ip_address(B6).packed
         + struct.pack("!HHB", 40002, 7777, 4), 0),
    ]  # fmt: skip
    assert counts["icmp_other"] == 2


def test_keys_match_dpkt_as_reference() -> None:
    frames = [
        f.ether(f.ip4(f"198.51.100.{i}", A4, 6, f.tcp(1000 + i, 2000 + i, ACK))) for i in range(20)
    ] + [f.ether(f.ip6(f"2001:db8::{i:x}", A6, 17, f.udp(3000 + i, 53))) for i in range(20)]
    sink, _ = run(packets.DLT_EN10MB, *frames)
    for (_kind, key, _flags), frame in zip(sink.events, frames, strict=True):
        eth = dpkt.ethernet.Ethernet(frame)
        ip, l4 = eth.data, eth.data.data
        assert key == ip.src + ip.dst + struct.pack("!HH", l4.sport, l4.dport)


MALFORMED = [
    ("truncated", f.ether(tcp4())[: 14 + 20 + 10]),  # TCP header cut before the flags
    ("truncated", f.ether(tcp4())[:20]),  # IPv4 header cut
    ("truncated", f.ether(tcp6())[: 14 + 30]),
    ("truncated", f.ether(f.ip4(B4, A4, 17, f.udp(1, 2)))[: 14 + 22]),
    ("truncated", b"\x00" * 10),  # shorter than Ethernet
    ("truncated", f.ether(f.ip4(B4, A4, 1, f.icmp4_unreach(3, f.ip4(A4, B4, 17, b"")[:20])))),
    ("malformed", f.MAC_B + f.MAC_A + b"\x08\x00" + b"\x65" + tcp4()[1:]),  # v6 in IPv4 type
    ("malformed", f.ether(b"\x43" + tcp4()[1:])),  # IHL 3
    (
        "malformed",
        f.ether(f.ip6(B6, A6, 0, f.udp(1, 2), ext=f.ext_header(0) * 9)),
    ),  # chain too long
    ("truncated", f.ether(f.ip6(B6, A6, 0, f.udp(1, 2), ext=bytes((0, 200))))),  # runs off the end
    ("not_ip", f.MAC_B + f.MAC_A + b"\x08\x06" + b"\x00" * 28),  # ARP
    ("other_proto", f.ether(f.ip4(B4, A4, 47, b"gre"))),
]


@pytest.mark.parametrize(("counter", "frame"), MALFORMED)
def test_bad_frames_are_counted(counter: str, frame: bytes) -> None:
    sink, counts = run(packets.DLT_EN10MB, frame, f.ether(tcp4()))
    assert counts[counter] == 1, counts
    # the next packet is parsed as usual
    assert sink.events == [("flow", flow_key(B4, A4, 443, 50000), ACK)]


@settings(max_examples=300, deadline=None)
@given(
    linktype=st.sampled_from(packets.LINK_TYPES),
    data=st.binary(max_size=120),
    prefix=st.sampled_from([b"", f.ether(tcp6())[:54], f.ether(tcp4())[:34]]),
)
def test_random_bytes_never_raise_and_are_counted_once(
    linktype: int, data: bytes, prefix: bytes
) -> None:
    sink, counts = run(linktype, prefix + data)
    outcomes = sum(
        counts[name]
        for name in ("parsed", "not_ip", "other_proto", "fragment", "truncated", "malformed")
    )
    assert outcomes == 1 and counts["errors"] == 0, counts
    assert len(sink.events) <= 1
