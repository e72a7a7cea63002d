"""`packetdebug`: one summary line per captured packet, only where the config allows.

Slow on purpose (dpkt decodes each packet); meant for a handful of packets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import dpkt

from pcapd.core.logs import event

log = logging.getLogger("pcapd.packetdebug")

_DLT_EN10MB = 1
_DLT_RAW = (12, 101)
_DLT_LINUX_SLL = 113


def summarize(linktype: int, pkt: bytes) -> dict[str, Any]:
    """Addresses, protocol and ports of one frame, as far as they decode."""
    try:
        if linktype == _DLT_EN10MB:
            frame: dpkt.Packet = dpkt.ethernet.Ethernet(pkt)
            ip = frame.data
        elif linktype == _DLT_LINUX_SLL:
            ip = dpkt.sll.SLL(pkt).data
        elif linktype in _DLT_RAW:
            ip = dpkt.ip.IP(pkt) if pkt[:1] and pkt[0] >> 4 == 4 else dpkt.ip6.IP6(pkt)
        else:
            return {"linktype": linktype}
    except (dpkt.UnpackError, IndexError):
        return {"decode": "failed"}
    if isinstance(ip, dpkt.ip.IP):
        src, dst = (
            socket.inet_ntop(socket.AF_INET, ip.src),
            socket.inet_ntop(socket.AF_INET, ip.dst),
        )
    elif isinstance(ip, dpkt.ip6.IP6):
        src = socket.inet_ntop(socket.AF_INET6, ip.src)
        dst = socket.inet_ntop(socket.AF_INET6, ip.dst)
    else:
        return {"l3": type(ip).__name__}
    summary: dict[str, Any] = {"src": src, "dst": dst, "proto": type(ip.data).__name__}
    sport, dport = getattr(ip.data, "sport", None), getattr(ip.data, "dport", None)
    if sport is not None:
        summary.update(sport=sport, dport=dport)
    return summary


def packet_logger(request_id: str, interface: str, linktype: int) -> Callable[[int, bytes], None]:
    def log_packet(ts: int, pkt: bytes) -> None:
        event(
            log, "packet", id=request_id, interface=interface, ts_ns=ts, caplen=len(pkt),
            **summarize(linktype, pkt),
        )  # fmt: skip

    return log_packet
