"""`pcapd trigger`: publish a capture request; `--wait` prints its results."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pcapd.cli.common import (
    Subparsers,
    UsageError,
    add_bounds,
    add_command,
    add_redis_options,
    redis_config,
)
from pcapd.core.config import DEFAULT_CHANNEL, MAX_SECONDS, load_config
from pcapd.core.lifecycle import EXIT_FAILURE, EXIT_OK
from pcapd.core.request.body import strict_json
from pcapd.core.secret import Secret, resolve_secret

STREAM_MAXLEN = 100_000  # requests kept in the request stream
WAIT_MARGIN = 15.0  # seconds past a request's own bounds to wait for its results


def _request_from_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.stdin:
        text = sys.stdin.read()
        try:
            given = strict_json(text)  # what the daemon will read: NaN would be published
        except (ValueError, RecursionError) as exc:
            raise UsageError(f"pcapd trigger: standard input is not JSON: {exc}") from None
        if not isinstance(given, dict):
            raise UsageError("pcapd trigger: standard input must hold a JSON object")
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
    for name in ("packets", "bytes", "duration", "timeout", "snap", "alertid", "format",
                 "lookback"):  # fmt: skip
        value = getattr(args, name)
        if value is not None:
            request[name] = value
    if args.tags:
        request["tags"] = args.tags
    if args.customer:
        request["customer"] = args.customer
    return request


def _wait_seconds(text: str) -> float:
    """--wait's optional SECONDS. argparse hands it the word after --wait
    whatever it is, so a filter written there ends up here: say where it goes."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds; put the filter after another option "
            "(--wait --packets 10 host 10.1.2.3) or give the seconds (--wait 60 host 10.1.2.3)"
        ) from None
    if not 0 <= seconds <= MAX_SECONDS:  # also NaN
        raise argparse.ArgumentTypeError(f"{text}: seconds must be 0..{MAX_SECONDS}")
    return seconds


def _own_seconds(request: dict[str, Any], name: str, default: int) -> int:
    """A request's own bound for --wait's default; `default` for one the
    daemon will not take (not a JSON integer from 1 to MAX_SECONDS: it
    answers `rejected`, which ends the wait), as for one not given."""
    value = request.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SECONDS:
        return default
    return value


def _signing_key(args: argparse.Namespace) -> Secret:
    """--key (a secret, env:NAME or file:/path), else [security] keys[--kid] of -c."""
    if args.key:
        try:
            return resolve_secret(args.key)
        except ValueError as exc:
            raise UsageError(f"pcapd trigger: --key: {exc}") from None
    keys = load_config(args.config).security.keys if args.config else {}
    if args.kid not in keys:
        raise UsageError(f"pcapd trigger: --kid {args.kid}: give --key, or -c a config whose "
                         "[security] keys has it")  # fmt: skip
    return keys[args.kid]


def _run(args: argparse.Namespace) -> int:
    import time

    import redis

    from pcapd.client import new_request_id, print_events, publish_request, subscribe
    from pcapd.complete import Answers, expected
    from pcapd.signing import sign
    from triggers.redis_stream import publish_stream

    request = _request_from_args(args)
    request.setdefault("id", new_request_id())
    from pcapd.core.redis_conn import connect

    config = redis_config(args)
    client = connect(config, socket_timeout=None)
    channel = args.channel or (config.stream if args.stream else config.channel)
    pubsub = None
    try:
        if args.wait is not None:
            request.setdefault("reply_to", f"pcapd-reply-{request['id']}")
            pubsub = subscribe(client, request["reply_to"], sharded=config.sharded_pubsub)
        if args.kid:
            request = sign(request, args.kid, _signing_key(args), time.time())
        body = json.dumps(request).encode()
        if args.stream:
            entry = publish_stream(client, channel, body, STREAM_MAXLEN)
            where = f"stream {channel!r} as {entry}"
        else:
            receivers = publish_request(client, channel, body, sharded=config.sharded_pubsub)
            where = f"{channel!r} ({receivers} subscribers)"
    except redis.RedisError as exc:
        print(f"pcapd trigger: Redis at {config.describe()}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"published request {request['id']} to {where}", file=sys.stderr)
    if pubsub is None:
        return EXIT_OK
    wait = args.wait or (
        _own_seconds(request, "duration", 60) + _own_seconds(request, "timeout", 10) + WAIT_MARGIN
    )
    named = expected(body)
    answers = None if named is None else Answers(named, durable=args.stream)

    def answered(event: dict[str, Any]) -> bool:
        if answers is None:
            return False
        answers.add(event)
        return answers.complete()

    got = print_events(
        pubsub, timeout=wait, count=args.count, accept=lambda e: e.get("id") == request["id"],
        until=answered,
    )  # fmt: skip
    if answers is not None and answers.complete():
        nodes = ", ".join(sorted(answers.expected.nodes))
        print(f"every node named has answered: {nodes}", file=sys.stderr)
    elif got == 0:
        print(f"pcapd trigger: no result within {wait:.0f}s", file=sys.stderr)
        return EXIT_FAILURE
    elif answers is not None and (args.count is None or got < args.count):
        print(f"pcapd trigger: within {wait:.0f}s no final answer from "
              f"{', '.join(answers.missing())}", file=sys.stderr)  # fmt: skip
    return EXIT_OK


def register(subparsers: Subparsers) -> None:
    trigger = add_command(
        subparsers, "trigger", _run,
        description="Publish a request built from the options, or read from stdin with "
        "--stdin. With --wait, print the result events for it as JSON lines. Example: "
        "pcapd trigger --node any -i lo --packets 10 --wait 30 icmp",
    )  # fmt: skip
    add_redis_options(trigger)
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
        "--wait", type=_wait_seconds, nargs="?", const=0.0, metavar="SECONDS",
        help="print this request's results; stop after SECONDS (default: its bounds + 15 s), "
        "or once every node the request names has answered for good: --node NAME, or a "
        "--nodere naming each node, ^(web1|web2)$, and a final result (not spooled or "
        "duplicate, nor failed with --stream) on each -i interface or one rejecting the "
        "whole request. With --node any, another --nodere or --alias it waits out SECONDS: "
        "a node not named says nothing",
    )  # fmt: skip
    trigger.add_argument("--count", type=int, metavar="N", help="with --wait: stop after N results")
    trigger.add_argument("--lookback", type=int, metavar="S",
                         help="start with the last S seconds from the interface's lookback "
                         "ring (an [[interface]] with lookback)")  # fmt: skip
    add_bounds(trigger, one_shot=False)
