"""`[agents.flow]`: validated into one frozen `FlowConfig`.

Read with the one reader (`pcapd.core.configread.Table`): every problem is
collected and raised together as `ConfigError`, each naming its field
(`agents.flow.rules[2].src: unknown network 'foo'`); unknown keys are warnings.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field, replace
from typing import Any

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
from agents.writer_settings import (
    DEFAULT_BATCH_OPS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_QUEUE_OPS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_TTL_GRACE,
    DEFAULT_WRITE_COMBINING,
    MAX_BATCH_OPS,
    MAX_QUEUE_OPS,
    MAX_TTL_GRACE,
    writer_switches,
)
from pcapd.core.configread import ConfigError, HostPort, Table
from pcapd.core.fields import IFACE_RULE, is_interface_name
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
DEFAULT_DIRECTION = "in"  # ShoDoHFlo: only traffic arriving at the interface
DIRECTIONS = ("in", "inout", "out")
MAX_BUFFER_SIZE = 2**31 - 1  # libpcap's buffer size is a C int
DEFAULT_SUPPRESS_WINDOW = 30.0
MAX_SUPPRESS_WINDOW = 86_400.0
DEFAULT_STATS_INTERVAL = 60.0
MIN_STATS_INTERVAL = 0.1
MAX_STATS_INTERVAL = 86_400.0
# Distinct keys, addresses and flow tuples remembered for suppression, per
# cache. tracemalloc: a new flow from a new client costs 0.9-1.0 KB (IPv4-IPv6)
# across the caches, a new tuple of a known flow ~90 bytes; budgeting 1.2 KB,
# the default bounds the caches near 240 MB (plus ~90 bytes per RST/ICMP tuple).
DEFAULT_MAX_TRACKED = 200_000
MIN_MAX_TRACKED = 100
MAX_MAX_TRACKED = 10_000_000

# Which options each action reads; any other is warned about as unknown (so a
# typo, which would change what is recorded, is said).
_ACTION_OPTIONS = {
    LOWER_PORT: {"precedence"},
    PORT_MATCH: {"precedence", "ports"},
    ASSIGN: {"client", "port", "ports"},
}


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
    direction: str = DEFAULT_DIRECTION
    buffer_size: int = DEFAULT_BUFFER_SIZE
    bpf: str = ""
    ttl: int = DEFAULT_TTL_GRACE
    stats_interval: float = DEFAULT_STATS_INTERVAL
    max_queue_ops: int = DEFAULT_MAX_QUEUE_OPS
    batch_ops: int = DEFAULT_BATCH_OPS
    write_combining: bool = DEFAULT_WRITE_COMBINING
    ping_interval: float = DEFAULT_PING_INTERVAL
    max_tracked: int = DEFAULT_MAX_TRACKED
    client_index: bool = False  # keep <client>;index for the correlator (agents/store.py)
    metrics_listen: HostPort | None = None  # /metrics, /healthz, /readyz (docs/operations.md)
    warnings: tuple[str, ...] = ()

    @property
    def ttl_grace(self) -> int:
        """`ttl` under the name the agents' writer settings share (WriterSettings)."""
        return self.ttl

    @property
    def flush_interval(self) -> float:
        """Not a flow option: the writer's default."""
        return DEFAULT_FLUSH_INTERVAL

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


def _network(t: Table, key: str, value: Any) -> Network | None:
    if not isinstance(value, str):
        t.bad(key, value, "expected a CIDR string")
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        t.bad(key, value, "not an IPv4 or IPv6 network")
        return None


def _ports(t: Table, key: str) -> frozenset[int] | None:
    value = t.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not all(
        isinstance(p, int) and not isinstance(p, bool) for p in value
    ):
        t.bad(key, value, "expected a list of port numbers")
        return None
    for port in value:
        if not MIN_PORT <= port <= MAX_PORT:
            t.bad(key, value, f"port {port} is not in {MIN_PORT}..{MAX_PORT}")
            return None
    return frozenset(value)


def _network_spec(t: Table) -> NetworkSpec | None:
    name = t.optional_str("name")
    raw_cidr = t.get("cidr")
    if not name:
        if t.get("name") is None:
            t.error("name", "required: a network name")
        return None
    if raw_cidr is None:
        if name != OUR_NETS:
            t.error("cidr", "required (only 'our_nets' may omit it)")
        return NetworkSpec(name)
    values = raw_cidr if isinstance(raw_cidr, list) else [raw_cidr]
    cidrs = tuple(n for n in (_network(t, "cidr", v) for v in values) if n is not None)
    return NetworkSpec(name, cidrs) if len(cidrs) == len(values) else None


def _networks(t: Table) -> tuple[NetworkSpec, ...]:
    specs = []
    for entry in t.tables("networks"):
        spec = _network_spec(entry)
        entry.finish()
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


