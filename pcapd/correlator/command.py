"""`pcapd correlate` and `pcapd web`, registered by pcapd/cli.py."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis

from agents.reader import ReaderError
from pcapd.core.config import Config, RedisConfig, load_config, parse_config

RedisOptions = Callable[[argparse.ArgumentParser], None]
RedisFromArgs = Callable[[argparse.Namespace], RedisConfig]


def _config(args: argparse.Namespace, redis_from_args: RedisFromArgs) -> Config:
    base = load_config(args.config) if args.config else parse_config({})
    return replace(base, redis=redis_from_args(args))


def add_commands(sub: Any, add_redis_options: RedisOptions, redis_from_args: RedisFromArgs) -> None:
    correlate = sub.add_parser(
        "correlate", help="show clients, or one client's chains name → address → flow",
        description="`pcapd correlate --clients [--prefix P] [--search TEXT]` lists clients; "
        "`pcapd correlate CLIENT [--by address|fqdn]` prints its chains as a tree.",
    )  # fmt: skip
    add_redis_options(correlate)
    correlate.add_argument("client", nargs="?", help="the client address")
    correlate.add_argument("--clients", action="store_true", help="list clients")
    correlate.add_argument("--prefix", help="clients in this CIDR (IPv4 or IPv6)")
    correlate.add_argument("--search", help="clients with a name or address containing TEXT")
    correlate.add_argument("--cursor", default="0", help="go on from this SCAN cursor")
    correlate.add_argument("--limit", help="clients per page")
    correlate.add_argument("--by", choices=("fqdn", "address"), default="fqdn")
    correlate.add_argument("--others", action="store_true",
                           help="use resolutions from other clients in the prefix")  # fmt: skip
    correlate.add_argument("--json", action="store_true", help="print JSON, as the web API")
    correlate.set_defaults(func=lambda a: _correlate(a, redis_from_args))

    web = sub.add_parser(
        "web", help="serve the correlator web page and JSON API",
        description="Serve the correlator with waitress on [correlator] host:port "
        "(127.0.0.1:3047 by default).",
    )  # fmt: skip
    web.add_argument("-c", "--config", required=True, metavar="FILE")
    web.set_defaults(func=_web)


def _correlate(args: argparse.Namespace, redis_from_args: RedisFromArgs) -> int:
    from pcapd.core.redis_conn import connect
    from pcapd.correlator.service import Correlator, clients_query
    from pcapd.correlator.text import render_clients, render_view

    if not args.clients and not args.client:
        print("pcapd correlate: give a CLIENT address, or --clients", file=sys.stderr)
        return 2
    config = _config(args, redis_from_args)
    correlator = Correlator(connect(config.redis), config)
    try:
        if args.clients:
            fields = {"prefix": args.prefix or "", "q": args.search or "", "cursor": args.cursor,
                      "limit": args.limit or ""}  # fmt: skip
            page = correlator.clients(clients_query(fields, config))
            print(json.dumps(page, indent=1) if args.json else render_clients(page))
            return 0
        view = correlator.client_view(args.client, args.by, args.others, args.prefix)
    except ReaderError as exc:
        print(f"pcapd correlate: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"pcapd correlate: Redis at {config.redis.describe()}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(view.as_dict(), indent=1) if args.json else render_view(view))
    return 0


def _web(args: argparse.Namespace) -> int:
    from pcapd.correlator.server import serve

    return serve(args.config)
