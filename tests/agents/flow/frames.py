"""Test frames built with dpkt (the reference library), and pcap files of them."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from pathlib import Path

import dpkt

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
ETH_IP4 = 0x0800
ETH_IP6 = 0x86DD
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8


def _addr(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def tcp(sport: int, dport: int, flags: int = dpkt.tcp.TH_ACK, payload: bytes = b"data") -> bytes:
    return bytes(dpkt.tcp.TCP(sport=sport, dport=dport, flags=flags, data=payload))


def udp(sport: int, dport: int, payload: bytes = b"data") -> bytes:
    return bytes(dpkt.udp.UDP(sport=sport, dport=dport, data=payload, ulen=8 + len(payload)))


def ip4(
    src: str, dst: str, proto: int, payload: bytes, *, frag_offset: int = 0, more: bool = False
) -> bytes:
    """`frag_offset` in 8-byte units; `more` sets the more-fragments flag."""
    packet = dpkt.ip.IP(src=_addr(src), dst=_addr(dst), p=proto, data=payload)
    packet.offset = frag_offset
    packet.mf = int(more)
    packet.len = 20 + len(payload)
    return bytes(packet)


def ip6(src: str, dst: str, proto: int, payload: bytes, *, ext: bytes = b"") -> bytes:
    """`ext` is raw extension headers; `proto` is the first next-header value."""
    body = ext + payload
    header = struct.pack("!IHBB", 6 << 28, len(body), proto, 64)
    return header + _addr(src) + _addr(dst) + body


def ext_header(next_header: int, length_units: int = 0) -> bytes:
    """A hop-by-hop / destination-options style header of (length_units + 1) * 8 bytes."""
    size = (length_units + 1) * 8
    return bytes((next_header, length_units)) + bytes(size - 2)


def fragment_header(next_header: int, offset_units: int, more: bool = False) -> bytes:
    return struct.pack("!BBHI", next_header, 0, offset_units << 3 | int(more), 0x1234)


def icmp4_unreach(code: int, quoted_ip: bytes) -> bytes:
    return struct.pack("!BBHI", 3, code, 0, 0) + quoted_ip


def icmp6_unreach(code: int, quoted_ip: bytes) -> bytes:
    return struct.pack("!BBHI", 1, code, 0, 0) + quoted_ip


def ether(ip_packet: bytes, *, vlans: Iterable[int] = ()) -> bytes:
    """Ethernet II; with two VLAN ids the outer tag is 802.1ad (QinQ)."""
    tags = list(vlans)
    etype = ETH_IP4 if ip_packet[0] >> 4 == 4 else ETH_IP6
    header = MAC_B + MAC_A
    for index, vid in enumerate(tags):
        tpid = ETH_QINQ if len(tags) == 2 and index == 0 else ETH_VLAN
        header += struct.pack("!HH", tpid, vid)
    return header + struct.pack("!H", etype) + ip_packet


def sll(ip_packet: bytes) -> bytes:
    etype = ETH_IP4 if ip_packet[0] >> 4 == 4 else ETH_IP6
    return struct.pack("!HHH8sH", 0, 1, 6, MAC_A + b"\0\0", etype) + ip_packet


def sll2(ip_packet: bytes) -> bytes:
    etype = ETH_IP4 if ip_packet[0] >> 4 == 4 else ETH_IP6
    return struct.pack("!HHIHBB8s", etype, 0, 2, 1, 0, 6, MAC_A + b"\0\0") + ip_packet


def write_pcap(path: Path, frames: Iterable[bytes], linktype: int = 1, start: float = 1e9) -> None:
    """A classic pcap file; timestamps 1 ms apart from `start`."""
    with path.open("wb") as handle:
        writer = dpkt.pcap.Writer(handle, snaplen=65535, linktype=linktype)
        for index, frame in enumerate(frames):
            writer.writepkt(frame, ts=start + index / 1000)
