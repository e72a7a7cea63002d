"""The rules engine alone, table-driven: actions, precedence, ties, fall-through, drop."""

from __future__ import annotations

import ipaddress
import tomllib
from pathlib import Path

import pytest

from agents.flow.config import parse_flow_config, parse_networks_arg, with_command_line
from agents.flow.rules import (
    Mapping,
    NamedNetwork,
    Rule,
    RuleError,
    RuleSet,
    Verdict,
    default_networks,
    default_rules,
)

DOCS = Path(__file__).resolve().parents[3] / "docs"


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def net(name: str, cidr: str) -> NamedNetwork:
    return NamedNetwork(name, ipaddress.ip_network(cidr))


def mapping(client: str, service: str, port: int) -> Mapping:
    return Mapping(ip(client), ip(service), port)


ANY = RuleSet(default_networks(), default_rules())

# (rule, (src, sport, dst, dport), expected mapping or None when it does not match)
ACTION_CASES = [
    # lower_port: the lower port is the service side; precedence breaks a tie.
    (Rule("lower_port"), ("10.0.0.1", 50000, "10.0.0.2", 443),
     mapping("10.0.0.1", "10.0.0.2", 443)),
    (Rule("lower_port"), ("10.0.0.2", 443, "10.0.0.1", 50000),
     mapping("10.0.0.1", "10.0.0.2", 443)),
    (Rule("lower_port"), ("10.0.0.1", 123, "10.0.0.2", 123), mapping("10.0.0.2", "10.0.0.1", 123)),
    (Rule("lower_port", precedence="dst"), ("10.0.0.1", 123, "10.0.0.2", 123),
     mapping("10.0.0.1", "10.0.0.2", 123)),
    # port_match: the side whose port is listed is the service; precedence = checked first.
    (Rule("port_match", ports=frozenset({8080})), ("10.0.0.1", 8080, "10.0.0.2", 80),
     mapping("10.0.0.2", "10.0.0.1", 8080)),
    (Rule("port_match", ports=frozenset({8080})), ("10.0.0.1", 80, "10.0.0.2", 8080),
     mapping("10.0.0.1", "10.0.0.2", 8080)),
    (Rule("port_match", ports=frozenset({80, 8080})), ("10.0.0.1", 8080, "10.0.0.2", 80),
     mapping("10.0.0.2", "10.0.0.1", 8080)),
    (Rule("port_match", ports=frozenset({80, 8080}), precedence="dst"),
     ("10.0.0.1", 8080, "10.0.0.2", 80), mapping("10.0.0.1", "10.0.0.2", 80)),
    (Rule("port_match", ports=frozenset({25})), ("10.0.0.1", 8080, "10.0.0.2", 80), None),
    # no ports: never matches, as ShoDoHFlo's PortMatch(set())
    (Rule("port_match", ports=frozenset()), ("10.0.0.1", 25, "10.0.0.2", 80), None),
    # assign: client side fixed; port side defaults to the service side.
    (Rule("assign", client="src"), ("10.0.0.1", 1, "10.0.0.2", 60000),
     mapping("10.0.0.1", "10.0.0.2", 60000)),
    (Rule("assign", client="dst"), ("10.0.0.1", 1, "10.0.0.2", 60000),
     mapping("10.0.0.2", "10.0.0.1", 1)),
    (Rule("assign", client="dst", port="dst"), ("10.0.0.1", 1, "10.0.0.2", 60000),
     mapping("10.0.0.2", "10.0.0.1", 60000)),
    (Rule("assign", client="dst", port="src", ports=frozenset({53})),
     ("10.0.0.1", 53, "10.0.0.2", 40000), mapping("10.0.0.2", "10.0.0.1", 53)),
    (Rule("assign", client="dst", port="src", ports=frozenset({53})),
     ("10.0.0.1", 54, "10.0.0.2", 40000), None),
    # IPv6 works the same way.
    (Rule("lower_port"), ("fd00::1", 50000, "2001:db8::2", 443),
     mapping("fd00::1", "2001:db8::2", 443)),
]  # fmt: skip


