"""`pcapd spool list|retry -c FILE`: see what waits in the spool, deliver it now.

`list` prints one line per spooled capture (oldest first) and the space used
against `delivery.spool_max_bytes`. `retry` tries every pending sink of every
entry once, now, from this process (entries the daemon is working on at that
moment are skipped and reported as busy), publishes a `delivered` result
event for each one that went through, and exits 1 if anything is left (2
for an unknown `--id`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pcapd.cli.common import Subparsers, UsageError, add_command
from pcapd.core.config import Config, load_config
from pcapd.core.events import ResultEvent
from pcapd.core.fields import printable
from pcapd.core.lifecycle import EXIT_FAILURE, EXIT_OK
from pcapd.core.logs import warnings_to_stderr
from uploaders.drain import SpoolDrainer
from uploaders.remote import build_remote_uploaders
from uploaders.spool import Spool, SpoolError
from uploaders.spool_entry import SpoolEntry

EXIT_PENDING = EXIT_FAILURE  # something is still spooled


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _list(spool: Spool, as_json: bool) -> int:
    entries, unreadable = spool.scan()
    now = time.time()
    if as_json:  # an unreadable entry is a row too, in its place (ids sort oldest first)
        rows: list[dict[str, Any]] = [{"id": i, "unreadable": why} for i, why in unreadable.items()]
        for entry in entries:
            rows.append({
                "id": entry.id, "file": entry.filename, "bytes": entry.size,
                "pending": list(entry.pending), "locations": dict(entry.locations),
                "attempts": entry.attempts, "spooled_at": entry.spooled_at,
                "last_error": entry.last_error, "errors": dict(entry.errors),
            })  # fmt: skip
        for row in sorted(rows, key=lambda row: str(row["id"])):
            print(json.dumps(row))
    else:
        for entry in entries:
            # No sink left: delivered everywhere, its `delivered` still to publish.
            pending = printable(",".join(entry.pending)) or "(result to publish)"
            print(
                f"{entry.id}  age={_age(now - entry.spooled_at)}  bytes={entry.size}  "
                f"pending={pending}  attempts={entry.attempts}  "
                f"file={printable(entry.filename)}  "
                f"last_error={printable(entry.last_error or '-')}"
            )
    for orphan in spool.orphans():
        print(f"warning: {printable(str(orphan))}: capture without its sidecar (kept)",
              file=sys.stderr)  # fmt: skip
    used = spool.used_bytes()
    percent = 100 * used / spool.max_bytes
    kept = f" and {len(unreadable)} unreadable (kept; see the errors above)" if unreadable else ""
    print(
        f"{len(entries)} spooled{kept}, {used} of {spool.max_bytes} bytes ({percent:.1f}%) "
        f"in {spool.directory}",
        file=sys.stderr if as_json else sys.stdout,
    )
    return EXIT_OK


def _retry(config: Config, spool: Spool, ids: Sequence[str] | None, publish: bool) -> int:
    uploaders = build_remote_uploaders(config)
    if ids:
        unknown = sorted(i for i in set(ids) if not spool.holds(i))
        if unknown:
            raise UsageError("\n".join(f"error: {entry_id}: no such spool entry"
                                       for entry_id in unknown))  # fmt: skip
    from pcapd.core.results import ResultPublisher, Sent  # Redis's modules: only for retry

    publisher = None
    if publish:
        from pcapd.core.redis_conn import connect

        publisher = ResultPublisher(lambda: connect(config.redis), config.redis)

    def published(event: ResultEvent, entry: SpoolEntry) -> bool:
        """The entry goes once its result was sent, or refused for good (as
        the daemon drops it: logged lost); kept while Redis is unreachable."""
        where = printable(", ".join(f"{kind}={url}" for kind, url in event.locations.items()))
        outcome = Sent.SENT
        if publisher is not None:
            outcome = publisher.publish(event, entry.capture_request().reply_to)
        if outcome is Sent.UNREACHABLE:
            print(f"warning: {entry.id}: could not publish the result to "
                  f"{config.redis.describe()}; kept in the spool, to be published "
                  "again")  # fmt: skip
            return False
        print(f"delivered {entry.id}: {where}")
        if outcome is Sent.REFUSED:
            print(f"warning: {entry.id}: Redis refused its result (logged as result_lost); "
                  "not retried", file=sys.stderr)  # fmt: skip
        return True

    drainer = SpoolDrainer(spool, uploaders, published, config.delivery.drain_interval)
    report = drainer.drain_once(ids)
    remaining = report.remaining
    for entry_id in remaining:
        if entry_id in report.failed:
            why: str | None = report.failed[entry_id]
        else:
            left = spool.get(entry_id)
            why = left.last_error if left is not None else None
        why = printable(why or "in use by another process")
        print(f"still spooled {printable(entry_id)}: {why}", file=sys.stderr)
    print(f"{len(report.delivered)} delivered, {len(remaining)} still spooled")
    return EXIT_PENDING if remaining else EXIT_OK


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    directory = Path(config.delivery.spool_dir)
    if not directory.exists():
        # Looking must not make it: a mistyped spool_dir would look like an
        # empty spool from then on, beside the daemon's real one.
        absent = (f"{directory} does not exist (a daemon with S3 or CloudShark uploads makes "
                  "it when it starts: is this its config?)")  # fmt: skip
        if args.action == "retry" and args.ids:
            raise UsageError("\n".join(f"error: {entry_id}: no such spool entry: {absent}"
                                       for entry_id in sorted(set(args.ids))))  # fmt: skip
        # As the summary line below: JSON lines alone on stdout with --json.
        as_json = args.action == "list" and args.json
        print(f"0 spooled: {absent}", file=sys.stderr if as_json else sys.stdout)
        return EXIT_OK
    try:
        # An entry's lines (a sidecar field dropped, ...) name it: shown whole.
        with warnings_to_stderr(config.general):
            spool = Spool(config.delivery.spool_dir, config.delivery.spool_max_bytes)
            if args.action == "list":
                return _list(spool, args.json)
            return _retry(config, spool, args.ids, not args.no_publish)
    except (SpoolError, ValueError) as exc:
        raise UsageError(f"error: {exc}") from None


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers, "spool", _run,
        description="Show and drive the spool of captures waiting for S3 or CloudShark.",
    )  # fmt: skip
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="show spooled captures, oldest first")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    retry = actions.add_parser("retry", help="try every pending upload now")
    retry.add_argument(
        "--id", action="append", dest="ids", metavar="ID", help="only this entry (repeatable)"
    )
    retry.add_argument(
        "--no-publish", action="store_true", help="do not publish `delivered` result events"
    )
    for command in (listing, retry):
        command.add_argument("-c", "--config", required=True, metavar="FILE")
        # argparse errors name the parser they come from: `pcapd spool list`.
        command.set_defaults(parser=command)
