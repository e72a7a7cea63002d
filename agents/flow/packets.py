"""Header parsing on the hot path: link layer -> IPv4/IPv6 -> TCP/UDP/ICMP.

Written for speed: byte indexing and slices on the captured `bytes`, one
small `bytes` key per packet handed to the sink, no object kept per packet.
A packet yields one of three events for the sink:

- `flow(ts, key, flags)`: TCP without SYN/FIN/RST, or UDP. `key` is
  src + dst addresses + the 4 port bytes (12 bytes for IPv4, 36 for IPv6).
- `rst(ts, key, flags)`: TCP with RST; same key layout.
- `icmp(ts, key)`: ICMP / ICMPv6 destination unreachable quoting a TCP/UDP
  header. `key` is dst + quoted dst + quoted ports + code (13 or 37 bytes).

Everything else is counted by reason in `counts` (indexes below), including
truncated and malformed packets, which never raise out of the handler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

# Link types (DLT_* as pcap_datalink() reports them, plus LINKTYPE_* values
# a savefile may carry).
DLT_NULL = 0
DLT_EN10MB = 1
DLT_RAW = 12
DLT_RAW_OPENBSD = 14
LINKTYPE_RAW = 101
DLT_LOOP = 108
DLT_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
DLT_LINUX_SLL2 = 276
LINK_TYPES = (
    DLT_NULL,
    DLT_EN10MB,
    DLT_RAW,
    DLT_RAW_OPENBSD,
    LINKTYPE_RAW,
    DLT_LOOP,
    DLT_LINUX_SLL,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    DLT_LINUX_SLL2,
)

ETH_IP4 = 0x0800
ETH_IP6 = 0x86DD
ETH_VLAN = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2
ETH_HEADER = 14
SLL_HEADER = 16
SLL2_HEADER = 20
NULL_HEADER = 4

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMP6 = 58
ICMP_UNREACH = 3
ICMP6_UNREACH = 1
TH_FIN = 0x01
TH_SYN = 0x02
TH_RST = 0x04
# IPv6 extension headers walked to reach the transport header.
EXT_FRAGMENT = 44
EXT_AH = 51
IP6_EXTENSIONS = frozenset((0, 43, 60, 135, 139, 140, EXT_FRAGMENT, EXT_AH))
MAX_EXT_HEADERS = 8  # a chain longer than this is treated as malformed
IP4_HEADER = 20
IP6_HEADER = 40
TCP_FLAGS_OFFSET = 13
ICMP_HEADER = 8

# Counter indexes into the `counts` list the handler increments.
PARSED = 0  # reached a TCP/UDP/ICMP header
NOT_IP = 1
OTHER_PROTO = 2
FRAGMENT = 3  # non-first fragments carry no ports
TRUNCATED = 4
MALFORMED = 5
SYN_FIN = 6
ICMP_OTHER = 7  # ICMP that is not a destination unreachable with TCP/UDP inside
ERRORS = 8  # anything unexpected: counted, never raised
COUNTER_NAMES = (
    "parsed",
    "not_ip",
    "other_proto",
    "fragment",
    "truncated",
    "malformed",
    "syn_fin",
    "icmp_other",
    "errors",
)


class Sink(Protocol):
    def flow(self, ts: int, key: bytes, flags: int) -> None: ...
    def rst(self, ts: int, key: bytes, flags: int) -> None: ...
    def icmp(self, ts: int, key: bytes) -> None: ...


Handler = Callable[[int, bytes], None]


def new_counts() -> list[int]:
    return [0] * len(COUNTER_NAMES)


def _walk6(buf: bytes, at: int, nh: int) -> tuple[int, int]:
    """Skip IPv6 extension headers: (transport protocol, its offset), or -1 for a fragment."""
    for _ in range(MAX_EXT_HEADERS):
        if nh not in IP6_EXTENSIONS:
            return nh, at
        if nh == EXT_FRAGMENT:
            if (buf[at + 2] << 8 | buf[at + 3]) & 0xFFF8:
                return -1, at
            nh = buf[at]
            at += 8
        elif nh == EXT_AH:
            nh, at = buf[at], at + (buf[at + 1] + 2) * 4
        else:
            nh, at = buf[at], at + (buf[at + 1] + 1) * 8
    raise ValueError("extension header chain too long")


def make_handler(linktype: int, sink: Sink, counts: list[int]) -> Handler:
    """The per-packet callback for pypcap's `dispatch`, for one link type."""
    flow = sink.flow
    rst = sink.rst
    icmp = sink.icmp
    extensions = IP6_EXTENSIONS

    def icmp4(buf: bytes, off: int, l4: int) -> bytes | None:
        if buf[l4] != ICMP_UNREACH:
            return None
        inner = l4 + ICMP_HEADER
        b0 = buf[inner]
        ihl = (b0 & 15) << 2
        if b0 >> 4 != 4 or ihl < IP4_HEADER or buf[inner + 9] not in (PROTO_TCP, PROTO_UDP):
            return None
        ports = inner + ihl
        if len(buf) < ports + 4:
            raise IndexError("quoted ports truncated")
        return (
            buf[off + 16 : off + 20]
            + buf[inner + 16 : inner + 20]
            + buf[ports : ports + 4]
            + (buf[l4 + 1 : l4 + 2])
        )

    def icmp6(buf: bytes, off: int, l4: int) -> bytes | None:
        if buf[l4] != ICMP6_UNREACH:
            return None
        inner = l4 + ICMP_HEADER
        if buf[inner] >> 4 != 6:
            return None
        proto, ports = _walk6(buf, inner + IP6_HEADER, buf[inner + 6])
        if proto not in (PROTO_TCP, PROTO_UDP):
            return None
        if len(buf) < ports + 4:
            raise IndexError("quoted ports truncated")
        return (
            buf[off + 24 : off + 40]
            + buf[inner + 24 : inner + 40]
            + buf[ports : ports + 4]
            + (buf[l4 + 1 : l4 + 2])
        )

    def unreachable(
        ts: int,
        buf: bytes,
        end: int,
        off: int,
        l4: int,
        parse: Callable[[bytes, int, int], bytes | None],
    ) -> None:
        """ICMP or ICMPv6: only "destination unreachable" quoting TCP/UDP is kept."""
        if end < l4 + ICMP_HEADER:
            counts[TRUNCATED] += 1
            return
        key = parse(buf[:end], off, l4)
        counts[PARSED] += 1
        if key is None:
            counts[ICMP_OTHER] += 1
        else:
            icmp(ts, key)

    def ip4(ts: int, buf: bytes, off: int) -> None:
        b0 = buf[off]
        ihl = (b0 & 15) << 2
        if b0 >> 4 != 4 or ihl < IP4_HEADER:
            counts[MALFORMED] += 1
            return
        if (buf[off + 6] & 0x1F) | buf[off + 7]:
            counts[FRAGMENT] += 1
            return
        # A zero total length is what segmentation offload leaves: trust the capture.
        total = buf[off + 2] << 8 | buf[off + 3]
        end = len(buf) if total == 0 else min(len(buf), off + total)
        proto = buf[off + 9]
        l4 = off + ihl
        if proto == PROTO_ICMP:
            unreachable(ts, buf, end, off, l4, icmp4)
            return
        # TCP and UDP inline: this is the path nearly every packet takes, so
        # ip6 below repeats it (with IPv6 address offsets) rather than pay a call.
        if proto == PROTO_TCP:
            if end < l4 + TCP_FLAGS_OFFSET + 1:
                counts[TRUNCATED] += 1
                return
            flags = buf[l4 + TCP_FLAGS_OFFSET]
            counts[PARSED] += 1
            if not flags & (TH_RST | TH_SYN | TH_FIN):
                flow(ts, buf[off + 12 : off + 20] + buf[l4 : l4 + 4], flags)
            elif flags & TH_RST:
                rst(ts, buf[off + 12 : off + 20] + buf[l4 : l4 + 4], flags)
            else:
                counts[SYN_FIN] += 1
        elif proto == PROTO_UDP:
            if end < l4 + 4:
                counts[TRUNCATED] += 1
                return
            counts[PARSED] += 1
            flow(ts, buf[off + 12 : off + 20] + buf[l4 : l4 + 4], 0)
        else:
            counts[OTHER_PROTO] += 1

    def ip6(ts: int, buf: bytes, off: int) -> None:
        if buf[off] >> 4 != 6:
            counts[MALFORMED] += 1
            return
        payload = buf[off + 4] << 8 | buf[off + 5]
        end = len(buf) if payload == 0 else min(len(buf), off + IP6_HEADER + payload)
        proto = buf[off + 6]
        l4 = off + IP6_HEADER
        if proto in extensions:
            proto, l4 = _walk6(buf, l4, proto)
            if proto < 0:
                counts[FRAGMENT] += 1
                return
        if proto == PROTO_ICMP6:
            unreachable(ts, buf, end, off, l4, icmp6)
            return
        # The twin of ip4's TCP/UDP path, inline for the same reason.
        if proto == PROTO_TCP:
            if end < l4 + TCP_FLAGS_OFFSET + 1:
                counts[TRUNCATED] += 1
                return
            flags = buf[l4 + TCP_FLAGS_OFFSET]
            counts[PARSED] += 1
            if not flags & (TH_RST | TH_SYN | TH_FIN):
                flow(ts, buf[off + 8 : off + 40] + buf[l4 : l4 + 4], flags)
            elif flags & TH_RST:
                rst(ts, buf[off + 8 : off + 40] + buf[l4 : l4 + 4], flags)
            else:
                counts[SYN_FIN] += 1
        elif proto == PROTO_UDP:
            if end < l4 + 4:
                counts[TRUNCATED] += 1
                return
            counts[PARSED] += 1
            flow(ts, buf[off + 8 : off + 40] + buf[l4 : l4 + 4], 0)
        else:
            counts[OTHER_PROTO] += 1

    def guard(inner: Callable[[int, bytes], None]) -> Handler:
        # Short input raises IndexError (or ValueError from a runaway header
        # chain): counted, and the capture loop never sees it.
        def handler(ts: int, buf: bytes) -> None:
            try:
                inner(ts, buf)
            except IndexError:
                counts[TRUNCATED] += 1
            except ValueError:
                counts[MALFORMED] += 1
            except Exception:
                counts[ERRORS] += 1

        return handler

    if linktype == DLT_EN10MB:
        ethernet = link_layer(DLT_EN10MB, ip4, ip6, counts, NOT_IP)

        # Ethernet is the hot case: inline the guard rather than add a call.
        def eth_handler(ts: int, buf: bytes) -> None:
            try:
                etype = buf[12] << 8 | buf[13]
                if etype == ETH_IP4:
                    ip4(ts, buf, ETH_HEADER)
                else:
                    ethernet(ts, buf)
            except IndexError:
                counts[TRUNCATED] += 1
            except ValueError:
                counts[MALFORMED] += 1
            except Exception:
                counts[ERRORS] += 1

        return eth_handler
    return guard(link_layer(linktype, ip4, ip6, counts, NOT_IP))