@pytest.mark.parametrize(("rule", "flow", "expected"), ACTION_CASES)
def test_actions(rule: Rule, flow: tuple[str, int, str, int], expected: Mapping | None) -> None:
    src, sport, dst, dport = flow
    assert rule.apply(ip(src), sport, ip(dst), dport) == expected
    rules = RuleSet(default_networks(), [rule])
    assert rules.match(ip(src), sport, ip(dst), dport) == (expected or Verdict.NO_RULE)


def test_first_matching_network_wins_and_names_repeat() -> None:
    rules = RuleSet(
        [
            net("remote", "10.222.0.0/16"),
            net("hangar", "10.0.33.0/24"),
            net("site", "10.0.0.0/16"),
            net("remote", "10.223.221.0/24"),
            net("v6", "fd00::/8"),
            net("external", "0.0.0.0/0"),
        ],
        [],
    )
    table = {
        "10.222.1.1": "remote",
        "10.223.221.9": "remote",
        "10.0.33.7": "hangar",
        "10.0.34.7": "site",
        "8.8.8.8": "external",
        "fd12::1": "v6",
        "2001:db8::1": None,  # no IPv6 catch-all: in no network
    }
    for address, name in table.items():
        assert rules.network_of(ip(address)) == name, address


def test_address_in_no_network_is_dropped() -> None:
    rules = RuleSet([net("v4", "0.0.0.0/0")], [Rule("lower_port")])
    assert rules.match(ip("2001:db8::1"), 1, ip("2001:db8::2"), 2) is Verdict.NO_NETWORK
    # Both IPv4 addresses are in the one network: the lower port is the service.
    got = rules.match(ip("192.0.2.1"), 1, ip("192.0.2.2"), 2)
    assert got == mapping("192.0.2.2", "192.0.2.1", 1)


FALL_THROUGH = RuleSet(
    [net("inside", "10.0.0.0/8"), net("outside", "0.0.0.0/0")],
    [
        Rule("port_match", src="outside", ports=frozenset({53}), drop=True),
        Rule("port_match", src="outside", dst="inside", ports=frozenset({25, 443})),
        Rule("assign", src="inside", dst="inside", client="src", ports=frozenset({9999})),
        Rule("lower_port", dst="outside", precedence="dst"),
    ],
)
FALL_THROUGH_CASES = [
    # rule 0 matches with drop: stops, dropped.
    (("192.0.2.1", 53, "10.1.1.1", 40000), Verdict.DROP),
    # rule 0 does not match (no port 53): falls to rule 1.
    (("192.0.2.1", 443, "10.1.1.1", 40000), mapping("10.1.1.1", "192.0.2.1", 443)),
    # rules 0 and 1 do not match, nothing else applies to outside -> inside.
    (("192.0.2.1", 8080, "10.1.1.1", 40000), Verdict.NO_RULE),
    # src/dst network filters: rule 2 only for inside -> inside with port 9999.
    (("10.1.1.1", 40000, "10.2.2.2", 9999), mapping("10.1.1.1", "10.2.2.2", 9999)),
    (("10.1.1.1", 40000, "10.2.2.2", 9998), Verdict.NO_RULE),
    # rule 3 for anything to outside; precedence dst on a tie.
    (("10.1.1.1", 5000, "192.0.2.1", 5000), mapping("10.1.1.1", "192.0.2.1", 5000)),
]


@pytest.mark.parametrize(("flow", "expected"), FALL_THROUGH_CASES)
def test_fall_through_and_drop(flow: tuple[str, int, str, int], expected: object) -> None:
    src, sport, dst, dport = flow
    assert FALL_THROUGH.match(ip(src), sport, ip(dst), dport) == expected


