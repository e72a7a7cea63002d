"""`pcapd agent flow`: ShoDoHFlo's `pcap_agent.py IFACE OUR-NETS`, plus `-c FILE`."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
import threading
from dataclasses import replace
from types import FrameType
from urllib.parse import urlsplit

from agents.flow.agent import AgentError, CaptureError, FlowAgent, make_writer
from agents.flow.config import (
    DIRECTIONS,
    MAX_STATS_INTERVAL,
    MIN_STATS_INTERVAL,
    FlowConfig,
    parse_flow_config,
    parse_networks_arg,
    with_command_line,
)
from agents.store import dropped_status
from pcapd.core.config import ConfigError, RedisConfig, load_config
from pcapd.core.logs import event, setup_agent_logging
from pcapd.core.redis_conn import connect
from pcapd.core.secret import Secret

FLUSH_TIMEOUT = 10.0  # s: how long a stopping agent keeps sending what is queued
REDIS_SCHEMES = ("redis", "rediss", "unix")

log = logging.getLogger("pcapd.agents.flow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcapd agent flow",
        description="Record who talked to whom (flows, TCP RST, ICMP unreachable) into Redis, "
        "with ShoDoHFlo's keys. IFACE and OUR-NETS are ShoDoHFlo's arguments; both may "
        "instead come from [agents.flow] in the config file.",
    )
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
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
    return parser


def _settings(args: argparse.Namespace) -> tuple[FlowConfig, RedisConfig]:
    redis_config = RedisConfig()
    table: object = {}
    config = load_config(args.config) if args.config else None
    setup_agent_logging(config, args.log_level)
    if config is not None:
        redis_config = config.redis
        table = config.agents.get("flow", {})
    if args.redis:
        scheme = urlsplit(args.redis).scheme
        if scheme not in REDIS_SCHEMES:
            raise ConfigError([f"--redis: scheme {scheme!r} is not one of redis, rediss, unix"])
        try:
            _ = urlsplit(args.redis).port  # raises on a port that is not a number in 0..65535
        except ValueError as exc:
            raise ConfigError([f"--redis: bad port: {exc}"]) from None
        redis_config = RedisConfig(url=Secret(args.redis))
    try:
        flow = parse_flow_config(table)
    except ConfigError as exc:
        raise ConfigError(exc.errors, args.config) from None
    positional = list(args.positional)
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


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        flow, redis_config = _settings(args)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"pcapd agent flow: {line}", file=sys.stderr)
        return 1
    writer = make_writer(lambda: connect(redis_config), flow)
    try:
        agent = FlowAgent(flow, writer)
        if args.read:
            agent.open_file(args.read)
        else:
            assert flow.interface is not None
            agent.open_live(flow.interface)
    except AgentError as exc:
        print(f"pcapd agent flow: error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise SystemExit(128 + signum)  # second signal: leave at once
        event(log, "flow_stopping", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    event(log, "flow_redis", target=redis_config.describe())
    writer.start()
    status = 0
    try:
        if args.read:
            agent.run_file(stop)
        else:
            agent.run_live(stop)
    except (CaptureError, OSError) as exc:
        # The interface went away or libpcap failed: exit non-zero so that
        # systemd restarts the agent, after sending what is queued.
        event(log, "flow_capture_failed", logging.ERROR, error=str(exc))
        status = 1
    finally:
        writer.stop(FLUSH_TIMEOUT)
        agent.log_stats("flow_done")
    if args.read and not status:
        status = dropped_status(writer, "flow")
    return status
