"""`[agents.dnstap]`: every option, its default constant and its checks.

`parse_dnstap_config(config.agents.get("dnstap", {}))` validates the raw
table in one place and raises `pcapd.core.config.ConfigError` listing every
problem, each naming its field (`agents.dnstap.socket_mode: ...`).
"""

from __future__ import annotations

import grp
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from agents import store
from agents.dnstap import fstrm
from agents.dnstap.message import MESSAGE_TYPES
from agents.dnstap.response import TYPE_A, TYPE_AAAA
from pcapd.core.config import ConfigError
from pcapd.core.secret import Secret

PREFIX = "agents.dnstap"
DEFAULT_SOCKET = "/run/pcapd/dnstap.sock"
DEFAULT_SOCKET_MODE = 0o660
DEFAULT_MESSAGE_TYPES = ("CLIENT_RESPONSE",)
DEFAULT_RECORD_TYPES = ("A", "AAAA")
RECORD_TYPES = {"A": TYPE_A, "AAAA": TYPE_AAAA}
DEFAULT_DEDUP_WINDOW = 1.0
# What a repeat is: the same (client, name, type), or, as ShoDoHFlo's
# dnstap_agent (`MyMapper.filter`), the same (name, type) from any client.
DEDUP_CLIENT = "client"
DEDUP_GLOBAL = "global"
DEDUP_SCOPES = (DEDUP_CLIENT, DEDUP_GLOBAL)
MAX_DEDUP_WINDOW = 3600.0
# ~275 bytes per remembered (client, name, type) (tracemalloc: 200-250 B with
# 30-50 character names, which each entry keeps alive): 100k entries ~ 28 MB.
DEFAULT_DEDUP_MAX_ENTRIES = 100_000
DEFAULT_MAX_CONNECTIONS = 64
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
DEFAULT_STATS_INTERVAL = 60.0
MIN_FRAME_BYTES = 1024
MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_UDP_TTL = 1
# Twice agents.store's default: a resolver's burst fills it within ms, and
# fewer, larger script calls kept Redis ahead of decoding in bench/.
DEFAULT_BATCH_OPS = 2_000


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class DnstapConfig:
    """Worst-case memory: `max_connections` x (3 x `max_frame_bytes` + socket
    buffers: a frame that arrives in pieces is held, copied whole for
    decoding, and its payload sliced out), plus the Redis queue
    (`max_queue_ops` x key+member, see agents.store) and `dedup_max_entries`
    x ~275 bytes of remembered lookups."""

    socket: str | None = DEFAULT_SOCKET
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str | None = None
    listen: HostPort | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    redis_url: Secret | None = None
    ttl_grace: int = store.DEFAULT_TTL_GRACE
    message_types: tuple[str, ...] = DEFAULT_MESSAGE_TYPES
    record_types: tuple[str, ...] = DEFAULT_RECORD_TYPES
    ignore: tuple[str, ...] = ()
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    dedup_scope: str = DEDUP_CLIENT
    dedup_max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES
    max_queue_ops: int = store.DEFAULT_MAX_QUEUE_OPS
    batch_ops: int = DEFAULT_BATCH_OPS
    flush_interval: float = store.DEFAULT_FLUSH_INTERVAL
    max_frame_bytes: int = fstrm.DEFAULT_MAX_FRAME
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    stats_interval: float = DEFAULT_STATS_INTERVAL
    udp_output: HostPort | None = None
    udp_interface: str | None = None
    udp_ttl: int = DEFAULT_UDP_TTL
    client_index: bool = False  # keep <client>;index for the correlator (agents/store.py)
    warnings: tuple[str, ...] = ()

    @property
    def message_type_numbers(self) -> frozenset[int]:
        return frozenset(MESSAGE_TYPES[name] for name in self.message_types)

    @property
    def record_type_numbers(self) -> frozenset[int]:
        return frozenset(RECORD_TYPES[name] for name in self.record_types)


