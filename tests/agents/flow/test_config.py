"""`[agents.flow]` parsing: defaults, our_nets, and errors that name the field."""

from __future__ import annotations

import ipaddress
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents.flow.config import (
    DEFAULT_SNAPLEN,
    FlowConfig,
    parse_flow_config,
    parse_networks_arg,
    with_command_line,
)
from pcapd.core.config import ConfigError, load_config
from pcapd.core.fields import IFACE_RULE
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE

REPO = Path(__file__).resolve().parents[3]


def errors_of(table: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_flow_config(table)
    return info.value.errors


def test_defaults_cover_both_versions_with_lower_port() -> None:
    config = parse_flow_config({})
    assert config == FlowConfig()
    assert config.snaplen == DEFAULT_SNAPLEN and config.direction == "in"
    rules = config.ruleset()
    assert rules.network_of(ipaddress.ip_address("192.0.2.1")) == "all"
    assert rules.network_of(ipaddress.ip_address("2001:db8::1")) == "all"


def test_full_table() -> None:
    config = parse_flow_config(
        {
            "interface": "eth1",
            "our_nets": ["10.0.0.0/8", "fd00::/8"],
            "networks": [{"name": "our_nets"}, {"name": "web", "cidr": ["192.0.2.80/32"]}],
            "rules": [
                {"src": "web", "action": "port_match", "ports": [80, 443], "drop": True},
                {"action": "assign", "client": "dst", "port": "src", "ports": 53},
                {"action": "lower_port", "precedence": "dst"},
            ],
            "ignore_flows": [{"address": "10.0.0.53", "port": 53}],
            "suppress_window": 5,
            "buffer_size": 1 << 20,
            "direction": "inout",
        }
    )
    assert config.interface == "eth1"
    assert [str(n) for n in config.our_nets] == ["10.0.0.0/8", "fd00::/8"]
    assert config.rules[0].drop and config.rules[0].ports == frozenset({80, 443})
    assert config.rules[1].ports == frozenset({53})
    assert config.suppress_window == 5.0 and config.direction == "inout"
    rules = config.ruleset()
    assert rules.network_of(ipaddress.ip_address("fd00::1")) == "our_nets"
    assert rules.ignored(ipaddress.ip_address("10.0.0.53"), 53, ipaddress.ip_address("1.1.1.1"), 9)


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({"rules": [{"action": "lower_port"}, {"action": "lower_port"},
                    {"src": "foo", "action": "lower_port"}]},
         "agents.flow.rules[2].src: unknown network 'foo'"),
        ({"networks": [{"name": "a", "cidr": "10.0.0.0/8"}],
          "rules": [{"dst": "b", "action": "assign"}]},
         "agents.flow.rules[0].dst: unknown network 'b'"),
        ({"rules": [{"action": "closest"}]},
         "agents.flow.rules[0].action: expected one of lower_port, port_match, assign, "
         "got 'closest'"),
        ({"rules": [{"src": "all"}]}, "agents.flow.rules[0].action: required"),
        ({"rules": [{"action": "port_match"}]},
         "agents.flow.rules[0].ports: required by port_match"),
        ({"rules": [{"action": "assign", "client": "server"}]},
         "agents.flow.rules[0].client: expected one of src, dst, got 'server'"),
        ({"rules": [{"action": "port_match", "ports": [0]}]},
         "agents.flow.rules[0].ports: port 0 is not in 1..65535"),
        ({"rules": [{"action": "assign", "drop": "yes"}]},
         "agents.flow.rules[0].drop: expected true or false, got 'yes'"),
        ({"networks": [{"name": "x", "cidr": "10.0.0.300/8"}]},
         "agents.flow.networks[0].cidr: not an IPv4 or IPv6 network, got '10.0.0.300/8'"),
        ({"networks": [{"name": "x"}]}, "agents.flow.networks[0].cidr: required"),
        ({"networks": [{"cidr": "10.0.0.0/8"}]}, "agents.flow.networks[0].name: required"),
        ({"networks": "10.0.0.0/8"}, "agents.flow.networks: expected a list of tables"),
        ({"our_nets": ["nope"]}, "agents.flow.our_nets: not an IPv4 or IPv6 network, got 'nope'"),
        ({"ignore_flows": [{"address": "10.0.0.1"}]}, "agents.flow.ignore_flows[0].port: required"),
        ({"ignore_flows": [{"address": "host", "port": 53}]},
         "agents.flow.ignore_flows[0].address: expected an IPv4 or IPv6 address, got 'host'"),
        ({"snaplen": 10}, "agents.flow.snaplen: must be at least 64 and at most 65535, got 10"),
        ({"direction": "sideways"}, "agents.flow.direction: expected one of in, inout, out"),
        ({"suppress_window": "30s"}, "agents.flow.suppress_window: expected a number, got '30s'"),
        ({"batch_ops": 2000, "max_queue_ops": 1000},
         "agents.flow.batch_ops: 2000 exceeds max_queue_ops=1000"),
        ({"write_combining": 1}, "agents.flow.write_combining: expected true or false, got 1"),
        ({"ping_interval": 7200},
         "agents.flow.ping_interval: must be at least 0.05 and at most 3600.0, got 7200"),
        ({"suppress_window": float("inf")},
         "agents.flow.suppress_window: must be a finite number, got inf"),
        ({"suppress_window": 1e9},
         "agents.flow.suppress_window: must be at least 0.0 and at most 86400.0, got 1000000000.0"),
        ({"stats_interval": float("nan")},
         "agents.flow.stats_interval: must be a finite number, got nan"),
        ({"ttl": 2**31},
         "agents.flow.ttl: must be at least 1 and at most 2147483647, got 2147483648"),
        ({"max_queue_ops": 10**12}, "agents.flow.max_queue_ops: must be at least 1 and at most "),
        ({"buffer_size": 2**40}, "agents.flow.buffer_size: must be at least 65536 and at most "),
        ({"max_tracked": 10**12}, "agents.flow.max_tracked: must be at least 100 and at most "),
    ],
)  # fmt: skip
def test_errors_name_the_field(table: dict[str, Any], expected: str) -> None:
    assert any(error.startswith(expected) for error in errors_of(table)), errors_of(table)


