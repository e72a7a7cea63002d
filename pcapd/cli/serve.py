"""`pcapd serve` and pcapdaemon's command line, so its init scripts and units
start pcapd unchanged.

`pcapdaemon -config FILE [flags]` (the `pcapdaemon` console script) and
`pcapd serve` take the same flags, parsed as Go's `flag` package does:
`-flag value`, `-flag=value`, `--flag`, booleans as `-upload` or
`-upload=false`, and parsing stops at the first argument that is not a flag.
A flag left at its zero value ("", 0, false) overrides nothing, as in
pcapdaemon, so `-upload=false` cannot turn off an upload the file enables.
Flags win over the file; they are validated with it, as if the file held them.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pcapd.cli.common import Subparsers, add_command, guarded
from pcapd.core.config import load_config
from pcapd.core.configread import ConfigError
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_OK

HELP = ("h", "help")
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # strconv.ParseBool's spellings
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_GO_OCTAL = re.compile(r"[+-]?0[0-7]+")


@dataclass(frozen=True, slots=True)
class Flag:
    kind: type  # str, int or bool
    target: tuple[str, str] | None  # (section, key) it overrides; None: handled apart
    help: str


FLAGS: dict[str, Flag] = {
    "config": Flag(str, None, "path to the TOML config file"),
    "c": Flag(str, None, "same as -config"),
    "redisnode": Flag(str, ("redis", "host"), "host name or address of the Redis server"),
    "redisport": Flag(int, ("redis", "port"), "port of the Redis server"),
    "redischannel": Flag(str, ("redis", "channel"), "Redis channel to subscribe to"),
    "upload": Flag(bool, ("cloudshark", "upload"), "upload captures to CloudShark"),
    "cshost": Flag(str, ("cloudshark", "host"), "CloudShark host"),
    "csport": Flag(int, ("cloudshark", "port"), "CloudShark port"),
    "csscheme": Flag(str, ("cloudshark", "scheme"), "CloudShark scheme: http or https"),
    "cstoken": Flag(str, ("cloudshark", "token"), "CloudShark API token (or env:NAME, file:/path)"),
    "cstimeout": Flag(int, ("cloudshark", "timeout"), "CloudShark upload timeout, seconds"),
    "writelocal": Flag(bool, ("general", "writelocal"), "write captures to -destdir"),
    "destdir": Flag(str, ("general", "localdir"), "directory for -writelocal"),
    "maxpackets": Flag(int, ("general", "maxpackets"), "most packets a capture may ask for"),
    "panic": Flag(bool, None, "pcapdaemon's packet-decoding option; ignored"),
}


class FlagError(Exception):
    """A command line pcapdaemon would have refused too; the message names the flag."""


@dataclass(frozen=True, slots=True)
class ServeArgs:
    config: str | None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    help: bool = False


def _go_int(text: str) -> int:
    """strconv.ParseInt(text, 0, 64): 0x, 0o, 0b prefixes, and Go's leading-0 octal."""
    if _GO_OCTAL.fullmatch(text):
        return int(text, 8)
    return int(text, 0)


def _convert(name: str, flag: Flag, value: str) -> str | int | bool:
    if flag.kind is bool:
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise FlagError(f'-{name}: invalid boolean value "{value}": expected true or false')
    if flag.kind is int:
        try:
            return _go_int(value)
        except ValueError:
            raise FlagError(f'-{name}: invalid value "{value}": expected an integer') from None
    return value