class _Table:
    """Reads one `[agents.*]` table; agents.dnswire reads its own with it too."""

    def __init__(self, raw: Mapping[str, Any], prefix: str = PREFIX) -> None:
        self.raw = raw
        self.prefix = prefix
        self.errors: list[str] = []
        self.seen: set[str] = set()

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{self.prefix}.{key}: {message}")

    def get(self, key: str) -> Any:
        self.seen.add(key)
        return self.raw.get(key)

    def opt_str(self, key: str, default: str | None = None) -> str | None:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {value!r}")
            return default
        return value or None

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {value!r}")
            return default
        return value

    def opt_secret(self, key: str) -> str | None:
        """A string that may hold a password: a bad value's type is named, never the value."""
        value = self.get(key)
        if value is not None and not isinstance(value, str):
            self.error(key, f"expected a string, got {type(value).__name__} (value not shown)")
            return None
        return value or None

    def number(
        self, key: str, default: float, minimum: float, maximum: float, integer: bool = False
    ) -> Any:
        value: Any = self.get(key)
        if value is None:
            return default
        numeric = isinstance(value, int) or (not integer and isinstance(value, float))
        if isinstance(value, bool) or not numeric:
            self.error(key, f"expected {'an integer' if integer else 'a number'}, got {value!r}")
            return default
        if not math.isfinite(value):  # TOML allows nan and inf
            self.error(key, f"must be a finite number, got {value!r}")
            return default
        if not minimum <= value <= maximum:
            self.error(key, f"{value} is outside {minimum}..{maximum}")
            return default
        return value

    def names(
        self, key: str, default: tuple[str, ...], choices: Mapping[str, int]
    ) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return default
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"expected a list of strings, got {value!r}")
            return default
        names = tuple(dict.fromkeys(v.upper() for v in value))
        bad = [n for n in names if n not in choices]
        if bad:
            self.error(key, f"{', '.join(bad)} not one of {', '.join(choices)}")
            return default
        if not names:
            self.error(key, "must name at least one type")
            return default
        return names

    def host_port(self, key: str) -> HostPort | None:
        text = self.opt_str(key)
        if text is None:
            return None
        host, sep, port = text.rpartition(":")
        host = host.strip("[]")
        try:
            ipaddress.ip_address(host)
            number = int(port)
        except ValueError:
            self.error(key, f"{text!r} is not ADDRESS:PORT with a literal IP address")
            return None
        if not sep or not 0 <= number <= 65535:
            self.error(key, f"{text!r}: port {port} is outside 0..65535")
            return None
        return HostPort(host, number)


def _mode(t: _Table) -> int:
    value = t.get("socket_mode")
    if value is None:
        return DEFAULT_SOCKET_MODE
    if isinstance(value, str):
        try:
            value = int(value, 8)
        except ValueError:
            t.error("socket_mode", f'{value!r} is not an octal mode such as "0660"')
            return DEFAULT_SOCKET_MODE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        t.error("socket_mode", f"{value!r} is not a mode within 0..0777")
        return DEFAULT_SOCKET_MODE
    return value


def _suffixes(t: _Table) -> tuple[str, ...]:
    value = t.get("ignore")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        t.error("ignore", f"expected a list of name suffixes, got {value!r}")
        return ()
    return tuple(v.lower().strip(".") + "." for v in value)


def _redis_url(t: _Table) -> Secret | None:
    url = t.opt_secret("redis_url")
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        t.error("redis_url", "scheme is not one of redis://, rediss://, unix://")
    elif url is not None:
        try:
            _ = urlsplit(url).port  # raises on a port that is not a number within 0..65535
        except ValueError as exc:
            t.error("redis_url", f"bad port: {exc}")
    return Secret(url) if url else None


def record_options(t: _Table) -> dict[str, Any]:
    """The options that decide what a response records and how it is written
    to Redis, read alike for every agent that records responses."""
    return {
        "record_types": t.names("record_types", DEFAULT_RECORD_TYPES, RECORD_TYPES),
        "ignore": _suffixes(t),
        "dedup_window": float(t.number("dedup_window", DEFAULT_DEDUP_WINDOW, 0, MAX_DEDUP_WINDOW)),
        "dedup_scope": t.opt_str("dedup_scope", DEDUP_CLIENT) or DEDUP_CLIENT,
        "dedup_max_entries": t.number(
            "dedup_max_entries", DEFAULT_DEDUP_MAX_ENTRIES, 1, 10_000_000, integer=True
        ),
        "max_queue_ops": t.number(
            "max_queue_ops", store.DEFAULT_MAX_QUEUE_OPS, 1, 100_000_000, integer=True
        ),
        "batch_ops": t.number("batch_ops", DEFAULT_BATCH_OPS, 1, 100_000, integer=True),
        "flush_interval": float(
            t.number("flush_interval", store.DEFAULT_FLUSH_INTERVAL, 0.001, 10.0)
        ),
        "client_index": t.flag("client_index", False),
    }


