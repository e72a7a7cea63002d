"""`pcapd agent dnstap [-c FILE] [overrides] [SOCKET [ADDRESS:PORT [INTERFACE-ADDRESS]]]`;
the positional arguments are ShoDoHFlo's `dnstap_agent.py` command line. The
agent itself is agents.dnstap.agent.run."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from agents.dnstap.config import parse_dnstap_config
from pcapd.cli.common import (
    Subparsers,
    add_command,
    add_log_level,
    agent_config,
    in_file,
    positionals,
)
from pcapd.core.config import ConfigError, RedisConfig
from pcapd.core.lifecycle import EXIT_FAILURE
from pcapd.core.logs import event

SECTION = "dnstap"
check_section = parse_dnstap_config

# command-line options that override the [agents.dnstap] key of the same name
_OVERRIDES = (
    "socket", "socket_mode", "socket_group", "listen", "tls_cert", "tls_key", "redis_url",
    "ttl_grace", "message_types", "record_types", "ignore", "dedup_window", "dedup_scope",
    "max_queue_ops", "batch_ops", "stats_interval", "udp_output", "udp_interface",
)  # fmt: skip

# ShoDoHFlo's `dnstap_agent.py <unix-socket> {<dest-host>:<port> {<interface-address>}}`:
# each positional argument and the [agents.dnstap] key it sets.
_POSITIONAL = ("socket", "udp_output", "udp_interface")
_POSITIONAL_NAMES = ("SOCKET", "ADDRESS:PORT", "INTERFACE-ADDRESS")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's keys: the options, then ShoDoHFlo's positional
    arguments (an option and the argument for the same key is an error)."""
    overrides: dict[str, Any] = {
        key: getattr(args, key) for key in _OVERRIDES if getattr(args, key) is not None
    }
    positional = positionals(args)
    if len(positional) > len(_POSITIONAL):
        raise ConfigError(
            [f"too many arguments {positional!r}: expected "
             "SOCKET [ADDRESS:PORT [INTERFACE-ADDRESS]]"]
        )  # fmt: skip
    errors = []
    for key, name, value in zip(_POSITIONAL, _POSITIONAL_NAMES, positional, strict=False):
        if key in overrides:
            errors.append(f"{name} {value!r} and --{key.replace('_', '-')} both given")
        overrides[key] = value
    if errors:
        raise ConfigError(errors)
    return overrides


def _run(args: argparse.Namespace) -> int:
    from agents.dnstap.agent import run
    from pcapd.core.redis_conn import connect

    overrides = _overrides(args)
    config, table = agent_config(args.config, SECTION, args.log_level, overrides)
    cfg = in_file(args.config, parse_dnstap_config, table)
    for warning in cfg.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    base = config.redis if config is not None else RedisConfig()
    redis_cfg = base if cfg.redis_url is None else base.with_url(cfg.redis_url)
    event(
        logging.getLogger("pcapd.agents.dnstap"), "dnstap_starting",
        redis=redis_cfg.describe(), socket=cfg.socket, listen=cfg.listen,
    )  # fmt: skip
    try:
        return run(cfg, lambda: connect(redis_cfg))
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def register(subparsers: Subparsers) -> None:
    p = add_command(
        subparsers, "dnstap", _run, takes_rest=True,
        description="Read dnstap from BIND/Unbound (Frame Streams on a unix socket and/or "
        "TCP/TLS) and write ShoDoHFlo's per-client DNS keys to Redis. Options override "
        "[agents.dnstap] in the config file; SOCKET, ADDRESS:PORT and INTERFACE-ADDRESS are "
        "ShoDoHFlo's dnstap_agent.py arguments (--socket, --udp-output, --udp-interface). "
        "The first SIGTERM/SIGINT sends what is queued and exits 0; a second one exits at "
        "once, status 1.",
    )  # fmt: skip
    p.add_argument(
        "positional", nargs="*", metavar="SOCKET [ADDRESS:PORT [INTERFACE-ADDRESS]]",
        help="ShoDoHFlo's dnstap_agent.py command line: the unix socket, then where to send "
        "its JSON datagrams, then the local address of the interface for multicast",
    )  # fmt: skip
    p.add_argument("-c", "--config", metavar="FILE", help="TOML with [redis], [agents.dnstap]")
    p.add_argument("--socket", help="unix socket path; '' disables it")
    p.add_argument("--socket-mode", help="octal mode of the socket file, e.g. 0660")
    p.add_argument("--socket-group", help="group owning the socket file, e.g. bind")
    p.add_argument("--listen", help="TCP ADDRESS:PORT for Unbound's dnstap-ip")
    p.add_argument("--tls-cert", help="certificate (PEM) for TLS on --listen")
    p.add_argument("--tls-key", help="private key (PEM) for TLS on --listen")
    p.add_argument(
        "--redis-url", help="redis://, rediss://, unix://, or redis+cluster:// (overrides [redis])"
    )
    p.add_argument("--ttl-grace", type=int, help="EXPIRE seconds on every key (900)")
    p.add_argument("--message-types", type=_csv, help="comma list (CLIENT_RESPONSE)")
    p.add_argument("--record-types", type=_csv, help="comma list of A, AAAA (A,AAAA)")
    p.add_argument("--ignore", type=_csv, help="comma list of name suffixes to skip")
    p.add_argument("--dedup-window", type=float, help="seconds per (client, name, type) (1)")
    p.add_argument(
        "--dedup-scope", choices=("client", "global"),
        help="a repeat is the same (client, name, type) or, as ShoDoHFlo, (name, type) (client)",
    )  # fmt: skip
    p.add_argument("--max-queue-ops", type=int, help="Redis operations held at most")
    p.add_argument("--batch-ops", type=int, help="Redis operations per script call")
    p.add_argument("--stats-interval", type=float, help="seconds between stats lines (60)")
    p.add_argument("--udp-output", help="ADDRESS:PORT for ShoDoHFlo JSON datagrams")
    p.add_argument("--udp-interface", help="local address of the interface for multicast output")
    add_log_level(p)
