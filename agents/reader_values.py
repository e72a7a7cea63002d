"""The correlator's values and what it accepts from users: a client's keys
read back (`ClientKeys`, `Recon`), a bounded page of a SCAN walk (`Page`,
with its progress read from the cursor), addresses and networks checked
(`ReaderError` names what was wrong), and how one key/value pair is filed
into a `ClientKeys` (spelling and parsing are agents/store.py's)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agents import store

CURSOR_BITS = 64  # Redis's SCAN cursor is an unsigned 64-bit number

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ReaderError(ValueError):
    """Bad input to a read: the message names the parameter and the rule."""


def parse_address(text: str, what: str = "client") -> str:
    """The canonical `str(ipaddress)` spelling, as the agents write it. A zone
    (`fe80::1%eth0`) is refused: ipaddress takes any text after the `%`,
    which would then reach a key, a request id and a capture's BPF."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        raise ReaderError(f"{what}: {text[:80]!r} is not an IPv4 or IPv6 address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ReaderError(f"{what}: {text[:80]!r} has a zone (%...); give the address alone")
    return str(address)


def parse_network(text: str) -> Network:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ReaderError(f"prefix: {text[:80]!r} is not an IPv4 or IPv6 network") from None
    if isinstance(network, ipaddress.IPv6Network) and network.network_address.scope_id is not None:
        raise ReaderError(f"prefix: {text[:80]!r} has a zone (%...); give the network alone")
    return network


def in_network(address: str, network: Network | None) -> bool:
    if network is None:
        return True
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Recon:
    """An RST or ICMP-unreachable sign: the client's probe of `remote` failed."""

    kind: str  # store.RST or store.ICMP
    remote: str
    client_port: int
    remote_port: int
    count: int
    code: int | None = None  # ICMP code


@dataclass(frozen=True, slots=True)
class IndexRefused:
    """Redis refused reading a client's `<client>;index` set (an ACL without
    SSCAN, a key of another type under that name), so the client's keys were
    found by SCAN instead: the same keys, but a walk of the keyspace, slower
    and more likely to end "Partial"."""

    command: str  # as sent: "SSCAN"
    key: str
    error: str  # Redis's reply

    @property
    def cause(self) -> tuple[str, str]:
        """What an operator would change: the same for every client an ACL refuses."""
        return (self.command, self.error)

    def as_dict(self) -> dict[str, str]:
        return {"command": self.command, "key": self.key, "error": self.error}


def distinct_refusals(found: Iterable[IndexRefused | None]) -> list[IndexRefused]:
    """One refusal per cause, the first met (its key an example of the others)."""
    causes: dict[tuple[str, str], IndexRefused] = {}
    for refused in found:
        if refused is not None:
            causes.setdefault(refused.cause, refused)
    return list(causes.values())


@dataclass(slots=True)
class ClientKeys:
    """Everything the keys say about one client."""

    client: str
    activity: int = 0
    dns: dict[str, list[str]] = field(default_factory=dict)  # address -> owner names
    cname: dict[str, list[str]] = field(default_factory=dict)  # target -> aliases
    nx: dict[str, int] = field(default_factory=dict)
    flows: dict[tuple[str, int], int] = field(default_factory=dict)  # (service, port) -> n
    peers: dict[str, int] = field(default_factory=dict)
    recon: list[Recon] = field(default_factory=list)
    complete: bool = True
    index_refused: IndexRefused | None = None  # its keys were found by SCAN instead

    def names(self) -> set[str]:
        found = set(self.nx) | set(self.cname)
        for owners in (*self.dns.values(), *self.cname.values()):
            found.update(owners)
        return found

    def addresses(self) -> set[str]:
        return set(self.dns) | {service for service, _ in self.flows}

    def summary(self) -> dict[str, Any]:
        return {
            "client": self.client, "activity": self.activity, "names": len(self.names()),
            "addresses": len(self.addresses()), "flows": len(self.flows), "nx": len(self.nx),
            "recon": len(self.recon), "complete": self.complete,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Page:
    """One bounded page: `cursor` 0 means the scan is over; SCAN returned
    `scanned` keys for this page, those matching its MATCH pattern: Redis
    does not say how many it walked past to find them (`progress` tells how
    far the walk got)."""

    items: tuple[Any, ...]
    cursor: int
    scanned: int
    complete: bool
    primaries: int = 1

    @property
    def progress(self) -> float:
        return scan_progress(self.cursor, self.primaries)


def scan_progress(cursor: int, primaries: int = 1) -> float:
    """How much of the keyspace a SCAN walk that is now at `cursor` has covered
    (0 to 1). Redis walks its hash table in reversed-bit order, so the cursor
    read backwards is the fraction of buckets done, whatever the table's size
    (exact unless the table was resized during the walk). On a cluster the
    primaries done count whole (see `StoreReader.scan` for the cursor's shape)."""
    if cursor == 0:
        return 1.0
    done, node_cursor = cursor % primaries, cursor // primaries
    if node_cursor == 0:
        return done / primaries
    reversed_bits = int(f"{node_cursor:0{CURSOR_BITS}b}"[::-1], 2)
    return (done + reversed_bits / float(1 << CURSOR_BITS)) / primaries


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _int(value: bytes | str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _port(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return -1


def _add(result: dict[str, ClientKeys], text: str, value: str) -> None:
    key = store.parse_key(text)
    if key is None or key.client not in result:
        return
    data = result[key.client]
    kind, fields = key.kind, key.fields
    if kind == store.CLIENT:
        data.activity = _int(value)
    elif kind == store.DNS:
        data.dns[fields[0]] = store.members(value)
    elif kind == store.CNAME:
        data.cname[fields[0]] = store.members(value)
    elif kind == store.NX:
        data.nx[fields[0]] = _int(value)
    elif kind == store.FLOW:
        data.flows[(fields[0], _port(fields[1]))] = _int(value)
    elif kind == store.PEER:
        data.peers[fields[0]] = _int(value)
    elif kind in (store.RST, store.ICMP):
        ports = fields[1].split(":")
        if len(ports) == 2:
            code = _port(fields[2]) if kind == store.ICMP else None
            data.recon.append(
                Recon(kind, fields[0], _port(ports[0]), _port(ports[1]), _int(value), code)
            )


def _address_order(address: str) -> tuple[int, int]:
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return (9, 0)
    return (parsed.version, int(parsed))
