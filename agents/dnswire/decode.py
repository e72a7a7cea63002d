"""Packets -> DNS messages from a server port, on the hot path.

Link layers by agents.flow.packets.link_layer (Ethernet with up to two
802.1Q/QinQ tags, Linux SLL/SLL2, raw IP, BSD loopback), then IPv4 or IPv6
(extension headers walked, at most `MAX_EXT_HEADERS`), then:

- UDP from a DNS port: the payload is one message;
- TCP from a DNS port: segments go to `reassembly.TcpStreams`;
- UDP to the `-X` port: a pcap record header + Ethernet frame inside,
  decoded again (once: an encapsulation inside it is not followed);
- UDP to the `-J` port: Juniper jmirror (8 bytes) + an IP packet, likewise;
- IP fragments go to `reassembly.Fragments`, and the datagram they complete
  is decoded as if it had arrived whole.

Each message reaches `sink(client, resolver, message)` with the addresses
packed (4 or 16 bytes): the client is the packet's destination. No object
is kept per packet; everything else is counted by reason in `counts`, and
nothing raises out of the handler.
"""

from __future__ import annotations

from collections.abc import Callable

from agents.dnswire import reassembly
from agents.flow.packets import (
    DLT_EN10MB,
    DLT_RAW,
    ETH_HEADER,
    EXT_AH,
    EXT_FRAGMENT,
    IP4_HEADER,
    IP6_EXTENSIONS,
    IP6_HEADER,
    MAX_EXT_HEADERS,
    PROTO_TCP,
    PROTO_UDP,
    link_layer,
)

PCAP_RECORD_HEADER = 16  # struct pcap_sf_pkthdr, ahead of the frame in a -X datagram
JMIRROR_HEADER = 8  # intercept id + session id
UDP_HEADER = 8

# Counter indexes into `counts`.
MESSAGES = 0  # DNS messages handed to the sink (UDP, TCP, reassembled)
NOT_IP = 1
OTHER_PROTO = 2
OTHER_PORT = 3
TRUNCATED = 4
MALFORMED = 5
ENCAPSULATED = 6  # -X / -J datagrams opened
ERRORS = 7  # anything unexpected: counted, never raised
COUNTER_NAMES = (
    "messages",
    "not_ip",
    "other_proto",
    "other_port",
    "truncated",
    "malformed",
    "encapsulated",
    "errors",
)

Sink = Callable[[bytes, bytes, bytes], None]
Handler = Callable[[float, bytes], None]


def new_counts() -> list[int]:
    return [0] * len(COUNTER_NAMES)


