"""`pcapd health`: ask a running process's own listener whether it is ready
(`/readyz`) or alive (`/healthz`), for systemd and scripts that have no HTTP
probe (docs/operations.md, "Health from the command line and systemd").

Exit status: 0 the answer was 200 (or, with --optional, no listener is
configured); 1 not ready (503) or no answer before --wait ran out; 2 a bad
config or command line, or no listener configured.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request

from pcapd.cli.common import Subparsers, UsageError, add_command
from pcapd.core.config import load_config
from pcapd.core.configread import ConfigError, Table
from pcapd.core.lifecycle import EXIT_FAILURE, EXIT_OK

AGENTS = ("dnstap", "flow", "dnswire")
REQUEST_TIMEOUT = 2.0  # s: one GET; the listener answers from memory
RETRY_INTERVAL = 0.5  # s: between tries while --wait lasts

EPILOG = """\
exit status: 0 the process answered 200 (with --optional: also when no
listener is configured); 1 not ready (503), or no answer before --wait ran
out; 2 a bad config or command line, or no listener configured.
"""


class NoListener(UsageError):
    """The config turns the process's listener off: nothing to ask."""


def _base_url(args: argparse.Namespace) -> str:
    """`http://ADDRESS:PORT` of the listener: --url, else the config's field
    (for dnswire with several processes, process 1 listens on the field's port)."""
    if args.url:
        if not args.url.startswith(("http://", "https://")):
            raise UsageError(f"pcapd health: --url {args.url!r}: expected http://HOST:PORT")
        return str(args.url).rstrip("/")
    if not args.config:
        raise UsageError("pcapd health: give -c FILE (the process's config) or --url URL")
    config = load_config(args.config)
    if args.agent is None:
        address, field, who = config.metrics.listen, "metrics.listen", "pcapd serve"
    else:
        table = Table(config.agents.get(args.agent), f"agents.{args.agent}")
        address = table.listen("metrics_listen")
        if table.errors:
            raise ConfigError(table.errors, args.config)
        field, who = f"agents.{args.agent}.metrics_listen", f"pcapd agent {args.agent}"
    if address is None:
        raise NoListener(
            f"pcapd health: {field} is empty: {who} serves no health checks; "
            "set it (docs/operations.md)"
        )
    return f"http://{address}"


def _ask(url: str) -> tuple[int | None, str]:
    """(HTTP status, body), or (None, the connection error)."""
    try:
        with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError) as exc:  # refused, timed out, unresolvable
        reason = getattr(exc, "reason", exc)
        return None, str(reason)


def _failing(body: str) -> str:
    """The failing checks of a /readyz body as `name: detail; ...`."""
    try:
        checks = json.loads(body).get("checks", {})
        bad = [f"{name}: {c.get('detail', '')}" for name, c in checks.items() if not c.get("ok")]
    except (ValueError, AttributeError):
        return f"unreadable answer: {body[:200]!r}"
    return "; ".join(bad) or "no check failed"


def _run(args: argparse.Namespace) -> int:
    if args.wait < 0:
        raise UsageError(f"pcapd health: --wait {args.wait}: must be 0 or more seconds")
    try:
        base = _base_url(args)
    except NoListener as exc:
        if not args.optional:
            raise
        print(f"{exc} (--optional: nothing to check)", file=sys.stderr)
        return EXIT_OK
    url = base + ("/healthz" if args.live else "/readyz")
    deadline = time.monotonic() + args.wait
    while True:
        status, body = _ask(url)
        if status == 200:
            print(body)
            return EXIT_OK
        if time.monotonic() + RETRY_INTERVAL > deadline:
            break
        time.sleep(RETRY_INTERVAL)
    if status is None:
        print(f"pcapd health: {url}: no answer: {body}", file=sys.stderr)
    else:
        print(body)
        why = _failing(body) if status == 503 else f"HTTP {status}"
        print(f"pcapd health: {url}: not ready: {why}", file=sys.stderr)
    return EXIT_FAILURE


def register(subparsers: Subparsers) -> None:
    health = add_command(
        subparsers, "health", _run,
        description="GET /readyz (or /healthz with --live) from the listener of a running "
        "`pcapd serve` ([metrics] listen) or agent ([agents.NAME] metrics_listen) and "
        "print the JSON answer; for systemd units and scripts without an HTTP probe.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    health.add_argument("-c", "--config", metavar="FILE", help="the process's config file")
    health.add_argument("--agent", choices=AGENTS, help="ask this agent, not `pcapd serve`")
    health.add_argument("--url", metavar="URL", help="http://HOST:PORT of the listener "
                        "(instead of the config's address)")  # fmt: skip
    health.add_argument("--live", action="store_true",
                        help="ask /healthz (the process answers) instead of /readyz")  # fmt: skip
    health.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                        help="retry every 0.5 s for this long (default 0: one try)")  # fmt: skip
    health.add_argument("--optional", action="store_true",
                        help="exit 0 when the config configures no listener")  # fmt: skip
