"""`pcapd agent flow`: ShoDoHFlo's `pcap_agent.py IFACE OUR-NETS`, plus `-c FILE`;
the agent itself is agents.flow.agent.run."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import replace
from urllib.parse import urlsplit

from agents.flow.config import (
    DIRECTIONS,
    MAX_STATS_INTERVAL,
    MIN_STATS_INTERVAL,
    FlowConfig,
    parse_flow_config,
    parse_networks_arg,
    with_command_line,
)
from pcapd.cli.common import (
    Subparsers,
    add_command,
    add_log_level,
    agent_config,
    in_file,
    positionals,
)
from pcapd.core.config import REDIS_URL_SCHEMES, REDIS_URL_SCHEMES_TEXT, ConfigError, RedisConfig
from pcapd.core.logs import event
from pcapd.core.secret import Secret

SECTION = "flow"
check_section = parse_flow_config

log = logging.getLogger("pcapd.agents.flow")


def _settings(args: argparse.Namespace) -> tuple[FlowConfig, RedisConfig]:
    config, table = agent_config(args.config, SECTION, args.log_level)
    redis_config = config.redis if config is not None else RedisConfig()
    if args.redis:
        scheme = urlsplit(args.redis).scheme
        if scheme not in REDIS_URL_SCHEMES:
            raise ConfigError(
                [f"--redis: scheme {scheme!r} is not one of {REDIS_URL_SCHEMES_TEXT}"]
            )
        try:
            _ = urlsplit(args.redis).port  # raises on a port that is not a number in 0..65535
        except ValueError as exc:
            raise ConfigError([f"--redis: bad port: {exc}"]) from None
        redis_config = RedisConfig(url=Secret(args.redis))
    flow: FlowConfig = in_file(args.config, parse_flow_config, table)
    positional = positionals(args)
    limit = 1 if args.read else 2
    if len(positional) > limit:
        usage = "OUR-NETS with --read" if args.read else "IFACE OUR-NETS"
        raise ConfigError([f"too many arguments {positional!r}: expected {usage}"])
    interface = None if args.read or not positional else positional.pop(0)
    our_nets = parse_networks_arg(positional[0]) if positional else None
    flow = with_command_line(flow, interface, our_nets)
    overrides: dict[str, object] = {}
    if args.direction:
        overrides["direction"] = args.direction
    if args.stats_interval is not None:
        if not MIN_STATS_INTERVAL <= args.stats_interval <= MAX_STATS_INTERVAL:
            rule = (
                f"must be at least {MIN_STATS_INTERVAL} and at most {MAX_STATS_INTERVAL}"
                if math.isfinite(args.stats_interval)
                else "must be a finite number"
            )
            raise ConfigError([f"--stats-interval: {rule}, got {args.stats_interval!r}"])
        overrides["stats_interval"] = args.stats_interval
    if overrides:
        flow = replace(flow, **overrides)  # type: ignore[arg-type]
    if not flow.our_nets:
        raise ConfigError(
            ["OUR-NETS: required, on the command line or as agents.flow.our_nets "
             "(RST and ICMP events and own-network suppression are scoped by it)"]
        )  # fmt: skip
    if not args.read and not flow.interface:
        raise ConfigError(["IFACE: required, on the command line or as agents.flow.interface"])
    flow.ruleset()  # our_nets is known now: surface its errors before capturing
    return flow, redis_config


def _run(args: argparse.Namespace) -> int:
    from agents.flow.agent import run
    from pcapd.core.redis_conn import connect

    flow, redis_config = _settings(args)
    where = f"{args.config}: " if args.config else ""
    for warning in flow.warnings:
        print(f"pcapd agent flow: {where}warning: {warning}", file=sys.stderr)
    event(log, "flow_redis", target=redis_config.describe())
    return run(flow, lambda: connect(redis_config), args.read)


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "flow", _run, prefix="pcapd agent flow: ", takes_rest=True,
        description="Record who talked to whom (flows, TCP RST, ICMP unreachable) into Redis, "
        "with ShoDoHFlo's keys. IFACE and OUR-NETS are ShoDoHFlo's arguments; both may "
        "instead come from [agents.flow] in the config file. The first SIGTERM/SIGINT sends "
        "what is queued and exits 0; a second one exits at once, status 1.",
    )  # fmt: skip
    parser.add_argument(
        "positional", nargs="*", metavar="IFACE OUR-NETS",
        help="interface to capture on, and our networks as CIDR[,CIDR...] (IPv4 and IPv6); "
        "with --read give only OUR-NETS",
    )  # fmt: skip
    parser.add_argument("-c", "--config", metavar="FILE", help="pcapd TOML config")
    parser.add_argument(
        "--read", metavar="FILE.pcap", help="process a capture file instead of an interface"
    )
    parser.add_argument(
        "--redis", metavar="URL",
        help="redis://host:port/db or unix:///path; overrides [redis] from the config",
    )  # fmt: skip
    parser.add_argument("--direction", choices=DIRECTIONS, help="capture direction (default in)")
    parser.add_argument(
        "--stats-interval", type=float, metavar="S", help="seconds between stats log lines"
    )
    add_log_level(parser)
