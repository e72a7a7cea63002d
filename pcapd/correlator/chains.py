"""The chains name → CNAME… → address → flow, as trees, both ways ShoDoHFlo
draws them: origin by FQDN (the name asked, down to flows) and origin by
address (each address, with its flows and the names that led to it).

Flows whose address no DNS answer explains are ShoDoHFlo's point ("Show DoH
Flow"): they are marked `no-dns`. With `others`, resolutions seen by other
clients in the prefix explain flows too, marked `other-client`. Depth is
capped at MAX_DEPTH and CNAME loops end in a node marked `loop`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agents.reader_values import ClientKeys, IndexRefused, Recon, distinct_refusals

MAX_DEPTH = 12
BY = ("fqdn", "address")
NAME, ADDRESS, FLOW, NXDOMAIN = "name", "address", "flow", "nx"


@dataclass(slots=True)
class Node:
    kind: str  # name, address, flow, nx
    label: str
    count: int | None = None
    port: int | None = None  # flows
    service: str | None = None  # flows: the remote address
    marks: list[str] = field(default_factory=list)
    children: list[Node] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "label": self.label}
        if self.count is not None:
            out["count"] = self.count
        if self.port is not None:
            out["port"] = self.port
            out["service"] = self.service
        if self.marks:
            out["marks"] = list(self.marks)
        if self.children:
            out["children"] = [c.as_dict() for c in self.children]
        return out

    def walk(self) -> list[Node]:
        found = [self]
        for child in self.children:
            found.extend(child.walk())
        return found


@dataclass(slots=True)
class ClientView:
    client: str
    by: str
    others: bool
    chains: list[Node]
    no_dns: list[Node]  # addresses talked to with no DNS behind them
    nxdomain: list[Node]
    summary: dict[str, Any]
    complete: bool
    index_refused: list[IndexRefused]  # one a cause: keys found by SCAN instead

    def as_dict(self) -> dict[str, Any]:
        return {
            "client": self.client, "by": self.by, "others": self.others,
            "summary": self.summary, "complete": self.complete,
            "index_refused": [r.as_dict() for r in self.index_refused],
            "chains": [n.as_dict() for n in self.chains],
            "no_dns": [n.as_dict() for n in self.no_dns],
            "nxdomain": [n.as_dict() for n in self.nxdomain],
        }  # fmt: skip


class _Maps:
    """The client's DNS maps merged with other clients', remembering which
    links only others saw."""

    def __init__(self, own: ClientKeys, others: Sequence[ClientKeys]) -> None:
        self.owners: dict[str, list[str]] = {}  # address -> names owning it
        self.addresses: dict[str, list[str]] = {}  # name -> addresses
        self.targets: dict[str, list[str]] = {}  # alias -> CNAME targets
        self.aliases: dict[str, list[str]] = {}  # target -> aliases
        self.foreign: set[tuple[str, str]] = set()
        for data, foreign in ((own, False), *((o, True) for o in others)):
            for address, names in data.dns.items():
                for name in names:
                    self._link(self.owners, address, name, foreign)
                    self._link(self.addresses, name, address, foreign)
            for target, aliases in data.cname.items():
                for alias in aliases:
                    self._link(self.aliases, target, alias, foreign)
                    self._link(self.targets, alias, target, foreign)

    def _link(self, table: dict[str, list[str]], a: str, b: str, foreign: bool) -> None:
        linked = table.setdefault(a, [])
        if b not in linked:
            linked.append(b)
            if foreign:
                self.foreign.add((a, b))
        elif not foreign:
            self.foreign.discard((a, b))


def _recon_marks(recon: list[Recon]) -> dict[str, list[str]]:
    marks: dict[str, list[str]] = {}
    for sign in recon:
        text = "rst" if sign.kind == "rst" else f"icmp-{sign.code}"
        if text not in marks.setdefault(sign.remote, []):
            marks[sign.remote].append(text)
    return {remote: sorted(found, key=lambda m: (m != "rst", m)) for remote, found in marks.items()}


def _address_order(address: str) -> tuple[int, int, str]:
    try:
        parsed = ipaddress.ip_address(address)
        return (parsed.version, int(parsed), "")
    except ValueError:
        return (9, 0, address)


def build_view(
    own: ClientKeys, by: str = "fqdn", others: Sequence[ClientKeys] | None = None
) -> ClientView:
    """`others`: the other clients in the prefix, when their resolutions are wanted."""
    if by not in BY:
        raise ValueError(f"by: {by!r} is not one of {', '.join(BY)}")
    maps = _Maps(own, others or ())
    recon = _recon_marks(own.recon)
    ports: dict[str, list[tuple[int, int]]] = {}
    for (service, port), count in sorted(own.flows.items()):
        ports.setdefault(service, []).append((port, count))

    def address_node(address: str, foreign: bool) -> Node:
        node = Node(ADDRESS, address, marks=list(recon.get(address, [])))
        if foreign:
            node.marks.append("other-client")
        node.children = [
            Node(FLOW, f"{address}:{port}", count, port, address)
            for port, count in ports.get(address, [])
        ]
        return node

    def name_node(name: str, path: tuple[str, ...], foreign: bool, forward: bool) -> Node:
        """Forward: CNAME targets then addresses (by FQDN); else the aliases
        that led here (by address)."""
        node = Node(NAME, name)
        if foreign:
            node.marks.append("other-client")
        if name in path or len(path) >= MAX_DEPTH:
            node.marks.append("loop" if name in path else "deep")
            return node
        if forward and name in own.nx:
            node.marks.append("nx")
            node.count = own.nx[name]
        below = (*path, name)
        for other in (maps.targets if forward else maps.aliases).get(name, []):
            node.children.append(name_node(other, below, (name, other) in maps.foreign, forward))
        if forward:
            for address in sorted(maps.addresses.get(name, []), key=_address_order):
                node.children.append(address_node(address, (name, address) in maps.foreign))
        return node

    explained = set(maps.owners)
    no_dns = [address_node(a, False) for a in sorted(set(ports) - explained, key=_address_order)]
    for node in no_dns:
        node.marks.insert(0, "no-dns")
    own_addresses = set(own.dns) | set(ports) | set(recon)
    if by == "fqdn":
        own_names = own.names()
        cname_targets = {t for alias, ts in maps.targets.items() if alias in own_names for t in ts}
        roots = sorted(n for n in own_names if n not in cname_targets)
        chains = [name_node(name, (), False, True) for name in roots]
        seen = {n.label for c in chains for n in c.walk() if n.kind == NAME}
        # A CNAME loop has no root: show each of its names once anyway.
        chains += [name_node(n, (), False, True) for n in sorted(own_names - seen)]
        # Addresses with flows explained only by others, when asked for.
        if others:
            shown = {n.label for c in chains for n in c.walk() if n.kind == ADDRESS}
            for address in sorted(set(ports) & explained - shown, key=_address_order):
                for name in maps.owners[address]:
                    chains.append(_reverse_chain(name, address, maps, address_node))
    else:
        chains = []
        for address in sorted(own_addresses & explained, key=_address_order):
            node = address_node(address, False)
            for name in maps.owners.get(address, []):
                node.children.append(name_node(name, (), (address, name) in maps.foreign, False))
            chains.append(node)
        for address in sorted(own_addresses - explained - set(ports), key=_address_order):
            chains.append(address_node(address, False))  # recon signs only
    # By FQDN the NXDOMAIN names are roots of their own; by address they have no place.
    nxdomain = [] if by == "fqdn" else [
        Node(NXDOMAIN, name, count, marks=["nx"]) for name, count in sorted(own.nx.items())
    ]  # fmt: skip
    complete = own.complete and all(o.complete for o in others or ())
    refused = distinct_refusals(c.index_refused for c in (own, *(others or ())))
    return ClientView(own.client, by, others is not None, chains, no_dns, nxdomain, own.summary(),
                      complete, refused)  # fmt: skip


def _reverse_chain(name: str, address: str, maps: _Maps, address_node: Any) -> Node:
    """The chain another client saw: first alias → … → name → address."""
    path = [name]
    while maps.aliases.get(path[-1]) and len(path) < MAX_DEPTH:
        alias = maps.aliases[path[-1]][0]
        if alias in path:
            break
        path.append(alias)
    leaf: Node = address_node(address, True)
    for link in path:
        leaf = Node(NAME, link, marks=["other-client"], children=[leaf])
    return leaf
