"""An independent reader of DNSFlow v4 packets for the tests, written from
the layout in DESIGN.md (dnsflow.c's structs), not from agents.dnswire."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass
class DataSet:
    ip_vers: int
    client: str
    resolver: str
    names: list[bytes]  # wire format, each ending with the root label
    names_len: int
    padding: bytes
    ips: list[str]
    ip6s: list[str]


@dataclass
class Packet:
    version: int
    sets_count: int
    flags: int
    sequence: int
    sets: list[DataSet]
    stats: tuple[int, ...] | None
    size: int


def _u16(b: bytes, at: int) -> int:
    return b[at] << 8 | b[at + 1]


def _u32(b: bytes, at: int) -> int:
    return int.from_bytes(b[at : at + 4], "big")


def read(packet: bytes) -> Packet:
    version, sets_count, flags, sequence = packet[0], packet[1], _u16(packet, 2), _u32(packet, 4)
    if flags & 1:
        stats = tuple(_u32(packet, 8 + 4 * i) for i in range(5))
        assert len(packet) == 28, len(packet)
        return Packet(version, sets_count, flags, sequence, [], stats, len(packet))
    at = 8
    sets = []
    for _ in range(sets_count):
        ip_vers, n_names, n_ips, n_ip6s = packet[at : at + 4]
        names_len = _u16(packet, at + 4)
        assert packet[at + 6 : at + 8] == b"\0\0"
        width = 4 if ip_vers == 4 else 16
        client_raw, resolver_raw = packet[at + 8 : at + 24], packet[at + 24 : at + 40]
        if width == 4:  # the rest of each 16-byte field is zero
            assert client_raw[4:] == bytes(12) and resolver_raw[4:] == bytes(12)
        client = str(ipaddress.ip_address(client_raw[:width]))
        resolver = str(ipaddress.ip_address(resolver_raw[:width]))
        at += 40
        names_end = at + names_len
        names = []
        pos = at
        for _ in range(n_names):
            start = pos
            while packet[pos]:
                pos += packet[pos] + 1
            pos += 1
            names.append(packet[start:pos])
        padding = packet[pos:names_end]
        at = names_end
        ips = [
            str(ipaddress.IPv4Address(packet[at + 4 * i : at + 4 * i + 4])) for i in range(n_ips)
        ]
        at += 4 * n_ips
        ip6s = [str(ipaddress.IPv6Address(packet[at + 16 * i : at + 16 * i + 16]))
                for i in range(n_ip6s)]  # fmt: skip
        at += 16 * n_ip6s
        sets.append(DataSet(ip_vers, client, resolver, names, names_len, padding, ips, ip6s))
    assert at == len(packet), (at, len(packet))
    return Packet(version, sets_count, flags, sequence, sets, None, len(packet))


def text(name: bytes) -> str:
    labels = []
    pos = 0
    while name[pos]:
        labels.append(name[pos + 1 : pos + 1 + name[pos]].decode())
        pos += name[pos] + 1
    return ".".join(labels) + "."