def make_handler(
    linktype: int,
    sink: Sink,
    counts: list[int],
    *,
    ports: frozenset[int] = frozenset((53,)),
    fragments: reassembly.Fragments | None = None,
    streams: reassembly.TcpStreams | None = None,
    pcap_record_port: int | None = None,
    jmirror_port: int | None = None,
    inner_sink: Sink | None = None,
) -> Handler:
    """The per-packet callback for pypcap's `dispatch`, for one link type.
    `inner_sink`, if given, takes the messages found inside -X / -J."""
    # The decoder for what -X / -J carry: same sink and counters, no further
    # encapsulation, so a crafted packet cannot nest without end.
    inner_eth: Handler | None = None
    inner_ip: Handler | None = None
    if pcap_record_port is not None or jmirror_port is not None:
        inside = inner_sink or sink
        inner_eth = make_handler(
            DLT_EN10MB, inside, counts, ports=ports, fragments=fragments, streams=streams
        )
        inner_ip = make_handler(
            DLT_RAW, inside, counts, ports=ports, fragments=fragments, streams=streams
        )
    x_port = -1 if pcap_record_port is None else pcap_record_port
    j_port = -1 if jmirror_port is None else jmirror_port
    extensions = IP6_EXTENSIONS

    def transport(
        ts: float, proto: int, src: bytes, dst: bytes, buf: bytes, l4: int, end: int
    ) -> None:
        if proto == PROTO_UDP:
            if end < l4 + UDP_HEADER:
                counts[TRUNCATED] += 1
                return
            ulen = buf[l4 + 4] << 8 | buf[l4 + 5]
            if ulen < UDP_HEADER or l4 + ulen > end:
                # 0 is what a jumbogram or offload leaves: trust the capture.
                if ulen != 0:
                    counts[TRUNCATED] += 1
                    return
                ulen = end - l4
            sport = buf[l4] << 8 | buf[l4 + 1]
            if sport in ports:
                counts[MESSAGES] += 1
                sink(dst, src, buf[l4 + UDP_HEADER : l4 + ulen])
                return
            dport = buf[l4 + 2] << 8 | buf[l4 + 3]
            if dport == x_port and inner_eth is not None:
                counts[ENCAPSULATED] += 1
                inner_eth(ts, buf[l4 + UDP_HEADER + PCAP_RECORD_HEADER : l4 + ulen])
            elif dport == j_port and inner_ip is not None:
                counts[ENCAPSULATED] += 1
                inner_ip(ts, buf[l4 + UDP_HEADER + JMIRROR_HEADER : l4 + ulen])
            else:
                counts[OTHER_PORT] += 1
        elif proto == PROTO_TCP:
            if end < l4 + 20:
                counts[TRUNCATED] += 1
                return
            sport = buf[l4] << 8 | buf[l4 + 1]
            if sport not in ports or streams is None:
                counts[OTHER_PORT] += 1
                return
            data_at = l4 + ((buf[l4 + 12] >> 4) << 2)
            if data_at < l4 + 20 or data_at > end:
                counts[MALFORMED] += 1
                return
            seq = int.from_bytes(buf[l4 + 4 : l4 + 8], "big")
            key = (src, dst, buf[l4 : l4 + 4])
            for message in streams.segment(ts, key, seq, buf[l4 + 13], buf[data_at:end]):
                counts[MESSAGES] += 1
                sink(dst, src, message)
        else:
            counts[OTHER_PROTO] += 1

    def ip4(ts: float, buf: bytes, off: int) -> None:
        b0 = buf[off]
        ihl = (b0 & 15) << 2
        if b0 >> 4 != 4 or ihl < IP4_HEADER:
            counts[MALFORMED] += 1
            return
        total = buf[off + 2] << 8 | buf[off + 3]
        if total == 0:  # what segmentation offload leaves: trust the capture
            end = len(buf)
        elif total < ihl:
            counts[MALFORMED] += 1
            return
        else:
            end = off + total
            if end > len(buf):
                counts[TRUNCATED] += 1
                return
        src = buf[off + 12 : off + 16]
        dst = buf[off + 16 : off + 20]
        proto = buf[off + 9]
        frag = (buf[off + 6] & 0x3F) << 8 | buf[off + 7]
        if frag:  # MF set or a non-zero offset
            if fragments is None:
                counts[OTHER_PROTO] += 1
                return
            key = (src, dst, buf[off + 4 : off + 6], proto)
            whole = fragments.add(
                ts, key, (frag & 0x1FFF) << 3, bool(frag & 0x2000), buf[off + ihl : end]
            )
            if whole is not None:
                transport(ts, proto, src, dst, whole, 0, len(whole))
            return
        transport(ts, proto, src, dst, buf, off + ihl, end)

    def ip6(ts: float, buf: bytes, off: int) -> None:
        if buf[off] >> 4 != 6:
            counts[MALFORMED] += 1
            return
        payload = buf[off + 4] << 8 | buf[off + 5]
        if payload == 0:
            end = len(buf)
        else:
            end = off + IP6_HEADER + payload
            if end > len(buf):
                counts[TRUNCATED] += 1
                return
        src = buf[off + 8 : off + 24]
        dst = buf[off + 24 : off + 40]
        nh = buf[off + 6]
        at = off + IP6_HEADER
        if nh in extensions:
            for _ in range(MAX_EXT_HEADERS):
                if nh not in extensions:
                    break
                if at + 8 > end:
                    counts[TRUNCATED] += 1
                    return
                if nh == EXT_FRAGMENT:
                    # What follows the fragment header is the datagram's own:
                    # read it only once the datagram is whole.
                    field = buf[at + 2] << 8 | buf[at + 3]
                    if field & 0xFFF9 == 0:  # an atomic fragment (RFC 6946): whole already
                        ip6_tail(ts, buf[at], src, dst, buf[at + 8 : end])
                        return
                    if fragments is None:
                        counts[OTHER_PROTO] += 1
                        return
                    key = (src, dst, buf[at + 4 : at + 8], buf[at])
                    whole = fragments.add(
                        ts, key, field & 0xFFF8, bool(field & 1), buf[at + 8 : end]
                    )
                    if whole is not None:
                        ip6_tail(ts, buf[at], src, dst, whole)
                    return
                if nh == EXT_AH:
                    nh, at = buf[at], at + (buf[at + 1] + 2) * 4
                else:
                    nh, at = buf[at], at + (buf[at + 1] + 1) * 8
            else:
                counts[MALFORMED] += 1  # a chain longer than any real one
                return
            if at > end:
                counts[TRUNCATED] += 1
                return
        transport(ts, nh, src, dst, buf, at, end)

    def ip6_tail(ts: float, nh: int, src: bytes, dst: bytes, whole: bytes) -> None:
        """A reassembled IPv6 payload, which may start with more extension headers."""
        at = 0
        for _ in range(MAX_EXT_HEADERS):
            if nh not in extensions or nh == EXT_FRAGMENT:
                break
            if at + 8 > len(whole):
                counts[TRUNCATED] += 1
                return
            if nh == EXT_AH:
                nh, at = whole[at], at + (whole[at + 1] + 2) * 4
            else:
                nh, at = whole[at], at + (whole[at + 1] + 1) * 8
        if nh in extensions:
            counts[MALFORMED] += 1
            return
        transport(ts, nh, src, dst, whole, at, len(whole))

    inner = link_layer(linktype, ip4, ip6, counts, NOT_IP)

    # Short input raises IndexError: counted, and the capture loop never sees it.
    def handler(ts: float, buf: bytes) -> None:
        try:
            inner(ts, buf)
        except IndexError:
            counts[TRUNCATED] += 1
        except Exception:
            counts[ERRORS] += 1

    if linktype != DLT_EN10MB:
        return handler

    # Untagged IPv4 over Ethernet is the hot case: straight to ip4, one call less.
    def eth_handler(ts: float, buf: bytes) -> None:
        try:
            if buf[12] == 8 and buf[13] == 0:
                ip4(ts, buf, ETH_HEADER)
            else:
                inner(ts, buf)
        except IndexError:
            counts[TRUNCATED] += 1
        except Exception:
            counts[ERRORS] += 1

    return eth_handler
