"""`pcapd web -c FILE`: the correlator's page and JSON API, under waitress."""

from __future__ import annotations

import argparse

from pcapd.cli.common import Subparsers, add_command


def _run(args: argparse.Namespace) -> int:
    from pcapd.correlator.server import serve

    return serve(args.config)


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers, "web", _run,
        description="Serve the correlator with waitress on [correlator] host:port "
        "(127.0.0.1:3047 by default).",
    )  # fmt: skip
    p.add_argument("-c", "--config", required=True, metavar="FILE")
