"""`[agents.dnstap]`: every option, its default constant and its checks.

`parse_dnstap_config(config.agents.get("dnstap", {}))` validates the raw
table with the one reader (`pcapd.core.configread.Table`) and raises
`ConfigError` listing every problem, each naming its field
(`agents.dnstap.socket_mode: ...`); unknown keys are warnings.
"""

from __future__ import annotations

import grp
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from agents.dnstap import fstrm
from agents.dnstap.message import MESSAGE_TYPES
from agents.dnstap.response import TYPE_A, TYPE_AAAA
from agents.writer_settings import (
    DEFAULT_BATCH_OPS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_QUEUE_OPS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_TTL_GRACE,
    DEFAULT_WRITE_COMBINING,
    MAX_BATCH_OPS,
    MAX_FLUSH_INTERVAL,
    MAX_QUEUE_OPS,
    MAX_TTL_GRACE,
    MIN_FLUSH_INTERVAL,
    writer_switches,
)
from pcapd.core.config import REDIS_URL_SCHEMES, REDIS_URL_SCHEMES_TEXT
from pcapd.core.configread import ConfigError, Table
from pcapd.core.configread import HostPort as HostPort  # agent.py and tests import it here
from pcapd.core.fields import whole_number
from pcapd.core.secret import Secret

PREFIX = "agents.dnstap"
DEFAULT_SOCKET = "/run/pcapd/dnstap.sock"
DEFAULT_SOCKET_MODE = 0o660
MAX_SOCKET_MODE = 0o777
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
MAX_DEDUP_MAX_ENTRIES = 10_000_000
DEFAULT_MAX_CONNECTIONS = 64
MAX_CONNECTIONS = 10_000
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
MIN_HANDSHAKE_TIMEOUT = 0.1
MAX_HANDSHAKE_TIMEOUT = 3600.0
# A frame begun must be whole within this: resolvers write whole frames, so one
# held longer is a stalled or hostile writer keeping a slot and a buffer.
DEFAULT_FRAME_TIMEOUT = 30.0
# Below a second a sound resolver's large frame over a slow or lossy link
# (retransmits take 200 ms and more) would be cut; past an hour the bound
# no longer frees a slot in any useful time.
MIN_FRAME_TIMEOUT = 1.0
MAX_FRAME_TIMEOUT = 3600.0
DEFAULT_STATS_INTERVAL = 60.0  # 0: only at exit
MAX_STATS_INTERVAL = 86_400.0
MIN_FRAME_BYTES = 1024
MAX_FRAME_BYTES = 16 * 1024 * 1024
DEFAULT_UDP_TTL = 1
MAX_UDP_TTL = 255


@dataclass(frozen=True, slots=True)
class DnstapConfig:
    """Worst-case memory: `max_connections` x (3 x `max_frame_bytes` + socket
    buffers: a frame that arrives in pieces is held, copied whole for
    decoding, and its payload sliced out), plus the Redis queue
    (`max_queue_ops` x (key + member + ~350 bytes), see agents.redis_writer)
    and `dedup_max_entries`
    x ~275 bytes of remembered lookups."""

    socket: str | None = DEFAULT_SOCKET
    socket_mode: int = DEFAULT_SOCKET_MODE
    socket_group: str | None = None
    listen: HostPort | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    redis_url: Secret | None = None
    ttl_grace: int = DEFAULT_TTL_GRACE
    message_types: tuple[str, ...] = DEFAULT_MESSAGE_TYPES
    record_types: tuple[str, ...] = DEFAULT_RECORD_TYPES
    ignore: tuple[str, ...] = ()
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    dedup_scope: str = DEDUP_CLIENT
    dedup_max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES
    max_queue_ops: int = DEFAULT_MAX_QUEUE_OPS
    batch_ops: int = DEFAULT_BATCH_OPS
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    write_combining: bool = DEFAULT_WRITE_COMBINING
    ping_interval: float = DEFAULT_PING_INTERVAL
    max_frame_bytes: int = fstrm.DEFAULT_MAX_FRAME
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    frame_timeout: float = DEFAULT_FRAME_TIMEOUT
    stats_interval: float = DEFAULT_STATS_INTERVAL
    udp_output: HostPort | None = None
    udp_interface: str | None = None
    udp_ttl: int = DEFAULT_UDP_TTL
    client_index: bool = False  # keep <client>;index for the correlator (agents/store.py)
    metrics_listen: HostPort | None = None  # /metrics, /healthz, /readyz (docs/operations.md)
    warnings: tuple[str, ...] = ()

    @property
    def message_type_numbers(self) -> frozenset[int]:
        return frozenset(MESSAGE_TYPES[name] for name in self.message_types)

    @property
    def record_type_numbers(self) -> frozenset[int]:
        return frozenset(RECORD_TYPES[name] for name in self.record_types)


