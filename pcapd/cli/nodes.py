"""`pcapd nodes`: the capture nodes alive now, from their heartbeats in Redis;
`--match REQUEST`: which of them would capture it, on which interfaces.

Exit status: 0 the list was read (with --match: at least one node would
capture); 1 with --match, no node would (none is named, or none has the
interfaces), or Redis cannot be read; 2 a malformed request (not a JSON
object, or refused for what it holds by every node it names) or a bad
config or command line.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from typing import TYPE_CHECKING

from pcapd.cli.common import Subparsers, UsageError, add_command, add_redis_options, redis_config
from pcapd.core.config import DEFAULT_FLEET_PREFIX, MAX_MAX_REQUEST_BYTES, load_config
from pcapd.core.fields import printable
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK
from pcapd.core.request import RequestError, decode_body

if TYPE_CHECKING:
    from pcapd.fleet import NodeState

EXIT_NO_MATCH = EXIT_FAILURE
# What the INTERFACES column is written with (, [ ] ( ) and spaces), quotes
# and backslashes (a quoted alias is told from a bare one), or nothing at all.
_COLUMN_CHARS = re.compile(r"[,\[\]()'\"\\\s]|^$")

EPILOG = """\
exit status: 0 listed (with --match: at least one node would capture);
1 no node would capture, or Redis cannot be read; 2 a malformed request
(not a JSON object, or rejected for what it holds by every node it names),
a bad config or command line. --match checks what the daemon checks before
capturing, with each node's own bounds and devices, except whether a
signature verifies, duplicates, what the sinks allow and free capacity.
"""


def _age(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f}s ago"


def _alias_text(alias: str) -> str:
    """`alias` as the INTERFACES column shows it: quoted (repr) when it holds
    what the column is written with, or is empty or not printable, so that
    "a,b" does not read as two aliases nor "a](missing)" as a status."""
    plain = alias.isprintable() and not _COLUMN_CHARS.search(alias)
    return alias if plain else repr(alias)


def _interfaces_text(node: NodeState) -> str:
    parts = []
    for iface in node.interfaces:
        text = iface.name
        if iface.aliases:
            text += f"[{','.join(map(_alias_text, iface.aliases))}]"
        if iface.linktype is not None:
            text += f"/dlt{iface.linktype}"
        if iface.lookback:
            text += f"/lookback{iface.lookback}s"
            if not iface.ring:
                text += "(ring not running)"
            elif iface.ring_error is not None:
                text += "(ring failed)"
        if not iface.present:
            text += "(missing)"
        parts.append(text)
    return " ".join(parts) or "-"


def _table(rows: list[list[str]]) -> None:
    rows = [[printable(cell) for cell in row] for row in rows]  # heartbeats: anyone's text
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


def _list(nodes: list[NodeState], as_json: bool) -> int:
    if as_json:
        print(json.dumps([node.to_json() for node in nodes]))
        return EXIT_OK
    if not nodes:
        print("no node has a heartbeat", file=sys.stderr)
        return EXIT_OK
    now = time.time()
    rows = [["NODE", "VERSION", "HOST", "PID", "CAPTURES", "SPOOL", "SEEN", "SOURCES",
             "INTERFACES"]]  # fmt: skip
    for n in nodes:
        rows.append([
            n.node, n.version, n.hostname, str(n.pid), str(n.captures),
            f"{n.spool_files}/{n.spool_bytes}B", _age(now - n.last_seen),
            ",".join(n.sources) or "-", _interfaces_text(n),
        ])  # fmt: skip
    _table(rows)
    return EXIT_OK


def _match(body: str, nodes: list[NodeState], as_json: bool) -> int:
    from pcapd.fleet import CAPTURE, SILENT, judge

    try:
        decode_body(body, MAX_MAX_REQUEST_BYTES)
    except RequestError as exc:
        print(f"pcapd nodes: --match: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    verdicts = [judge(body, node) for node in nodes]
    if as_json:
        print(json.dumps([v.to_json() for v in verdicts]))
    elif verdicts:
        rows = [["NODE", "VERDICT", "INTERFACES", "WHY"]]
        for v in verdicts:
            notes = [*v.warnings, *(f"{name}: {error}" for name, error in v.rejected)]
            why = v.error or "; ".join(notes) or ("not named" if v.verdict == SILENT else "")
            rows.append([v.node, v.verdict, ",".join(v.interfaces) or "-", why])
        _table(rows)
    else:
        print("no node has a heartbeat", file=sys.stderr)
    if any(v.verdict == CAPTURE for v in verdicts):
        return EXIT_OK
    named = [v for v in verdicts if v.verdict != SILENT]
    if named and all(v.stage == "request" for v in named):
        return EXIT_CONFIG  # nobody could serve it, whatever they had
    return EXIT_NO_MATCH


def _run(args: argparse.Namespace) -> int:
    import redis

    from pcapd.core.redis_conn import connect
    from pcapd.fleet import read_fleet

    prefix = args.prefix or (
        load_config(args.config).fleet.prefix if args.config else DEFAULT_FLEET_PREFIX
    )
    if not prefix:
        raise UsageError("pcapd nodes: --prefix must not be empty")
    body = args.match
    if body == "-":
        body = sys.stdin.read()
    config = redis_config(args)
    try:
        with connect(config) as client:
            nodes, unreadable = read_fleet(client, prefix)
    except redis.RedisError as exc:
        print(f"pcapd nodes: Redis at {config.describe()}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    for bad in unreadable:
        print(f"pcapd nodes: warning: {printable(bad.key)}: not a heartbeat this version "
              f"reads: {printable(bad.error)}", file=sys.stderr)  # fmt: skip
    if body is None:
        return _list(nodes, args.json)
    return _match(body, nodes, args.json)


def register(subparsers: Subparsers) -> None:
    nodes = add_command(
        subparsers, "nodes", _run,
        description="List the capture nodes whose heartbeat is in Redis (SCAN over "
        "[fleet] prefix). With --match REQUEST, say for each node whether that request "
        "would capture there and on which interfaces, or how the node would reject it, "
        "with the same code and the node's own bounds the daemon uses.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    add_redis_options(nodes)
    nodes.add_argument("--prefix", type=str, metavar="PREFIX",
                       help=f"heartbeat key prefix (default: [fleet] prefix of -c, or "
                       f"{DEFAULT_FLEET_PREFIX})")  # fmt: skip
    nodes.add_argument(
        "--match", metavar="REQUEST", help="a request as JSON ('-': read it from standard input)"
    )
    nodes.add_argument("--json", action="store_true", help="print JSON instead of a table")
