"""The dnstap agent's optional UDP output (`udp_output`): ShoDoHFlo's JSON
datagrams, to a unicast or multicast address."""

from __future__ import annotations

import json
import socket
from typing import Any

from agents.dnstap.config import HostPort


class UdpOutput:
    """ShoDoHFlo's JSON datagrams, one per final address (or per NXDOMAIN)."""

    def __init__(self, target: HostPort, interface: str | None, ttl: int) -> None:
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        self.address = (target.host, target.port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if family == socket.AF_INET:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            if interface:
                self.sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
                )
        else:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        self.next_id = 0

    def send(self, datagram: dict[str, Any]) -> None:
        self.next_id += 1
        datagram["id"] = self.next_id
        self.sock.sendto(json.dumps(datagram).encode(), self.address)

    def close(self) -> None:
        self.sock.close()
