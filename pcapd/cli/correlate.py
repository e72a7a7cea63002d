"""`pcapd correlate --clients | CLIENT`: the correlator's views in a terminal."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import TYPE_CHECKING

import redis

from agents.reader_values import ReaderError
from pcapd.cli.common import Subparsers, UsageError, add_command, add_redis_options, redis_config
from pcapd.core.config import Config, load_config, parse_config
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from pcapd.core.logs import warnings_to_stderr

if TYPE_CHECKING:
    from pcapd.correlator.service import Correlator


def _run(args: argparse.Namespace) -> int:
    from pcapd.correlator.service import Correlator, redis_client

    asked = [bool(args.clients), bool(args.client), args.resolved is not None,
             args.talked is not None]  # fmt: skip
    if sum(asked) != 1:
        raise UsageError("give one of: a CLIENT address, --clients, --resolved NAME, "
                         "--talked ADDRESS")  # fmt: skip
    base = load_config(args.config) if args.config else parse_config({})
    config = replace(base, redis=redis_config(args))
    correlator = Correlator(redis_client(config), config)
    # With its fields, not Python's bare event name: an index read refused.
    with warnings_to_stderr(config.general):
        return _show(args, config, correlator)


def _show(args: argparse.Namespace, config: Config, correlator: Correlator) -> int:
    from pcapd.correlator.service import clients_query
    from pcapd.correlator.text import render_clients, render_pivot, render_view

    try:
        if args.clients:
            fields = {"prefix": args.cidr or "", "q": args.search or "", "cursor": args.cursor,
                      "limit": args.limit or ""}  # fmt: skip
            page = correlator.clients(clients_query(fields, config))
            print(json.dumps(page, indent=1) if args.json else render_clients(page))
            return EXIT_OK
        if args.resolved is not None or args.talked is not None:
            found = (
                correlator.who_resolved(args.resolved, args.cursor)
                if args.resolved is not None
                else correlator.who_talked(args.talked, args.port, args.cursor)
            )
            print(json.dumps(found, indent=1) if args.json else render_pivot(found))
            return EXIT_OK
        view = correlator.client_view(args.client, args.by, args.others, args.cidr)
    except ReaderError as exc:
        print(f"pcapd correlate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except redis.RedisError as exc:
        print(f"pcapd correlate: Redis at {config.redis.describe()}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(json.dumps(view.as_dict(), indent=1) if args.json else render_view(view))
    return EXIT_OK


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers, "correlate", _run, prefix="pcapd correlate: ",
        description="`pcapd correlate --clients [--prefix P] [--search TEXT]` lists clients; "
        "`pcapd correlate CLIENT [--by address|fqdn]` prints its chains as a tree; "
        "`--resolved NAME` and `--talked ADDRESS [--port P]` are the pivots, one bounded "
        "page at a time (go on with --cursor).",
    )  # fmt: skip
    add_redis_options(p)
    p.add_argument("client", nargs="?", help="the client address")
    p.add_argument("--clients", action="store_true", help="list clients")
    p.add_argument("--prefix", dest="cidr", help="clients in this CIDR (IPv4 or IPv6)")
    p.add_argument("--search", help="clients with a name or address containing TEXT")
    p.add_argument("--resolved", metavar="NAME", help="pivot: who resolved NAME")
    p.add_argument("--talked", metavar="ADDRESS", help="pivot: who talked to ADDRESS")
    p.add_argument("--port", help="with --talked: only flows to this port")
    p.add_argument("--cursor", default="0", help="go on from this SCAN cursor")
    p.add_argument("--limit", help="clients per page")
    p.add_argument("--by", choices=("fqdn", "address"), default="fqdn")
    p.add_argument("--others", action="store_true",
                   help="use resolutions from other clients in the prefix")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print JSON, as the web API")
