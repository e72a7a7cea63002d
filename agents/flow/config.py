"""`[agents.flow]`: validated into one frozen `FlowConfig`.

Every problem is collected and raised together as `pcapd.core.config.ConfigError`,
each naming its field: `agents.flow.rules[2].src: unknown network 'foo'`.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agents import store
from agents.flow.rules import (
    ACTIONS,
    ASSIGN,
    LOWER_PORT,
    MAX_PORT,
    MIN_PORT,
    OUR_NETS,
    PORT_MATCH,
    SIDES,
    Address,
    NamedNetwork,
    Network,
    Rule,
    RuleError,
    RuleSet,
    default_networks,
    default_rules,
)
from pcapd.core.config import ConfigError
from pcapd.core.logs import event

SECTION = "agents.flow"
log = logging.getLogger("pcapd.agents.flow")

# Enough for Ethernet + 2 VLAN tags + IPv6 + a few extension headers + ICMPv6
# + the embedded IPv6 header and ports of an unreachable; far below a packet.
DEFAULT_SNAPLEN = 256
MIN_SNAPLEN = 64
MAX_SNAPLEN = 65_535
# The kernel ring must absorb the bursts in which many new flows arrive at
# once (each costs ~10 us of rule evaluation before it is cached): 32 MiB holds
# ~100k packets at the default snaplen.
DEFAULT_BUFFER_SIZE = 32 * 1024 * 1024
MIN_BUFFER_SIZE = 64 * 1024
DIRECTIONS = ("in", "inout", "out")
MAX_BUFFER_SIZE = 2**31 - 1  # libpcap's buffer size is a C int
DEFAULT_SUPPRESS_WINDOW = 30.0
MAX_SUPPRESS_WINDOW = 86_400.0
DEFAULT_STATS_INTERVAL = 60.0
MIN_STATS_INTERVAL = 0.1
MAX_STATS_INTERVAL = 86_400.0
MAX_TTL = 2**31 - 1  # Redis EXPIRE seconds, like agents.dnstap.ttl_grace
MAX_QUEUE_OPS = 100_000_000
MAX_BATCH_OPS = 100_000
# Distinct keys, addresses and flow tuples remembered for suppression, per
# cache. tracemalloc: a new flow from a new client costs 0.9-1.0 KB (IPv4-IPv6)
# across the caches, a new tuple of a known flow ~90 bytes; budgeting 1.2 KB,
# the default bounds the caches near 240 MB (plus ~90 bytes per RST/ICMP tuple).
DEFAULT_MAX_TRACKED = 200_000
MIN_MAX_TRACKED = 100
MAX_MAX_TRACKED = 10_000_000

# Which options each action reads; any other is a config error (a typo would
# otherwise silently change what is recorded).
_ACTION_OPTIONS = {
    LOWER_PORT: {"precedence"},
    PORT_MATCH: {"precedence", "ports"},
    ASSIGN: {"client", "port", "ports"},
}
_RULE_COMMON = {"src", "dst", "action", "drop"}


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """One `networks` entry; `our_nets` without a cidr takes the command line's."""

    name: str
    cidrs: tuple[Network, ...] = ()


@dataclass(frozen=True, slots=True)
class FlowConfig:
    interface: str | None = None
    our_nets: tuple[Network, ...] = ()
    networks: tuple[NetworkSpec, ...] = field(
        default_factory=lambda: tuple(NetworkSpec(n.name, (n.cidr,)) for n in default_networks())
    )
    rules: tuple[Rule, ...] = field(default_factory=default_rules)
    ignore_flows: tuple[tuple[Address, int], ...] = ()
    suppress_own_network: bool = True
    suppress_window: float = DEFAULT_SUPPRESS_WINDOW
    snaplen: int = DEFAULT_SNAPLEN
    promisc: bool = True
    direction: str = "in"
    buffer_size: int = DEFAULT_BUFFER_SIZE
    bpf: str = ""
    ttl: int = store.DEFAULT_TTL_GRACE
    stats_interval: float = DEFAULT_STATS_INTERVAL
    max_queue_ops: int = store.DEFAULT_MAX_QUEUE_OPS
    batch_ops: int = store.DEFAULT_BATCH_OPS
    max_tracked: int = DEFAULT_MAX_TRACKED
    client_index: bool = False  # keep <client>;index for the correlator (agents/store.py)

    def ruleset(self) -> RuleSet:
        """Networks with `our_nets` filled in, compiled with the rules."""
        networks: list[NamedNetwork] = []
        for index, spec in enumerate(self.networks):
            cidrs = spec.cidrs
            if not cidrs and spec.name == OUR_NETS:
                if not self.our_nets:
                    raise ConfigError(
                        [
                            f"{SECTION}.networks[{index}]: name = 'our_nets' without a cidr "
                            "needs OUR-NETS on the command line or agents.flow.our_nets"
                        ]
                    )
                cidrs = self.our_nets
            networks.extend(NamedNetwork(spec.name, cidr) for cidr in cidrs)
        try:
            return RuleSet(networks, self.rules, self.ignore_flows)
        except RuleError as exc:
            raise ConfigError([f"{SECTION}.{exc}"]) from exc