def test_ignore_flows_by_address_and_port() -> None:
    rules = RuleSet(default_networks(), default_rules(), [(ip("192.0.2.53"), 53)])
    assert rules.ignored(ip("192.0.2.53"), 53, ip("10.0.0.1"), 40000)
    assert rules.ignored(ip("10.0.0.1"), 40000, ip("192.0.2.53"), 53)
    assert not rules.ignored(ip("192.0.2.53"), 54, ip("10.0.0.1"), 40000)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"action": "nearest"}, "action: expected one of lower_port, port_match, assign"),
        ({"action": "lower_port", "precedence": "left"}, "precedence: expected 'src' or 'dst'"),
        ({"action": "assign", "client": "both"}, "client: expected 'src' or 'dst'"),
        ({"action": "port_match"}, "ports: port_match needs a list of ports"),
        ({"action": "assign", "ports": frozenset({70000})}, "ports: 70000 is not in 1..65535"),
    ],
)
def test_rule_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        Rule(**kwargs)  # type: ignore[arg-type]


def test_unknown_network_in_rule_set() -> None:
    with pytest.raises(RuleError, match="rules\\[0\\]: unknown network 'nowhere'"):
        RuleSet(default_networks(), [Rule("lower_port", dst="nowhere")])


def _seed_rules(our_nets: str = "192.168.0.0/16") -> RuleSet:
    """Seed 001's NETWORK_ENUMERATION / FLOW_MAPPING, as written in docs/flow.md."""
    text = (DOCS / "flow.md").read_text()
    block = text.split("```toml\n# seed-001\n", 1)[1].split("```", 1)[0]
    config = parse_flow_config(tomllib.loads(block)["agents"]["flow"])
    return with_command_line(config, None, parse_networks_arg(our_nets)).ruleset()


SEED_CASES = [
    # our_nets from the command line; hosts on it are clients of the outside.
    (("192.168.1.10", 50000, "198.51.100.1", 443), mapping("192.168.1.10", "198.51.100.1", 443)),
    (("198.51.100.1", 443, "192.168.1.10", 50000), mapping("192.168.1.10", "198.51.100.1", 443)),
    # LowerPort(SRC) on a tie towards our_nets: the external source is the service.
    (("198.51.100.1", 7000, "192.168.1.10", 7000), mapping("192.168.1.10", "198.51.100.1", 7000)),
    # external DNS answers to bert's resolver: dropped.
    (("203.0.113.53", 53, "10.0.0.1", 40000), Verdict.DROP),
    # external clients of bert's web server: dropped.
    (("203.0.113.9", 51000, "10.0.0.1", 443), Verdict.DROP),
    (("203.0.113.9", 51000, "10.0.0.1", 80), Verdict.DROP),
    # anything else to bert falls through the Assign rules to LowerPort.
    (("203.0.113.9", 51000, "10.0.0.1", 22), mapping("203.0.113.9", "10.0.0.1", 22)),
    (("203.0.113.9", 1234, "10.0.0.2", 5000), mapping("10.0.0.2", "203.0.113.9", 1234)),
    # external to external: no rule.
    (("203.0.113.9", 1234, "198.51.100.1", 80), Verdict.NO_RULE),
    # the seed enumerates IPv4 only: IPv6 is in no network.
    (("2001:db8::1", 1234, "2001:db8::2", 80), Verdict.NO_NETWORK),
]


@pytest.mark.parametrize(("flow", "expected"), SEED_CASES)
def test_seed_001_worked_example(flow: tuple[str, int, str, int], expected: object) -> None:
    src, sport, dst, dport = flow
    assert _seed_rules().match(ip(src), sport, ip(dst), dport) == expected


def test_our_nets_from_the_command_line_wins_first_match() -> None:
    # With 10.0.0.0/8 as our_nets, bert's address is in our_nets (listed first).
    rules = _seed_rules("10.0.0.0/8,fd00::/8")
    assert rules.network_of(ip("10.0.0.1")) == "our_nets"
    assert rules.network_of(ip("fd00::5")) == "our_nets"
    assert rules.match(ip("203.0.113.53"), 53, ip("10.0.0.1"), 40000) == mapping(
        "10.0.0.1", "203.0.113.53", 53
    )