def _mode(t: Table) -> int:
    value = t.get("socket_mode")
    if value is None:
        return DEFAULT_SOCKET_MODE
    if isinstance(value, str):
        # "0o660" as Python (and ShoDoHFlo's int(x, 8)) writes it; still no sign, "_" or space
        digits = value[2:] if value[:2] in ("0o", "0O") else value
        mode = whole_number(digits, 0, MAX_SOCKET_MODE, base=8)
        if mode is None:
            t.error("socket_mode", f'{value[:20]!r} is not an octal mode such as "0660"')
            return DEFAULT_SOCKET_MODE
        value = mode
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SOCKET_MODE:
        t.error("socket_mode", f"{value!r} is not a mode within 0..0777")
        return DEFAULT_SOCKET_MODE
    return value


def _suffixes(t: Table) -> tuple[str, ...]:
    value = t.get("ignore")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        t.bad("ignore", value, "expected a list of name suffixes")
        return ()
    return tuple(v.lower().strip(".") + "." for v in value)


def _redis_url(t: Table) -> Secret | None:
    url = t.secret("redis_url")
    if url is None:
        return None
    if urlsplit(url.reveal()).scheme not in REDIS_URL_SCHEMES:
        t.error("redis_url", f"scheme is not one of {REDIS_URL_SCHEMES_TEXT}")
        return None
    try:
        _ = urlsplit(url.reveal()).port  # raises on a port that is not a number within 0..65535
    except ValueError as exc:
        t.error("redis_url", f"bad port: {exc}")
        return None
    return url


def record_options(t: Table) -> dict[str, Any]:
    """The options that decide what a response records and how it is written
    to Redis, read alike for every agent that records responses."""
    return {
        "record_types": t.name_list("record_types", DEFAULT_RECORD_TYPES, choices=RECORD_TYPES),
        "ignore": _suffixes(t),
        "dedup_window": t.get_float(
            "dedup_window", DEFAULT_DEDUP_WINDOW, minimum=0.0, maximum=MAX_DEDUP_WINDOW
        ),
        "dedup_scope": t.get_str("dedup_scope", DEDUP_CLIENT, choices=DEDUP_SCOPES),
        "dedup_max_entries": t.get_int(
            "dedup_max_entries", DEFAULT_DEDUP_MAX_ENTRIES, maximum=MAX_DEDUP_MAX_ENTRIES
        ),
        "max_queue_ops": t.get_int("max_queue_ops", DEFAULT_MAX_QUEUE_OPS, maximum=MAX_QUEUE_OPS),
        "batch_ops": t.get_int("batch_ops", DEFAULT_BATCH_OPS, maximum=MAX_BATCH_OPS),
        "flush_interval": t.get_float(
            "flush_interval",
            DEFAULT_FLUSH_INTERVAL,
            minimum=MIN_FLUSH_INTERVAL,
            maximum=MAX_FLUSH_INTERVAL,
        ),
        "client_index": t.get_bool("client_index", False),
        **writer_switches(t),
    }


def parse_dnstap_config(raw: Mapping[str, Any]) -> DnstapConfig:
    t = Table(raw, PREFIX)
    cfg = DnstapConfig(
        redis_url=_redis_url(t),
        socket=t.get_str("socket", DEFAULT_SOCKET) or None,
        socket_mode=_mode(t),
        socket_group=t.optional_str("socket_group"),
        listen=t.host_port("listen"),
        tls_cert=t.optional_str("tls_cert"),
        tls_key=t.optional_str("tls_key"),
        ttl_grace=t.get_int("ttl_grace", DEFAULT_TTL_GRACE, maximum=MAX_TTL_GRACE),
        message_types=t.name_list("message_types", DEFAULT_MESSAGE_TYPES, choices=MESSAGE_TYPES),
        **record_options(t),
        max_frame_bytes=t.get_int(
            "max_frame_bytes",
            fstrm.DEFAULT_MAX_FRAME,
            minimum=MIN_FRAME_BYTES,
            maximum=MAX_FRAME_BYTES,
        ),
        max_connections=t.get_int(
            "max_connections", DEFAULT_MAX_CONNECTIONS, maximum=MAX_CONNECTIONS
        ),
        handshake_timeout=t.get_float(
            "handshake_timeout",
            DEFAULT_HANDSHAKE_TIMEOUT,
            minimum=MIN_HANDSHAKE_TIMEOUT,
            maximum=MAX_HANDSHAKE_TIMEOUT,
        ),
        frame_timeout=t.get_float(
            "frame_timeout",
            DEFAULT_FRAME_TIMEOUT,
            minimum=MIN_FRAME_TIMEOUT,
            maximum=MAX_FRAME_TIMEOUT,
        ),
        stats_interval=t.get_float(
            "stats_interval", DEFAULT_STATS_INTERVAL, minimum=0.0, maximum=MAX_STATS_INTERVAL
        ),
        udp_output=t.host_port("udp_output"),
        metrics_listen=t.listen("metrics_listen"),
        udp_interface=t.optional_str("udp_interface"),
        udp_ttl=t.get_int("udp_ttl", DEFAULT_UDP_TTL, minimum=0, maximum=MAX_UDP_TTL),
    )
    if cfg.batch_ops > cfg.max_queue_ops:
        t.exceeds("batch_ops", cfg.batch_ops, "max_queue_ops", cfg.max_queue_ops)
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
    t.finish()
    if t.errors:
        raise ConfigError(t.errors, warnings=t.warnings)
    return replace(cfg, warnings=tuple(t.warnings))