def test_unknown_options_are_warnings_naming_their_path() -> None:
    """One policy with the daemon's sections: an option no action reads is said, not fatal."""
    config = parse_flow_config(
        {
            "snaplength": 128,
            "networks": [{"name": "all", "cidr": "0.0.0.0/0", "cdir": "::/0"}],
            "rules": [{"action": "lower_port", "ports": [80]}],
            "ignore_flows": [{"address": "10.0.0.1", "port": 53, "proto": "udp"}],
        }
    )
    assert config.warnings == (
        "agents.flow.networks[0].cdir: unknown option, ignored",
        "agents.flow.rules[0].ports: unknown option, ignored",
        "agents.flow.ignore_flows[0].proto: unknown option, ignored",
        "agents.flow.snaplength: unknown option, ignored",
    )
    assert config.rules[0].ports is None and config.snaplen == DEFAULT_SNAPLEN


def test_every_error_is_reported_at_once() -> None:
    errors = errors_of({"snaplen": 1, "rules": [{"src": "x", "dst": "y", "action": "lower_port"}]})
    assert sorted(errors) == [
        "agents.flow.rules[0].dst: unknown network 'y'",
        "agents.flow.rules[0].src: unknown network 'x'",
        "agents.flow.snaplen: must be at least 64 and at most 65535, got 1",
    ]


def test_our_nets_entry_needs_our_nets() -> None:
    config = parse_flow_config({"networks": [{"name": "our_nets"}], "rules": []})
    with pytest.raises(ConfigError, match="networks\\[0\\]: name = 'our_nets' without a cidr"):
        config.ruleset()
    filled = with_command_line(config, "eth0", parse_networks_arg("10.1.0.0/16"))
    assert filled.ruleset().network_of(ipaddress.ip_address("10.1.2.3")) == "our_nets"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("10.0.0.0/8", ["10.0.0.0/8"]), ("10.0.0.1/8, fd00::/8", ["10.0.0.0/8", "fd00::/8"])],
)
def test_our_nets_argument(text: str, expected: list[str]) -> None:
    assert [str(n) for n in parse_networks_arg(text)] == expected


@pytest.mark.parametrize("text", ["", ",", "10.0.0.0/33", "eth0"])
def test_bad_our_nets_argument(text: str) -> None:
    with pytest.raises(ConfigError, match="OUR-NETS"):
        parse_networks_arg(text)


