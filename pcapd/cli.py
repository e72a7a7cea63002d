"""`pcapd` command line: serve, capture, trigger, results, check-config, agent,
correlate, web."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import redis

from pcapd.core.config import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_CHANNEL,
    DEFAULT_RESULTS_CHANNEL,
    DEFAULT_RESULTS_STREAM,
    FORMATS,
    MAX_SNAPLENGTH,
    Config,
    ConfigError,
    RedisConfig,
    load_config,
)
from pcapd.core.secret import Secret, resolve_secret

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
STREAM_MAXLEN = 100_000  # requests kept in the request stream
WAIT_MARGIN = 15.0  # seconds past a request's own bounds to wait for its results


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # a ConfigError is printed by main()
    problems = [] if args.agent_only else config.serve_problems()
    problems += _agent_problems(config)
    for warning in config.warnings:
        print(f"{args.config}: warning: {warning}", file=sys.stderr)
    for problem in problems:
        print(f"{args.config}: error: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.config}: ok (node {config.general.node})")
    return 0


def _agent_problems(config: Config) -> list[str]:
    """Errors in the [agents.*] sections, which each agent validates itself."""
    checks: dict[str, Callable[[Any], object]] = {}
    if "dnstap" in config.agents:
        from agents.dnstap.config import parse_dnstap_config

        checks["dnstap"] = parse_dnstap_config
    if "flow" in config.agents:
        from agents.flow.config import parse_flow_config

        checks["flow"] = parse_flow_config
    if "dnswire" in config.agents:
        from agents.dnswire.config import parse_dnswire_config

        checks["dnswire"] = parse_dnswire_config
    problems: list[str] = []
    for name, check in checks.items():
        try:
            check(config.agents[name])
        except ConfigError as exc:
            problems.extend(exc.errors)
    unknown = sorted(set(config.agents) - {"dnstap", "flow", "dnswire"})
    problems.extend(f"agents.{name}: unknown agent (dnstap, flow, dnswire)" for name in unknown)
    return problems


def _serve(args: argparse.Namespace) -> int:
    from pcapd.pcapdaemon import serve_main

    return serve_main(args.serve_args, "pcapd serve")


def _capture(args: argparse.Namespace) -> int:
    from pcapd.oneshot import run_capture

    return run_capture(
        args.interface,
        " ".join(args.expression),
        output=args.write,
        packets=args.packets,
        snap=args.snap,
        max_bytes=args.bytes,
        duration=args.duration,
        timeout=args.timeout,
        fmt=args.format,
        buffer_size=args.buffer_size,
    )


def _redis_config(args: argparse.Namespace) -> RedisConfig:
    """[redis] from -c FILE, overridden by --redis-url, else $PCAPD_REDIS_URL."""
    if args.config:
        base = load_config(args.config).redis
    else:
        url = os.environ.get("PCAPD_REDIS_URL", DEFAULT_REDIS_URL)
        base = RedisConfig(url=Secret(url))
    if args.redis_url:
        base = replace(base, url=Secret(args.redis_url))
    return base


def _client(args: argparse.Namespace) -> tuple[redis.Redis, RedisConfig]:
    from pcapd.core.redis_conn import connect

    config = _redis_config(args)
    return connect(config, socket_timeout=None), config


def _request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.stdin:
        text = sys.stdin.read()
        try:
            given = json.loads(text)
        except ValueError as exc:
            raise SystemExit(f"pcapd trigger: standard input is not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise SystemExit("pcapd trigger: standard input must hold a JSON object")
        return given
    request: dict[str, Any] = {}
    if args.nodere:
        request["nodere"] = args.nodere
    else:
        request["node"] = args.node
    if args.alias:
        request["alias"] = args.alias
    else:
        request["interface"] = args.interface or ["any"]
    request["bpf"] = " ".join(args.expression)
    for name in ("packets", "bytes", "duration", "timeout", "snap", "alertid", "format"):
        value = getattr(args, name)
        if value is not None:
            request[name] = value
    if args.tags:
        request["tags"] = args.tags
    if args.customer:
        request["customer"] = args.customer
    return request


def _signing_key(args: argparse.Namespace) -> Secret:
    """--key (a secret, env:NAME or file:/path), else [security] keys[--kid] of -c."""
    if args.key:
        try:
            return resolve_secret(args.key)
        except ValueError as exc:
            raise SystemExit(f"pcapd trigger: --key: {exc}") from None
    keys = load_config(args.config).security.keys if args.config else {}
    if args.kid not in keys:
        raise SystemExit(f"pcapd trigger: --kid {args.kid}: give --key, or -c a config whose "
                         "[security] keys has it")  # fmt: skip
    return keys[args.kid]


def _trigger(args: argparse.Namespace) -> int:
    import time

    from pcapd.client import new_request_id, print_events, publish_request, subscribe
    from pcapd.signing import sign
    from triggers.redis_stream import publish_stream

    request = _request_from_args(args)
    request.setdefault("id", new_request_id())
    client, config = _client(args)
    channel = args.channel or (config.stream if args.stream else config.channel)
    pubsub = None
    try:
        if args.wait is not None:
            request.setdefault("reply_to", f"pcapd-reply-{request['id']}")
            pubsub = subscribe(client, request["reply_to"])
        if args.kid:
            request = sign(request, args.kid, _signing_key(args), time.time())
        body = json.dumps(request).encode()
        if args.stream:
            entry = publish_stream(client, channel, body, STREAM_MAXLEN)
            where = f"stream {channel!r} as {entry}"
        else:
            receivers = publish_request(client, channel, body)
            where = f"{channel!r} ({receivers} subscribers)"
    except redis.RedisError as exc:
        print(f"pcapd trigger: Redis at {config.describe()}: {exc}", file=sys.stderr)
        return 1
    print(f"published request {request['id']} to {where}", file=sys.stderr)
    if pubsub is None:
        return 0
    wait = args.wait or (
        int(request.get("duration", 60)) + int(request.get("timeout", 10)) + WAIT_MARGIN
    )
    got = print_events(
        pubsub, timeout=wait, count=args.count, accept=lambda e: e.get("id") == request["id"]
    )
    if got == 0:
        print(f"pcapd trigger: no result within {wait:.0f}s", file=sys.stderr)
        return 1
    return 0


def _results(args: argparse.Namespace) -> int:
    from pcapd.client import follow_stream, print_events, subscribe

    client, config = _client(args)
    try:
        if args.stream:
            if args.config and not config.results_stream:
                print(f"pcapd results: {args.config} sets results_stream = \"\": no stream "
                      "is written; follow the channel instead", file=sys.stderr)  # fmt: skip
                return 1
            stream = config.results_stream or DEFAULT_RESULTS_STREAM
            follow_stream(client, stream, from_start=args.from_start, timeout=args.timeout,
                          count=args.count)  # fmt: skip
            return 0
        pubsub = subscribe(client, args.channel or config.results_channel)
        print_events(pubsub, timeout=args.timeout, count=args.count)
    except redis.RedisError as exc:
        print(f"pcapd results: Redis at {config.describe()}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


def _spool(args: argparse.Namespace) -> int:
    from uploaders.spool_cli import main as spool_main

    return int(spool_main(args.spool_args))


def _agent(args: argparse.Namespace) -> int:
    if args.agent == "dnstap":
        from agents.dnstap.cli import main as dnstap_main

        return int(dnstap_main(args.agent_args))
    if args.agent == "dnswire":
        from agents.dnswire.cli import main as dnswire_main

        return int(dnswire_main(args.agent_args))
    if args.agent == "dnsflow-ingest":
        from agents.dnswire.ingest import main as ingest_main

        return int(ingest_main(args.agent_args))
    from agents.flow.cli import main as flow_main

    return int(flow_main(args.agent_args))


def _add_redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="take [redis] from this config")
    parser.add_argument(
        "--redis-url", metavar="URL",
        help="redis://, rediss:// or unix:// URL "
        f"(default: $PCAPD_REDIS_URL or {DEFAULT_REDIS_URL})",
    )  # fmt: skip


def _add_bounds(parser: argparse.ArgumentParser, *, one_shot: bool) -> None:
    """Capture bounds: tcpdump's letters for `capture`, request field names for `trigger`."""
    if one_shot:
        parser.add_argument("-c", "--count", dest="packets", type=int, default=1000,
                            metavar="N", help="stop after N packets (default 1000)")  # fmt: skip
        parser.add_argument("-s", "--snaplen", dest="snap", type=int, default=MAX_SNAPLENGTH,
                            metavar="SNAP", help="bytes kept of each packet")  # fmt: skip
    else:
        parser.add_argument("--packets", type=int, metavar="N", help="stop after N packets")
        parser.add_argument("--snap", type=int, metavar="SNAP", help="bytes kept of each packet")
    parser.add_argument("--bytes", type=int, default=100_000_000 if one_shot else None,
                        metavar="N", help="stop before the file would exceed N bytes")  # fmt: skip
    parser.add_argument("--duration", type=int, default=60 if one_shot else None, metavar="S",
                        help="stop after S seconds")  # fmt: skip
    parser.add_argument("--timeout", type=int, default=10 if one_shot else None, metavar="S",
                        help="stop after S seconds without a packet")  # fmt: skip
    parser.add_argument("--format", choices=FORMATS, default="pcap" if one_shot else None)
    parser.add_argument("expression", nargs="*", help="BPF filter, as for tcpdump")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcapd",
        description="On-demand bounded packet captures triggered over Redis, "
        "and agents that record DNS answers and flows in Redis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve", help="run the capture daemon",
        description="Listen for capture requests and serve them until SIGTERM. The first "
        "SIGTERM/SIGINT ends running captures (stop=shutdown), delivers them and exits 0; "
        "a second one exits at once. Takes pcapdaemon's flags: `pcapd serve -help`.",
        add_help=False,
    )  # fmt: skip
    serve.add_argument("serve_args", nargs=argparse.REMAINDER, metavar="-c FILE ...")
    serve.set_defaults(func=_serve)

    capture = sub.add_parser(
        "capture", help="one bounded capture to a file, like tcpdump -w",
        description="Capture on one interface until the first bound is reached, then write "
        "the file. Needs no Redis and no config. Example: "
        "pcapd capture -i lo -c 100 -w dns.pcap udp port 53",
    )  # fmt: skip
    capture.add_argument("-i", "--interface", required=True)
    capture.add_argument("-w", "--write", metavar="FILE", help="output file, - for stdout")
    capture.add_argument("-B", "--buffer-size", type=int, default=DEFAULT_BUFFER_SIZE,
                         help="kernel buffer in bytes")  # fmt: skip
    _add_bounds(capture, one_shot=True)
    capture.set_defaults(func=_capture)

    trigger = sub.add_parser(
        "trigger", help="publish a capture request",
        description="Publish a request built from the options, or read from stdin with "
        "--stdin. With --wait, print the result events for it as JSON lines. Example: "
        "pcapd trigger --node any -i lo --packets 10 --wait 30 icmp",
    )  # fmt: skip
    _add_redis_options(trigger)
    trigger.add_argument("--channel", help=f"request channel (default [redis] channel, "
                         f"{DEFAULT_CHANNEL})")  # fmt: skip
    target = trigger.add_mutually_exclusive_group()
    target.add_argument("--node", default="any", help="exact node name or 'any' (default)")
    target.add_argument("--nodere", help="regular expression searched in node names")
    where = trigger.add_mutually_exclusive_group()
    where.add_argument("-i", "--interface", action="append", help="repeatable")
    where.add_argument("--alias", action="append", help="interface alias, repeatable")
    trigger.add_argument("--alertid", type=int)
    trigger.add_argument("--tags", help="comma-separated tags")
    trigger.add_argument("--customer")
    trigger.add_argument("--stdin", action="store_true", help="read the request JSON from stdin")
    trigger.add_argument("--stream", action="store_true",
                         help="XADD to [redis] stream instead of PUBLISH")  # fmt: skip
    trigger.add_argument("--kid", metavar="NAME", help="sign the request with this key name")
    trigger.add_argument("--key", metavar="SECRET",
                         help="the key for --kid: env:NAME, file:/path or the secret itself "
                         "(default: [security] keys of -c FILE)")  # fmt: skip
    trigger.add_argument(
        "--wait", type=float, nargs="?", const=0.0, metavar="SECONDS",
        help="print this request's results; stop after SECONDS (default: its bounds + 15 s)",
    )  # fmt: skip
    trigger.add_argument("--count", type=int, metavar="N", help="with --wait: stop after N results")
    _add_bounds(trigger, one_shot=False)
    trigger.set_defaults(func=_trigger)

    results = sub.add_parser(
        "results", help="follow result events",
        description="Print result events as JSON lines from the results channel, or from "
        "the capped results stream with --stream.",
    )  # fmt: skip
    _add_redis_options(results)
    results.add_argument("--channel", help=f"(default [redis] results_channel, "
                         f"{DEFAULT_RESULTS_CHANNEL})")  # fmt: skip
    results.add_argument("--stream", action="store_true", help="read the results stream")
    results.add_argument("--from-start", action="store_true", help="with --stream: from the oldest")
    results.add_argument("--count", type=int, metavar="N", help="stop after N events")
    results.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
    results.set_defaults(func=_results)

    check = sub.add_parser(
        "check-config", help="validate a config file, printing every error",
        description="Validate a config file. Prints every error, each naming its field; "
        "exits 1 if there is any.",
    )  # fmt: skip
    check.add_argument("config", metavar="FILE")
    check.add_argument(
        "--agent-only", action="store_true",
        help="the file only configures agents: skip the checks for `serve`",
    )  # fmt: skip
    check.set_defaults(func=_check_config)

    spool = sub.add_parser(
        "spool", help="show or retry captures waiting in the spool",
        description="`pcapd spool list -c FILE` shows spooled captures; `pcapd spool retry "
        "-c FILE [ID...]` delivers them now. `pcapd spool --help` for details.",
        add_help=False,
    )  # fmt: skip
    spool.add_argument("spool_args", nargs=argparse.REMAINDER, metavar="...")
    spool.set_defaults(func=_spool)

    agent = sub.add_parser(
        "agent", help="run a collector that fills Redis (dnstap, flow, dnswire, dnsflow-ingest)",
        description="Run a long-lived agent. `pcapd agent dnstap --help` and "
        "`pcapd agent flow --help` describe each.",
    )  # fmt: skip
    agent.add_argument("agent", choices=("dnstap", "flow", "dnswire", "dnsflow-ingest"))
    agent.add_argument("agent_args", nargs=argparse.REMAINDER, metavar="...")
    agent.set_defaults(func=_agent)

    from pcapd.correlator.command import add_commands

    add_commands(sub, _add_redis_options, _redis_config)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["spool"]:
        # The spool command parses its own options, --help included.
        return _spool(argparse.Namespace(spool_args=argv[1:]))
    if argv[:1] == ["serve"]:
        # pcapdaemon's Go-style flags, which argparse cannot spell (-upload=false).
        return _serve(argparse.Namespace(serve_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":
    raise SystemExit(main())
