"""`pcapd results`: follow result events from the channel or the capped stream."""

from __future__ import annotations

import argparse
import sys

from pcapd.cli.common import Subparsers, UsageError, add_command, add_redis_options, redis_config
from pcapd.core.config import DEFAULT_RESULTS_CHANNEL, DEFAULT_RESULTS_STREAM
from pcapd.core.lifecycle import EXIT_FAILURE, EXIT_OK


def _run(args: argparse.Namespace) -> int:
    import redis

    from pcapd.client import follow_stream, print_events, subscribe
    from pcapd.core.redis_conn import connect

    config = redis_config(args)
    if args.stream and args.config and not config.results_stream:
        raise UsageError(f"pcapd results: {args.config} sets results_stream = \"\": no stream "
                         "is written; follow the channel instead")  # fmt: skip
    client = connect(config, socket_timeout=None)
    try:
        if args.stream:
            stream = config.results_stream or DEFAULT_RESULTS_STREAM
            follow_stream(client, stream, from_start=args.from_start, timeout=args.timeout,
                          count=args.count)  # fmt: skip
            return EXIT_OK
        channel = args.channel or config.results_channel
        pubsub = subscribe(client, channel, sharded=config.sharded_pubsub)
        print_events(pubsub, timeout=args.timeout, count=args.count)
    except redis.RedisError as exc:
        print(f"pcapd results: Redis at {config.describe()}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def register(subparsers: Subparsers) -> None:
    results = add_command(
        subparsers, "results", _run,
        description="Print result events as JSON lines from the results channel, or from "
        "the capped results stream with --stream.",
    )  # fmt: skip
    add_redis_options(results)
    results.add_argument("--channel", help=f"(default [redis] results_channel, "
                         f"{DEFAULT_RESULTS_CHANNEL})")  # fmt: skip
    results.add_argument("--stream", action="store_true", help="read the results stream")
    results.add_argument("--from-start", action="store_true", help="with --stream: from the oldest")
    results.add_argument("--count", type=int, metavar="N", help="stop after N events")
    results.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")