def test_port_match_with_no_ports_is_accepted_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ShoDoHFlo's `PortMatch(set())` is accepted (pcap_config checks only the
    ports given) and never matches."""
    with caplog.at_level(logging.WARNING, logger="pcapd.agents.flow"):
        config = parse_flow_config({"rules": [{"action": "port_match", "ports": []}]})
    assert config.rules[0].ports == frozenset()
    assert "event=flow_rule_never_matches rule=agents.flow.rules[0].ports" in caplog.text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "agent", "flow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_cli_reports_config_errors(tmp_path: Path) -> None:
    config = tmp_path / "flow.toml"
    config.write_text(
        '[agents.flow]\nrules = [{ action = "lower_port" }, { action = "lower_port" },\n'
        '  { src = "foo", action = "lower_port" }]\n'
    )
    load_config(config)  # the shared loader accepts it; the agent's parser does not
    result = run_cli("-c", str(config), "lo", "127.0.0.0/8")
    assert result.returncode == EXIT_CONFIG
    assert f"{config}: error: agents.flow.rules[2].src: unknown network 'foo'" in result.stderr


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["no-such-if0", "10.0.0.0/8"], EXIT_FAILURE, "interface 'no-such-if0' not found"),
        (["lo"], EXIT_CONFIG, "OUR-NETS: required"),
        (["lo", "10.0.0.0/40"], EXIT_CONFIG, "OUR-NETS: '10.0.0.0/40' is not a network"),
        (
            ["--read", "/nonexistent.pcap", "10.0.0.0/8"],
            EXIT_FAILURE,
            "--read '/nonexistent.pcap': no such file",
        ),
        (["--redis", "http://x", "lo", "10.0.0.0/8"], EXIT_CONFIG, "--redis: scheme 'http'"),
        (
            ["--redis", "redis://127.0.0.1:abc/0", "lo", "10.0.0.0/8"],
            EXIT_CONFIG,
            "error: --redis: bad port: Port could not be cast to integer value as 'abc'",
        ),
        (
            ["--stats-interval", "inf", "lo", "10.0.0.0/8"],
            EXIT_CONFIG,
            "error: --stats-interval: must be a finite number, got inf",
        ),
        (
            ["--stats-interval", "nan", "lo", "10.0.0.0/8"],
            EXIT_CONFIG,
            "error: --stats-interval: must be a finite number, got nan",
        ),
        (["lo", "10.0.0.0/8", "extra"], EXIT_CONFIG, "too many arguments"),
        (["--nosuch", "lo"], EXIT_CONFIG, "pcapd agent flow: error: unrecognized arguments"),
        # options between IFACE and OUR-NETS: both are still read
        (
            ["lo", "--stats-interval", "nan", "10.0.0.0/8"],
            EXIT_CONFIG,
            "error: --stats-interval: must be a finite number, got nan",
        ),
        (
            ["lo", "--direction", "in", "10.0.0.0/8", "extra"],
            EXIT_CONFIG,
            "too many arguments ['lo', '10.0.0.0/8', 'extra']",
        ),
        (
            ["lo", "--nosuch", "10.0.0.0/8"],
            EXIT_CONFIG,
            "pcapd agent flow: error: unrecognized arguments: --nosuch\n",
        ),
    ],
)
def test_cli_usage_errors(args: list[str], status: int, message: str) -> None:
    """2 for what the command line or config gets wrong; 1 for what this node
    lacks (an interface, a file), which a restart may find."""
    result = run_cli(*args)
    assert result.returncode == status
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_rejects_non_finite_numbers_in_the_file(tmp_path: Path) -> None:
    config = tmp_path / "flow.toml"
    config.write_text("[agents.flow]\nsuppress_window = inf\nstats_interval = nan\n")
    result = run_cli("-c", str(config), "lo", "127.0.0.0/8")
    assert result.returncode == EXIT_CONFIG
    assert result.stderr.splitlines() == [
        f"pcapd agent flow: {config}: error: agents.flow.suppress_window: "
        "must be a finite number, got inf",
        f"pcapd agent flow: {config}: error: agents.flow.stats_interval: "
        "must be a finite number, got nan",
    ]


@pytest.mark.parametrize(
    ("key", "low", "high"), [("suppress_window", 0.0, 86400.0), ("stats_interval", 0.1, 86400.0)]
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_floats_are_finite_and_bounded(key: str, low: float, high: float, value: float) -> None:
    assert errors_of({key: value}) == [f"agents.flow.{key}: must be a finite number, got {value!r}"]
    rule = f"agents.flow.{key}: must be at least {low} and at most {high}"
    assert errors_of({key: high * 2}) == [f"{rule}, got {high * 2!r}"]
    assert getattr(parse_flow_config({key: high}), key) == high


@pytest.mark.parametrize("name", ["a/b", "..", "eth 0", "x" * 16, "lo\x00"])
def test_iface_argument_follows_the_interface_rule(name: str) -> None:
    """The positional IFACE is checked as `[agents.flow] interface` is."""
    with pytest.raises(ConfigError) as caught:
        with_command_line(parse_flow_config({}), name, None)
    assert caught.value.errors == [f"IFACE: {name!r} is not an interface name ({IFACE_RULE})"]


def test_iface_argument_linux_allows_reaches_the_device_check() -> None:
    """`tap#1` is a Linux name: refused only because this host has no such device."""
    assert with_command_line(parse_flow_config({}), "tap#1", None).interface == "tap#1"
    for name, code, message in [
        ("tap#1", EXIT_FAILURE, "pcapd agent flow: error: interface 'tap#1' not found"),
        ("a/b", EXIT_CONFIG, "pcapd agent flow: error: IFACE: 'a/b' is not an interface name"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "pcapd", "agent", "flow", name, "10.0.0.0/8"],
            capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        )  # fmt: skip
        assert done.returncode == code and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
