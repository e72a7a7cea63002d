"""The BPF filter: DNSFlow's default, widened to TCP and fragments, with slots.

DNSFlow's filter keeps UDP from port 53 (and 5353 with -Y) whose QR bit is
set (IPv4), plus one VLAN level. pcapd also keeps TCP from the DNS ports,
IPv4 and IPv6 fragments (the first piece of a large answer carries the
port, the others do not), IPv6 with extension headers (BPF's `udp` does not
walk them; the decoder does), what -X / -J carry, and follows QinQ.

A slot (`-m i/n`) keeps 1/n of the responses, split as DNSFlow splits them:
IPv4 by the client (destination) address modulo n, or with -c by the UDP
checksum when it is not zero; IPv6 UDP by the UDP checksum. Packets whose
checksum is no stable key (TCP segments, fragments) go by the client
address for both families, so one stream or datagram stays in one slot.
`%` is written as `x - x / n * n`, as DNSFlow does, for BPF engines that
lack it. Offsets assume no IPv4 options in the slotting expression, as
DNSFlow's do.
"""

from __future__ import annotations

from collections.abc import Iterable

from agents.flow.packets import DLT_EN10MB


def _mod(expr: str, n: int, i: int) -> str:
    return f"({expr} - {expr} / {n} * {n} = {i})"


def _base(ports: Iterable[int]) -> str:
    src = " or ".join(f"src port {p}" for p in sorted(set(ports)))
    return (
        f"((udp and ({src}) and (ip6 or udp[10] & 0x80 = 0x80))"
        f" or (tcp and ({src}))"
        " or (ip and ip[6:2] & 0x3fff != 0)"
        # IPv6 fragments and extension headers, which BPF's `udp` does not walk
        " or (ip6 and (ip6[6] = 44 or ip6[6] = 0 or ip6[6] = 43 or ip6[6] = 60 or ip6[6] = 51)))"
    )


def _slot(n: int, i: int, checksum4: bool) -> str:
    client4 = _mod("ip[16:4]", n, i)
    client6 = _mod("ip6[36:4]", n, i)
    if checksum4:
        # Not a fragment: only the first holds the UDP header, and BPF's
        # udp[6:2] in the others reads the answer's bytes.
        by_sum = "udp and ip[6:2] & 0x3fff = 0 and udp[6:2] != 0"
        v4 = f"(ip and (({by_sum} and {_mod('udp[6:2]', n, i)}) or (not ({by_sum}) and {client4})))"
    else:
        v4 = f"(ip and {client4})"
    v6 = f"(ip6 and ((ip6[6] = 17 and {_mod('ip6[46:2]', n, i)}) or (ip6[6] != 17 and {client6})))"
    return f"({v4} or {v6})"


def build_filter(
    *,
    linktype: int,
    ports: Iterable[int] = (53,),
    slot: tuple[int, int] = (1, 1),
    checksum4: bool = False,
    pcap_record_port: int | None = None,
    jmirror_port: int | None = None,
) -> str:
    """`slot` is DNSFlow's 1-based (i, n)."""
    i, n = slot
    inner = _base(ports)
    if n > 1:
        inner = f"({inner} and {_slot(n, i - 1, checksum4)})"
    outer = [inner]
    # Encapsulated traffic: the outer packet only, the inner one is checked
    # after decoding (BPF cannot follow the encapsulation), slotted there too.
    if pcap_record_port is not None:
        outer.append(f"(udp and dst port {pcap_record_port})")
    if jmirror_port is not None:
        outer.append(f"(udp and dst port {jmirror_port})")
    expr = " or ".join(outer)
    if linktype == DLT_EN10MB:  # `vlan` exists for Ethernet only
        expr = f"({expr}) or (vlan and (({expr}) or (vlan and ({expr}))))"
    return expr


def slot_of(client: bytes, n: int) -> int:
    """The 0-based slot of `client` by DNSFlow's client-address rule: what
    decapsulated (-X / -J) messages are slotted by, after decoding."""
    return int.from_bytes(client[-4:], "big") % n