def parse_dnstap_config(raw: Mapping[str, Any]) -> DnstapConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError([f"{PREFIX}: expected a table, got {raw!r}"])
    t = _Table(raw)
    redis_url = _redis_url(t)
    cfg = DnstapConfig(
        socket=t.opt_str("socket", DEFAULT_SOCKET),
        socket_mode=_mode(t),
        socket_group=t.opt_str("socket_group"),
        listen=t.host_port("listen"),
        tls_cert=t.opt_str("tls_cert"),
        tls_key=t.opt_str("tls_key"),
        redis_url=redis_url,
        ttl_grace=t.number("ttl_grace", store.DEFAULT_TTL_GRACE, 1, 2**31 - 1, integer=True),
        message_types=t.names("message_types", DEFAULT_MESSAGE_TYPES, MESSAGE_TYPES),
        **record_options(t),
        max_frame_bytes=t.number(
            "max_frame_bytes",
            fstrm.DEFAULT_MAX_FRAME,
            MIN_FRAME_BYTES,
            MAX_FRAME_BYTES,
            integer=True,
        ),
        max_connections=t.number(
            "max_connections", DEFAULT_MAX_CONNECTIONS, 1, 10_000, integer=True
        ),
        handshake_timeout=float(
            t.number("handshake_timeout", DEFAULT_HANDSHAKE_TIMEOUT, 0.1, 3600.0)
        ),
        stats_interval=float(t.number("stats_interval", DEFAULT_STATS_INTERVAL, 0, 86_400.0)),
        udp_output=t.host_port("udp_output"),
        udp_interface=t.opt_str("udp_interface"),
        udp_ttl=t.number("udp_ttl", DEFAULT_UDP_TTL, 0, 255, integer=True),
    )
    if cfg.dedup_scope not in DEDUP_SCOPES:
        t.error("dedup_scope", f"{cfg.dedup_scope!r} not one of {', '.join(DEDUP_SCOPES)}")
    if cfg.batch_ops > cfg.max_queue_ops:
        t.error("batch_ops", f"{cfg.batch_ops} exceeds max_queue_ops={cfg.max_queue_ops}")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        t.error("tls_cert", "tls_cert and tls_key go together")
    if cfg.tls_cert is not None and cfg.listen is None:
        t.error("tls_cert", "TLS needs a TCP listener: set agents.dnstap.listen")
    for key in ("tls_cert", "tls_key"):
        path = getattr(cfg, key)
        if path is not None and not os.path.isfile(path):
            t.error(key, f"{path!r} is not a readable file")
    if cfg.socket is None and cfg.listen is None:
        t.error("socket", "no listener: set socket, listen, or both")
    if cfg.socket_group is not None:
        try:
            grp.getgrnam(cfg.socket_group)
        except KeyError:
            t.error("socket_group", f"no group named {cfg.socket_group!r}")
    if cfg.udp_interface is not None:
        try:
            interface = ipaddress.ip_address(cfg.udp_interface)
        except ValueError:
            t.error("udp_interface", f"{cfg.udp_interface!r} is not an IP address")
        else:
            output = cfg.udp_output
            family = ipaddress.ip_address(output.host).version if output else interface.version
            if family != interface.version:
                t.error(
                    "udp_interface",
                    f"{cfg.udp_interface!r} is IPv{interface.version} but udp_output "
                    f"{output} is IPv{family}",
                )
    if t.errors:
        raise ConfigError(t.errors)
    unknown = sorted(set(raw) - t.seen)
    warnings = tuple(f"{PREFIX}.{key}: unknown option, ignored" for key in unknown)
    return replace(cfg, warnings=warnings)
