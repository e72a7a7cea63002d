"""What the commands share: how one is added, its one error path, shared options."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from pcapd.core.config import (
    FORMATS,
    MAX_SNAPLENGTH,
    Config,
    ConfigError,
    RedisConfig,
    load_config,
)
from pcapd.core.lifecycle import EXIT_CONFIG
from pcapd.core.logs import setup_agent_logging
from pcapd.core.secret import Secret

# what `register` adds its parser to
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Run = Callable[[argparse.Namespace], int]
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class Command(Protocol):
    """A module of pcapd/cli: `register` adds its parser with `add_command`."""

    def register(self, subparsers: Subparsers) -> None: ...


class CheckedSection(Protocol):
    """What an agent's config parser returns: at least its warnings."""

    @property
    def warnings(self) -> tuple[str, ...]: ...


class AgentCommand(Command, Protocol):
    """A module for `pcapd agent <name>`, configured by `[agents.<SECTION>]`."""

    SECTION: str

    def check_section(self, table: dict[str, Any]) -> CheckedSection: ...


class UsageError(Exception):
    """A command line that cannot be run; the message is printed as it is."""


def add_command(
    subparsers: Subparsers,
    name: str,
    run: Run,
    *,
    prefix: str = "",
    takes_rest: bool = False,
    **kwargs: Any,
) -> argparse.ArgumentParser:
    """A subparser whose parsed arguments go to `run` (its line in the parent's
    --help is in pcapd.cli's list, not here). `prefix` starts each
    config error line; `takes_rest` hands arguments argparse does not know to
    `run` as `args.rest` (pcapdaemon's Go-style flags; ShoDoHFlo's positional
    arguments after an option, `positionals`) instead of refusing them."""
    parser: argparse.ArgumentParser = subparsers.add_parser(name, **kwargs)
    parser.set_defaults(run=run, parser=parser, prefix=prefix, takes_rest=takes_rest)
    return parser


def positionals(args: argparse.Namespace) -> list[str]:
    """`args.positional` (a `nargs="*"` argument) wherever its values stand
    among the options (`SOCKET --ttl-grace 60 ADDRESS:PORT`), for a command
    added with `takes_rest`: argparse takes the first run of them and leaves
    the rest to `args.rest`, beside the options it does not know, which are
    refused as argparse refuses them."""
    rest: list[str] = getattr(args, "rest", [])
    unknown = [arg for arg in rest if arg.startswith("-") and arg != "-"]
    if unknown:
        args.parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return [*args.positional, *rest]


def guarded(run: Callable[[], int], prefix: str = "") -> int:
    """Run a command: the one place a config or usage error is printed, every
    line of it, and turned into `EXIT_CONFIG`."""
    try:
        return run()
    except ConfigError as exc:
        for line in exc.lines():
            print(f"{prefix}{line}", file=sys.stderr)
    except UsageError as exc:
        print(f"{prefix}{exc}", file=sys.stderr)
    return EXIT_CONFIG


def agent_config(
    path: str | None, section: str, log_level: str, overrides: dict[str, Any] | None = None
) -> tuple[Config | None, dict[str, Any]]:
    """The config file (if any, logging set up from it) and its `[agents.<section>]`
    table with the command line's `overrides` laid over it."""
    config = load_config(path) if path else None
    setup_agent_logging(config, log_level)
    table = dict(config.agents.get(section, {})) if config is not None else {}
    table.update(overrides or {})
    return config, table


def in_file(path: str | None, parse: Callable[[dict[str, Any]], Any], table: dict[str, Any]) -> Any:
    """`parse(table)`, its errors attributed to the file the table came from."""
    try:
        return parse(table)
    except ConfigError as exc:
        raise ConfigError(exc.errors, path, exc.warnings) from None


def add_redis_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", metavar="FILE", help="take [redis] from this config")
    parser.add_argument(
        "--redis-url", metavar="URL",
        help="redis://, rediss://, unix:// or redis+cluster:// URL "
        f"(default: $PCAPD_REDIS_URL or {DEFAULT_REDIS_URL})",
    )  # fmt: skip


def redis_config(args: argparse.Namespace) -> RedisConfig:
    """[redis] from -c FILE, overridden by --redis-url, else $PCAPD_REDIS_URL."""
    if args.config:
        base = load_config(args.config).redis
    else:
        url = os.environ.get("PCAPD_REDIS_URL", DEFAULT_REDIS_URL)
        base = RedisConfig(url=Secret(url))
    if args.redis_url:
        base = base.with_url(Secret(args.redis_url))
    return base


def add_bounds(parser: argparse.ArgumentParser, *, one_shot: bool) -> None:
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


def add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level", default="info", choices=("debug", "info", "warning", "error")
    )