def parse_flags(argv: Sequence[str]) -> ServeArgs:
    """Go `flag` parsing of pcapdaemon's flags into config overrides."""
    given: dict[str, str | int | bool] = {}
    args = list(argv)
    while args:
        arg = args[0]
        if len(arg) < 2 or arg[0] != "-":
            break
        args.pop(0)
        if arg == "--":
            break
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if not name or name[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, equals, value = name.partition("=")
        if name in HELP:
            return ServeArgs(None, help=True)
        flag = FLAGS.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        if not equals:
            if flag.kind is bool:
                value = "true"
            elif args:
                value = args.pop(0)  # Go takes the next argument, even one starting with -
            else:
                raise FlagError(f"flag needs an argument: -{name}")
        given[name] = _convert(name, flag, value)
    return _to_overrides(given, args)


def _to_overrides(given: dict[str, str | int | bool], rest: list[str]) -> ServeArgs:
    warnings = []
    if rest:
        warnings.append(
            f"ignoring {' '.join(rest)!r}: flags end at the first argument that is not one, "
            "as in pcapdaemon (a boolean flag is turned off with -flag=false)"
        )
    if given.get("panic"):
        warnings.append("-panic: pcapdaemon's packet-decoding option has no meaning here; ignored")
    if given.get("destdir") and not given.get("writelocal"):
        # pcapdaemon read -destdir only together with -writelocal.
        warnings.append("-destdir: used only with -writelocal, as in pcapdaemon; ignored")
        del given["destdir"]
    overrides: dict[str, dict[str, Any]] = {}
    for name, value in given.items():
        target = FLAGS[name].target
        if target is None or value in ("", 0, False):  # a zero value overrides nothing
            continue
        section, key = target
        overrides.setdefault(section, {})[key] = value
    config = given.get("config") or given.get("c") or None
    return ServeArgs(str(config) if config else None, overrides, tuple(warnings))


def _naming_flags(exc: ConfigError, overrides: dict[str, dict[str, Any]]) -> ConfigError:
    """`exc` with each error about a value a flag gave (in `overrides`)
    saying so: the file it names does not hold that value."""
    flags_of = {
        f"{flag.target[0]}.{flag.target[1]}": name
        for name, flag in FLAGS.items()
        if flag.target and flag.target[1] in overrides.get(flag.target[0], {})
    }  # each target is one flag's
    errors = []
    for error in exc.errors:
        name = flags_of.get(error.partition(":")[0])
        errors.append(f"{error} (given as -{name})" if name else error)
    return ConfigError(errors, exc.path, exc.warnings)


def usage(prog: str) -> str:
    lines = [
        f"usage: {prog} -config FILE [-flag value ...]",
        "",
        "Run the capture daemon. Flags override the config file; a flag left at its",
        'zero value ("", 0, false) overrides nothing. Go syntax: -flag value, -flag=value,',
        "--flag; booleans as -flag or -flag=false.",
        "",
    ]
    for name, flag in FLAGS.items():
        target = f"  ([{flag.target[0]}] {flag.target[1]})" if flag.target else ""
        kind = {str: " string", int: " int", bool: ""}[flag.kind]  # as Go's usage spells them
        lines.append(f"  -{name}{kind}\n        {flag.help}{target}")
    return "\n".join(lines)


def serve_main(argv: Sequence[str], prog: str) -> int:
    """`pcapd serve` and `pcapdaemon`: parse the flags, then run the daemon."""
    try:
        args = parse_flags(argv)
    except FlagError as exc:
        print(f"{prog}: {exc}\nRun '{prog} -help' for the flags.", file=sys.stderr)
        return EXIT_CONFIG
    if args.help:
        print(usage(prog))
        return EXIT_OK
    from pcapd.daemon import serve

    try:
        config = load_config(args.config, overrides=args.overrides)
    except ConfigError as exc:
        raise _naming_flags(exc, args.overrides) from None
    return serve(config, args.config, args.warnings)


def _run(args: argparse.Namespace) -> int:
    return serve_main(args.rest, "pcapd serve")


def register(subparsers: Subparsers) -> None:
    # Go-style flags (-upload=false) are not argparse's: they come as args.rest.
    add_command(
        subparsers, "serve", _run, takes_rest=True, add_help=False,
        usage="pcapd serve -c FILE [-flag value ...]",
        description="Listen for capture requests and serve them until SIGTERM. The first "
        "SIGTERM/SIGINT ends running captures (stop=shutdown), delivers them and exits 0; "
        "a second one exits at once, status 1. Takes pcapdaemon's flags: `pcapd serve -help`.",
    )  # fmt: skip


def pcapdaemon(argv: Sequence[str] | None = None) -> int:
    """The `pcapdaemon` console script."""
    given = sys.argv[1:] if argv is None else argv
    return guarded(lambda: serve_main(given, "pcapdaemon"))
