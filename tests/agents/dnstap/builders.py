"""dnstap payloads and DNS responses built with dnspython, and dnspython as
the reference parser the fast one is held to."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset

from agents.dnstap import dnstap_pb2
from agents.dnstap.response import Response

CLIENT_RESPONSE = dnstap_pb2.Message.CLIENT_RESPONSE


def response_wire(
    qname: str | dns.name.Name,
    qtype: str = "A",
    answers: Sequence[tuple[str | dns.name.Name, str, str]] | None = None,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
) -> bytes:
    query = dns.message.make_query(qname, qtype)
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for owner, rtype, value in answers or []:
        reply.answer.append(dns.rrset.from_text(owner, 300, "IN", rtype, value))
    wire: bytes = reply.to_wire()
    return wire


def tap_payload(
    response: bytes | None,
    client: str = "127.0.0.1",
    kind: int = CLIENT_RESPONSE,
    identity: bytes = b"test",
) -> bytes:
    tap = dnstap_pb2.Dnstap(type=dnstap_pb2.Dnstap.MESSAGE, identity=identity)
    m = tap.message
    m.type = kind  # type: ignore[assignment]
    packed = ipaddress.ip_address(client).packed
    m.socket_family = dnstap_pb2.INET if len(packed) == 4 else dnstap_pb2.INET6
    m.socket_protocol = dnstap_pb2.UDP
    m.query_address = packed
    m.query_port = 53000
    m.response_address = ipaddress.ip_address("127.0.0.53").packed
    m.response_port = 53
    m.query_time_sec, m.query_time_nsec = 1_700_000_000, 250_000_000
    m.response_time_sec, m.response_time_nsec = 1_700_000_000, 500_000_000
    if response is not None:
        m.response_message = response
    payload: bytes = tap.SerializeToString()
    return payload


def reference(wire: bytes) -> Response:
    """What dnspython makes of a response, in the fast parser's terms."""
    msg = dns.message.from_wire(wire)
    qname = msg.question[0].name.to_text().lower()
    cnames: dict[str, str] = {}
    records: list[tuple[str, int, str]] = []
    for rrset in msg.answer:
        owner = rrset.name.to_text().lower()
        for rr in rrset:
            if rrset.rdtype == dns.rdatatype.CNAME:
                cnames.setdefault(owner, rr.target.to_text().lower())
            elif rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                records.append((owner, int(rrset.rdtype), str(ipaddress.ip_address(rr.address))))
    chain = [qname]
    while chain[-1] in cnames and cnames[chain[-1]] not in chain:
        chain.append(cnames[chain[-1]])
    end = chain[-1]
    addresses = tuple((t, a) for o, t, a in records if o == end)
    return Response(qname, int(msg.question[0].rdtype), msg.rcode(), tuple(chain), addresses)
