"""Networks and mapping rules: who is the client, which side is the service.

Same semantics as ShoDoHFlo's `NETWORK_ENUMERATION` / `FLOW_MAPPING`
(`shodohflo.pcap_config`), for IPv4 and IPv6 in one rule set:

- `networks` is ordered; an address belongs to the first network that contains
  it, so a name may repeat with several CIDRs and a later, wider CIDR means
  "everything not matched above". An address in no network drops the packet.
- `rules` is ordered; a rule applies when its `src` / `dst` network names match
  (an omitted name matches any network). Its action either returns
  `(client, service, port)` or does not match, in which case the next rule is
  tried. A matching rule with `drop` drops the packet and stops.
- `ignore_flows` lists `(address, port)` pairs whose flows are never recorded.

The engine is called once per new (src, sport, dst, dport) tuple, never per
packet: the agent caches its verdicts.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

SRC = "src"
DST = "dst"
SIDES = (SRC, DST)
OUR_NETS = "our_nets"

LOWER_PORT = "lower_port"
PORT_MATCH = "port_match"
ASSIGN = "assign"
ACTIONS = (LOWER_PORT, PORT_MATCH, ASSIGN)

MIN_PORT = 1
MAX_PORT = 65535


class RuleError(ValueError):
    """A network or rule that cannot be built; the message names the field."""


class Verdict(enum.IntEnum):
    """Why a flow produced no mapping."""

    NO_NETWORK = 1  # source or destination is in no enumerated network
    NO_RULE = 2  # no rule's action matched
    DROP = 3  # a matching rule says drop


@dataclass(frozen=True, slots=True)
class Mapping:
    client: Address
    service: Address
    port: int


@dataclass(frozen=True, slots=True)
class NamedNetwork:
    name: str
    cidr: Network


@dataclass(frozen=True, slots=True)
class Rule:
    """One mapping rule; validated on construction.

    `precedence` (lower_port, port_match): which side is the service on a port
    tie (lower_port) or is checked first (port_match). `client` and `port`
    (assign): which side is the client, and whose port is the port of interest
    (defaults to the service side). `ports`: required by port_match (an empty
    set never matches); for assign the port of interest must be in it (any port
    when None).
    """

    action: str
    src: str | None = None
    dst: str | None = None
    precedence: str = SRC
    client: str = SRC
    port: str | None = None
    ports: frozenset[int] | None = None
    drop: bool = False

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise RuleError(f"action: expected one of {', '.join(ACTIONS)}, got {self.action!r}")
        for name in ("precedence", "client"):
            if getattr(self, name) not in SIDES:
                raise RuleError(f"{name}: expected 'src' or 'dst', got {getattr(self, name)!r}")
        if self.port is not None and self.port not in SIDES:
            raise RuleError(f"port: expected 'src' or 'dst', got {self.port!r}")
        # An empty list is allowed: ShoDoHFlo accepts PortMatch(set()), a rule
        # that never matches (the config loader warns about it).
        if self.action == PORT_MATCH and self.ports is None:
            raise RuleError("ports: port_match needs a list of ports")
        for port in self.ports or ():
            if not MIN_PORT <= port <= MAX_PORT:
                raise RuleError(f"ports: {port} is not in {MIN_PORT}..{MAX_PORT}")

    @property
    def port_side(self) -> str:
        if self.port is not None:
            return self.port
        return DST if self.client == SRC else SRC

    def apply(self, src: Address, sport: int, dst: Address, dport: int) -> Mapping | None:
        """The mapping this action gives, or None when it does not match."""
        if self.action == LOWER_PORT:
            if sport < dport or (sport == dport and self.precedence == SRC):
                return Mapping(dst, src, sport)
            return Mapping(src, dst, dport)
        if self.action == PORT_MATCH:
            assert self.ports is not None
            order = ((src, sport, dst), (dst, dport, src))
            if self.precedence == DST:
                order = (order[1], order[0])
            for service, port, client in order:
                if port in self.ports:
                    return Mapping(client, service, port)
            return None
        port = sport if self.port_side == SRC else dport
        if self.ports is not None and port not in self.ports:
            return None
        if self.client == SRC:
            return Mapping(src, dst, port)
        return Mapping(dst, src, port)


def default_networks() -> tuple[NamedNetwork, ...]:
    """Every address, both versions: ShoDoHFlo's `('all', '0.0.0.0/0')` plus IPv6."""
    return (
        NamedNetwork("all", ipaddress.ip_network("0.0.0.0/0")),
        NamedNetwork("all", ipaddress.ip_network("::/0")),
    )


def default_rules() -> tuple[Rule, ...]:
    return (Rule(LOWER_PORT),)


class RuleSet:
    """Compiled networks + rules + ignored flows; answers `match` for one flow."""

    def __init__(
        self,
        networks: Sequence[NamedNetwork],
        rules: Sequence[Rule],
        ignore_flows: Iterable[tuple[Address, int]] = (),
    ) -> None:
        names = {net.name for net in networks}
        for index, rule in enumerate(rules):
            for side in (rule.src, rule.dst):
                if side is not None and side not in names:
                    raise RuleError(f"rules[{index}]: unknown network {side!r}")
        self.networks = tuple(networks)
        self.rules = tuple(rules)
        self.ignore_flows = frozenset(ignore_flows)
        # (version, first address as int, mask as int, name) for a cheap scan.
        self._nets = [
            (net.cidr.version, int(net.cidr.network_address), int(net.cidr.netmask), net.name)
            for net in networks
        ]

    def network_of(self, address: Address) -> str | None:
        version = address.version
        value = int(address)
        for net_version, first, mask, name in self._nets:
            if net_version == version and value & mask == first:
                return name
        return None

    def ignored(self, src: Address, sport: int, dst: Address, dport: int) -> bool:
        return (src, sport) in self.ignore_flows or (dst, dport) in self.ignore_flows

    def match(self, src: Address, sport: int, dst: Address, dport: int) -> Mapping | Verdict:
        src_net = self.network_of(src)
        dst_net = self.network_of(dst)
        if src_net is None or dst_net is None:
            return Verdict.NO_NETWORK
        for rule in self.rules:
            if rule.src is not None and rule.src != src_net:
                continue
            if rule.dst is not None and rule.dst != dst_net:
                continue
            mapping = rule.apply(src, sport, dst, dport)
            if mapping is None:
                continue
            return Verdict.DROP if rule.drop else mapping
        return Verdict.NO_RULE


def contains(nets: Sequence[Network], address: Address) -> bool:
    return any(address.version == net.version and address in net for net in nets)