def parse_networks_arg(text: str) -> tuple[Network, ...]:
    """ShoDoHFlo's OUR-NETS argument, extended to a comma list of both versions."""
    nets = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(ipaddress.ip_network(part, strict=False))
        except ValueError as exc:
            raise ConfigError([f"OUR-NETS: {part!r} is not a network: {exc}"]) from exc
    if not nets:
        raise ConfigError([f"OUR-NETS: no network in {text!r}"])
    return tuple(nets)


class _Reader:
    """Typed reads of one table, appending `field: rule, got value` errors."""

    def __init__(self, table: dict[str, Any], where: str, errors: list[str]) -> None:
        self.table = table
        self.where = where
        self.errors = errors

    def bad(self, key: str, rule: str, value: Any) -> None:
        self.errors.append(f"{self.where}.{key}: {rule}, got {value!r}")

    def number(
        self, key: str, default: float, minimum: float, maximum: float, integer: bool
    ) -> Any:
        value: Any = self.table.get(key)
        if value is None:
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
        ):
            self.bad(key, "expected an integer" if integer else "expected a number", value)
            return default
        # inf overflows int() downstream; nan compares false to every bound
        if isinstance(value, float) and not math.isfinite(value):
            self.bad(key, "must be a finite number", value)
            return default
        if not minimum <= value <= maximum:
            self.bad(key, f"must be at least {minimum} and at most {maximum}", value)
            return default
        return value if integer else float(value)

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        result: int = self.number(key, default, minimum, maximum, integer=True)
        return result

    def real(self, key: str, default: float, minimum: float, maximum: float) -> float:
        result: float = self.number(key, default, minimum, maximum, integer=False)
        return result

    def boolean(self, key: str, default: bool) -> bool:
        value = self.table.get(key, default)
        if not isinstance(value, bool):
            self.bad(key, "expected true or false", value)
            return default
        return value

    def string(self, key: str, default: str | None, choices: Sequence[str] = ()) -> str | None:
        value = self.table.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.bad(key, "expected a string", value)
            return default
        if choices and value not in choices:
            self.bad(key, "expected one of " + ", ".join(choices), value)
            return default
        return value

    def network(self, key: str, value: Any) -> Network | None:
        if not isinstance(value, str):
            self.bad(key, "expected a CIDR string", value)
            return None
        try:
            return ipaddress.ip_network(value, strict=False)
        except ValueError:
            self.bad(key, "not an IPv4 or IPv6 network", value)
            return None

    def ports(self, key: str) -> frozenset[int] | None:
        value = self.table.get(key)
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in value
        ):
            self.bad(key, "expected a list of port numbers", value)
            return None
        for port in value:
            if not MIN_PORT <= port <= MAX_PORT:
                self.bad(key, f"port {port} is not in {MIN_PORT}..{MAX_PORT}", value)
                return None
        return frozenset(value)

    def unknown(self, known: set[str]) -> None:
        for key in sorted(set(self.table) - known):
            self.errors.append(f"{self.where}.{key}: unknown option")


def _tables(raw: Any, where: str, errors: list[str]) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        errors.append(f"{where}: expected a list of tables, got {raw!r}")
        return []
    return raw


def _networks(raw: Any, errors: list[str]) -> tuple[NetworkSpec, ...]:
    specs = []
    for index, table in enumerate(_tables(raw, f"{SECTION}.networks", errors)):
        r = _Reader(table, f"{SECTION}.networks[{index}]", errors)
        r.unknown({"name", "cidr"})
        name = r.string("name", None)
        if not name:
            r.bad("name", "required: a network name", table.get("name"))
            continue
        raw_cidr = table.get("cidr")
        values = raw_cidr if isinstance(raw_cidr, list) else [raw_cidr]
        if raw_cidr is None:
            if name != OUR_NETS:
                r.bad("cidr", "required (only 'our_nets' may omit it)", None)
            specs.append(NetworkSpec(name))
            continue
        cidrs = tuple(n for n in (r.network("cidr", v) for v in values) if n is not None)
        if len(cidrs) == len(values):
            specs.append(NetworkSpec(name, cidrs))
    return tuple(specs)


