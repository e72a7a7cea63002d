from __future__ import annotations

import contextlib
import ipaddress

import dns.name
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dnstap.errors import DnsFormError
from agents.dnstap.response import Response, address_text, parse_response
from tests.agents.dnstap.builders import reference, response_wire


def test_cname_chain_to_addresses() -> None:
    wire = response_wire(
        "Alias.Example.TEST.",
        "A",
        [
            ("alias.example.test.", "CNAME", "MID.example.test."),
            ("mid.example.test.", "CNAME", "target.example.test."),
            ("target.example.test.", "A", "198.51.100.7"),
            ("target.example.test.", "A", "198.51.100.8"),
            ("elsewhere.example.test.", "A", "192.0.2.99"),
        ],
    )
    assert parse_response(wire) == Response(
        "alias.example.test.", 1, 0,
        ("alias.example.test.", "mid.example.test.", "target.example.test."),
        ((1, "198.51.100.7"), (1, "198.51.100.8")),
    )  # fmt: skip


def test_nxdomain_and_aaaa() -> None:
    nx = parse_response(response_wire("nope.example.test.", "A", rcode=dns.rcode.NXDOMAIN))
    assert (nx.rcode, nx.chain, nx.addresses) == (3, ("nope.example.test.",), ())
    answer = [("www.example.test.", "AAAA", "2001:DB8:0::10")]
    v6 = parse_response(response_wire("www.example.test.", "AAAA", answer))
    assert v6.addresses == ((28, "2001:db8::10"),)


def test_escaped_names_match_dnspython() -> None:
    name = dns.name.Name([b"we\x00ird.", b'q"(@)$;\\ ', b"\xff", b""])
    wire = response_wire(name, "A", [(name, "A", "192.0.2.1")])
    assert parse_response(wire) == reference(wire)
    assert parse_response(wire).qname == 'we\\000ird\\..q\\"\\(\\@\\)\\$\\;\\\\\\032.\\255.'


def test_cname_loop_stops() -> None:
    wire = response_wire("a.test.", "A", [("a.test.", "CNAME", "b.test."),
                                          ("b.test.", "CNAME", "a.test.")])  # fmt: skip
    assert parse_response(wire).chain == ("a.test.", "b.test.")


@pytest.mark.parametrize(
    ("hexwire", "message"),
    [
        ("0001", "shorter than the DNS header"),
        ("000101000001000000000000" "00" "00010001", "QR=0"),
        ("000181000002000000000000", "qdcount=2"),
        ("000181000001000000000000" "03616263", "runs past the end"),
        ("000181000001000000000000" "c00c" "00010001", "does not point back"),
        ("000181000001000000000000" "c00f" "00010001", "does not point back"),
        ("000181000001000000000000" "40", "label type 0x40"),
        ("000181000001000000000000" "00" "0001", "question is truncated"),
        ("000181000001000100000000" "00" "00010001" "00" "0001000100", "is truncated"),
        ("000181000001000100000000" "00" "00010001" "00" "00010001" "0000012c" "0005" "01020304",
         "runs past the end"),
        ("000181000001000100000000" "00" "00010001" "00" "00010001" "0000012c" "0003" "010203",
         "type 1 rdata of 3 bytes"),
        ("000181000001000100000000" "00" "00010001" "00" "00050001" "0000012c" "0002" "0000",
         "trailing bytes"),
    ],
)  # fmt: skip
def test_malformed_responses(hexwire: str, message: str) -> None:
    with pytest.raises(DnsFormError, match=message.replace("(", r"\(")):
        parse_response(bytes.fromhex(hexwire))


def test_name_longer_than_255_bytes() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\x00"
    wire = bytes.fromhex("000181000001000000000000") + labels + b"\x00\x01\x00\x01"
    with pytest.raises(DnsFormError, match="longer than 255"):
        parse_response(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=16, max_size=16))
def test_ipv6_text_is_ipaddress(packed: bytes) -> None:
    assert address_text(packed) == str(ipaddress.IPv6Address(packed))
    assert address_text(packed[:4]) == str(ipaddress.IPv4Address(packed[:4]))


_label = st.binary(min_size=1, max_size=12) | st.sampled_from([b"www", b"CDN", b"a-b", b"x_y"])
_name = st.lists(_label, min_size=1, max_size=4).map(lambda ls: dns.name.Name([*ls, b""]))


@settings(max_examples=300, deadline=None)
@given(
    qname=_name,
    qtype=st.sampled_from(["A", "AAAA"]),
    hops=st.lists(_name, max_size=4, unique=True),
    v4=st.lists(st.ip_addresses(v=4), max_size=3),
    v6=st.lists(st.ip_addresses(v=6), max_size=3),
    noise=st.lists(st.tuples(_name, st.ip_addresses(v=4)), max_size=3),
)
def test_random_responses_match_dnspython(
    qname: dns.name.Name,
    qtype: str,
    hops: list[dns.name.Name],
    v4: list[ipaddress.IPv4Address],
    v6: list[ipaddress.IPv6Address],
    noise: list[tuple[dns.name.Name, ipaddress.IPv4Address]],
) -> None:
    # One CNAME per owner: dnspython keeps only the last of several (illegal) ones.
    hops = [hop for hop in hops if hop != qname]
    answers: list[tuple[str | dns.name.Name, str, str]] = []
    owner = qname
    for hop in hops:
        answers.append((owner, "CNAME", hop.to_text()))
        owner = hop
    answers += [(owner, "A", str(a)) for a in v4] + [(owner, "AAAA", str(a)) for a in v6]
    answers += [(n, "A", str(a)) for n, a in noise]
    wire = response_wire(qname, qtype, answers)
    fast = parse_response(wire)
    ref = reference(wire)
    assert (fast.qname, fast.qtype, fast.rcode, fast.chain) == (
        ref.qname, ref.qtype, ref.rcode, ref.chain,
    )  # fmt: skip
    # dnspython merges repeated records of one name into one rdataset (order
    # and repeats change); the agent's append-if-absent ignores both.
    assert sorted(set(fast.addresses)) == sorted(ref.addresses)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_dns_form_errors(data: bytes) -> None:
    for wire in (data, bytes.fromhex("000181000001000200000000") + data):
        with contextlib.suppress(DnsFormError):
            parse_response(wire)