IpHandler = Callable[[Any, bytes, int], None]


def link_layer(
    linktype: int, ip4: IpHandler, ip6: IpHandler, counts: list[int], not_ip: int
) -> Callable[[Any, bytes], None]:
    """`(ts, frame)` -> `ip4` / `ip6(ts, frame, offset)` for one link type;
    anything that is not IP counts `counts[not_ip]`. Shared with
    agents.dnswire, which hands in its own IP handlers. Raises ValueError
    for a link type not in LINK_TYPES."""

    def by_version(ts: Any, buf: bytes, off: int) -> None:
        version = buf[off] >> 4
        if version == 4:
            ip4(ts, buf, off)
        elif version == 6:
            ip6(ts, buf, off)
        else:
            counts[not_ip] += 1

    def by_ethertype(ts: Any, buf: bytes, etype: int, off: int) -> None:
        if etype == ETH_IP4:
            ip4(ts, buf, off)
        elif etype == ETH_IP6:
            ip6(ts, buf, off)
        else:
            counts[not_ip] += 1

    def ethernet(ts: Any, buf: bytes) -> None:
        etype = buf[12] << 8 | buf[13]
        off = ETH_HEADER
        for _ in range(MAX_VLAN_TAGS):
            if etype not in ETH_VLAN:
                break
            etype = buf[off + 2] << 8 | buf[off + 3]
            off += 4
        by_ethertype(ts, buf, etype, off)

    def sll(ts: Any, buf: bytes) -> None:
        by_ethertype(ts, buf, buf[14] << 8 | buf[15], SLL_HEADER)

    def sll2(ts: Any, buf: bytes) -> None:
        by_ethertype(ts, buf, buf[0] << 8 | buf[1], SLL2_HEADER)

    def raw(ts: Any, buf: bytes) -> None:
        by_version(ts, buf, 0)

    def null(ts: Any, buf: bytes) -> None:
        by_version(ts, buf, NULL_HEADER)

    def v4(ts: Any, buf: bytes) -> None:
        ip4(ts, buf, 0)

    def v6(ts: Any, buf: bytes) -> None:
        ip6(ts, buf, 0)

    table: dict[int, Callable[[Any, bytes], None]] = {
        DLT_EN10MB: ethernet,
        DLT_NULL: null,
        DLT_LOOP: null,
        DLT_RAW: raw,
        DLT_RAW_OPENBSD: raw,
        LINKTYPE_RAW: raw,
        DLT_LINUX_SLL: sll,
        DLT_LINUX_SLL2: sll2,
        LINKTYPE_IPV4: v4,
        LINKTYPE_IPV6: v6,
    }
    if linktype not in table:
        raise ValueError(f"link type {linktype} is not supported (supported: {LINK_TYPES})")
    return table[linktype]