def _rules(raw: Any, names: set[str], errors: list[str]) -> tuple[Rule, ...]:
    rules = []
    for index, table in enumerate(_tables(raw, f"{SECTION}.rules", errors)):
        where = f"{SECTION}.rules[{index}]"
        r = _Reader(table, where, errors)
        before = len(errors)
        action = r.string("action", None, ACTIONS)
        if action is None:
            if "action" not in table:
                errors.append(f"{where}.action: required, one of {', '.join(ACTIONS)}")
            continue
        r.unknown(_RULE_COMMON | _ACTION_OPTIONS[action])
        sides = {}
        for key in ("src", "dst"):
            name = r.string(key, None)
            if name is not None and name not in names:
                errors.append(f"{where}.{key}: unknown network {name!r}")
            sides[key] = name
        precedence = r.string("precedence", "src", SIDES) or "src"
        client = r.string("client", "src", SIDES) or "src"
        port = r.string("port", None, SIDES)
        ports = r.ports("ports")
        if action == PORT_MATCH and ports is None and "ports" not in table:
            errors.append(f"{where}.ports: required by port_match")
        drop = r.boolean("drop", False)
        if len(errors) != before:
            continue
        if action == PORT_MATCH and ports is not None and not ports:
            event(
                log,
                "flow_rule_never_matches",
                logging.WARNING,
                rule=f"{where}.ports",
                reason="empty list",
            )
        try:
            rules.append(
                Rule(action, sides["src"], sides["dst"], precedence, client, port, ports, drop)
            )
        except RuleError as exc:
            errors.append(f"{where}.{exc}")
    return tuple(rules)


def _ignore_flows(raw: Any, errors: list[str]) -> tuple[tuple[Address, int], ...]:
    flows = []
    for index, table in enumerate(_tables(raw, f"{SECTION}.ignore_flows", errors)):
        r = _Reader(table, f"{SECTION}.ignore_flows[{index}]", errors)
        r.unknown({"address", "port"})
        value = table.get("address")
        try:
            address = ipaddress.ip_address(value) if isinstance(value, str) else None
        except ValueError:
            address = None
        if address is None:
            r.bad("address", "expected an IPv4 or IPv6 address", value)
        port = r.integer("port", 0, MIN_PORT, MAX_PORT)
        if "port" not in table:
            r.bad("port", "required", None)
        if address is not None and port:
            flows.append((address, port))
    return tuple(flows)


def parse_flow_config(table: Any) -> FlowConfig:
    """Validate the raw `[agents.flow]` table; raise ConfigError naming every bad field."""
    if table is None:
        table = {}
    if not isinstance(table, dict):
        raise ConfigError([f"{SECTION}: expected a table, got {table!r}"])
    errors: list[str] = []
    r = _Reader(table, SECTION, errors)
    r.unknown(set(FlowConfig.__dataclass_fields__))
    defaults = FlowConfig()
    our_nets: list[Network] = []
    raw_our = table.get("our_nets", [])
    for value in raw_our if isinstance(raw_our, list) else [raw_our]:
        net = r.network("our_nets", value)
        if net is not None:
            our_nets.append(net)
    networks = _networks(table["networks"], errors) if "networks" in table else defaults.networks
    names = {spec.name for spec in networks}
    rules = _rules(table["rules"], names, errors) if "rules" in table else defaults.rules
    interface = r.string("interface", None)
    config = FlowConfig(
        interface=interface or None,
        our_nets=tuple(our_nets),
        networks=networks,
        rules=rules,
        ignore_flows=_ignore_flows(table.get("ignore_flows"), errors),
        suppress_own_network=r.boolean("suppress_own_network", True),
        suppress_window=r.real(
            "suppress_window", DEFAULT_SUPPRESS_WINDOW, 0.0, MAX_SUPPRESS_WINDOW
        ),
        snaplen=r.integer("snaplen", DEFAULT_SNAPLEN, MIN_SNAPLEN, MAX_SNAPLEN),
        promisc=r.boolean("promisc", True),
        direction=r.string("direction", "in", DIRECTIONS) or "in",
        buffer_size=r.integer("buffer_size", DEFAULT_BUFFER_SIZE, MIN_BUFFER_SIZE, MAX_BUFFER_SIZE),
        bpf=r.string("bpf", "") or "",
        ttl=r.integer("ttl", store.DEFAULT_TTL_GRACE, 1, MAX_TTL),
        stats_interval=r.real(
            "stats_interval", DEFAULT_STATS_INTERVAL, MIN_STATS_INTERVAL, MAX_STATS_INTERVAL
        ),
        max_queue_ops=r.integer("max_queue_ops", store.DEFAULT_MAX_QUEUE_OPS, 1, MAX_QUEUE_OPS),
        batch_ops=r.integer("batch_ops", store.DEFAULT_BATCH_OPS, 1, MAX_BATCH_OPS),
        max_tracked=r.integer("max_tracked", DEFAULT_MAX_TRACKED, MIN_MAX_TRACKED, MAX_MAX_TRACKED),
        client_index=r.boolean("client_index", False),
    )
    if config.batch_ops > config.max_queue_ops:
        r.bad(
            "batch_ops", f"must be at most max_queue_ops={config.max_queue_ops}", config.batch_ops
        )
    if errors:
        raise ConfigError(errors)
    return config


def with_command_line(
    config: FlowConfig, interface: str | None, our_nets: tuple[Network, ...] | None
) -> FlowConfig:
    """The command line's IFACE and OUR-NETS win over the file's."""
    if interface:
        config = replace(config, interface=interface)
    if our_nets:
        config = replace(config, our_nets=our_nets)
    return config