def _rule(t: Table, names: set[str]) -> Rule | None:
    before = len(t.errors)
    action = t.optional_str("action", choices=ACTIONS)
    if action is None:
        if t.get("action") is None:
            t.error("action", f"required, one of {', '.join(ACTIONS)}")
        t.seen.update(t.table)  # without an action no option is known or unknown
        return None
    options = _ACTION_OPTIONS[action]
    sides = {}
    for key in ("src", "dst"):
        name = t.optional_str(key)
        if name is not None and name not in names:
            t.error(key, f"unknown network {name!r}")
        sides[key] = name
    precedence = t.get_str("precedence", "src", choices=SIDES) if "precedence" in options else "src"
    client = t.get_str("client", "src", choices=SIDES) if "client" in options else "src"
    port = t.optional_str("port", choices=SIDES) if "port" in options else None
    ports = _ports(t, "ports") if "ports" in options else None
    if action == PORT_MATCH and t.get("ports") is None:
        t.error("ports", "required by port_match")
    drop = t.get_bool("drop", False)
    if len(t.errors) != before:
        return None
    if action == PORT_MATCH and ports is not None and not ports:
        event(
            log, "flow_rule_never_matches", logging.WARNING,
            rule=f"{t.name}.ports", reason="empty list",
        )  # fmt: skip
    try:
        return Rule(action, sides["src"], sides["dst"], precedence, client, port, ports, drop)
    except RuleError as exc:
        t.errors.append(f"{t.name}.{exc}")
        return None


def _rules(t: Table, names: set[str]) -> tuple[Rule, ...]:
    rules = []
    for entry in t.tables("rules"):
        rule = _rule(entry, names)
        entry.finish()
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _ignore_flows(t: Table) -> tuple[tuple[Address, int], ...]:
    flows = []
    for entry in t.tables("ignore_flows"):
        value = entry.get("address")
        try:
            address = ipaddress.ip_address(value) if isinstance(value, str) else None
        except ValueError:
            address = None
        if address is None:
            entry.bad("address", value, "expected an IPv4 or IPv6 address")
        port = entry.get_int("port", 0, minimum=MIN_PORT, maximum=MAX_PORT)
        if entry.get("port") is None:
            entry.error("port", "required")
        entry.finish()
        if address is not None and port:
            flows.append((address, port))
    return tuple(flows)


def parse_flow_config(table: Any) -> FlowConfig:
    """Validate the raw `[agents.flow]` table; raise ConfigError naming every bad field."""
    t = Table(table, SECTION)
    defaults = FlowConfig()
    our_nets: list[Network] = []
    raw_our = t.get("our_nets") or []
    for value in raw_our if isinstance(raw_our, list) else [raw_our]:
        net = _network(t, "our_nets", value)
        if net is not None:
            our_nets.append(net)
    networks = _networks(t) if t.get("networks") is not None else defaults.networks
    names = {spec.name for spec in networks}
    rules = _rules(t, names) if t.get("rules") is not None else defaults.rules
    config = FlowConfig(
        interface=t.interface("interface"),
        metrics_listen=t.listen("metrics_listen"),
        our_nets=tuple(our_nets),
        networks=networks,
        rules=rules,
        ignore_flows=_ignore_flows(t),
        suppress_own_network=t.get_bool("suppress_own_network", True),
        suppress_window=t.get_float(
            "suppress_window", DEFAULT_SUPPRESS_WINDOW, minimum=0.0, maximum=MAX_SUPPRESS_WINDOW
        ),
        snaplen=t.get_int("snaplen", DEFAULT_SNAPLEN, minimum=MIN_SNAPLEN, maximum=MAX_SNAPLEN),
        promisc=t.get_bool("promisc", True),
        direction=t.get_str("direction", DEFAULT_DIRECTION, choices=DIRECTIONS),
        buffer_size=t.get_int(
            "buffer_size", DEFAULT_BUFFER_SIZE, minimum=MIN_BUFFER_SIZE, maximum=MAX_BUFFER_SIZE
        ),
        bpf=t.get_str("bpf", ""),
        ttl=t.get_int("ttl", DEFAULT_TTL_GRACE, maximum=MAX_TTL_GRACE),
        stats_interval=t.get_float(
            "stats_interval",
            DEFAULT_STATS_INTERVAL,
            minimum=MIN_STATS_INTERVAL,
            maximum=MAX_STATS_INTERVAL,
        ),
        max_queue_ops=t.get_int("max_queue_ops", DEFAULT_MAX_QUEUE_OPS, maximum=MAX_QUEUE_OPS),
        batch_ops=t.get_int("batch_ops", DEFAULT_BATCH_OPS, maximum=MAX_BATCH_OPS),
        max_tracked=t.get_int(
            "max_tracked", DEFAULT_MAX_TRACKED, minimum=MIN_MAX_TRACKED, maximum=MAX_MAX_TRACKED
        ),
        client_index=t.get_bool("client_index", False),
        **writer_switches(t),
    )
    if config.batch_ops > config.max_queue_ops:
        t.exceeds("batch_ops", config.batch_ops, "max_queue_ops", config.max_queue_ops)
    t.finish()
    if t.errors:
        raise ConfigError(t.errors, warnings=t.warnings)
    return replace(config, warnings=tuple(t.warnings))


def with_command_line(
    config: FlowConfig, interface: str | None, our_nets: tuple[Network, ...] | None
) -> FlowConfig:
    """The command line's IFACE and OUR-NETS win over the file's; IFACE
    follows the rule `[agents.flow] interface` does."""
    if interface:
        if not is_interface_name(interface):
            raise ConfigError(
                [f"IFACE: {interface[:40]!r} is not an interface name ({IFACE_RULE})"]
            )
        config = replace(config, interface=interface)
    if our_nets:
        config = replace(config, our_nets=our_nets)
    return config
