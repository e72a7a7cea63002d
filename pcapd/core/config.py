"""The one typed config object, read from pcapdaemon-compatible TOML.

pcapdaemon's sample config loads unchanged. Every bound is a named field with a
default constant below; `parse_config` collects *every* problem, each naming
the field (`general.maxpackets: ...`), and raises them together as one
`ConfigError`, so `pcapd check-config` can print them all at once. Keys pcapd
does not know are warnings, not errors, as pcapdaemon ignored them too.
"""

from __future__ import annotations

import math
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from pcapd.core.errors import PcapdError
from pcapd.core.secret import Secret, resolve_secret

# pcapdaemon's documented defaults (its own code never applied them).
DEFAULT_MAXPACKETS = 50_000
DEFAULT_LOCALDIR = "/tmp"
DEFAULT_SNAPLENGTH = 262_144  # tcpdump's default: whole packets
DEFAULT_TIMEOUT = 10
DEFAULT_MAXTIMEOUT = 3_600
DEFAULT_MAXDURATION = 3_600
DEFAULT_MAXBYTES = 100_000_000
# pcapd's own bounds.
# As pcapdaemon, a request without `duration` may capture for `maxduration`.
DEFAULT_DURATION = DEFAULT_MAXDURATION
DEFAULT_MAX_CONCURRENT = 8
DEFAULT_MAX_MEMORY = 512 * 1024 * 1024
DEFAULT_BUFFER_SIZE = 4 * 1024 * 1024  # TPACKET_V3: no drops to 700k pps in bench/
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
MAX_SNAPLENGTH = 262_144
FORMATS = ("pcap", "pcapng")
LOG_FORMATS = ("kv", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_REDIS_PORT = 6379
DEFAULT_CHANNEL = "capture"
DEFAULT_RESULTS_CHANNEL = "capture-results"
DEFAULT_RESULTS_STREAM = "capture-results"
DEFAULT_RESULTS_STREAM_MAXLEN = 10_000
DEFAULT_REQUEST_STREAM = "capture-requests"
DEFAULT_HEALTH_CHECK_INTERVAL = 15
# Requests read off the pub/sub socket and not yet handled: bytes of bodies
# (plus a per-message overhead). What does not fit is answered "overloaded".
DEFAULT_PUBSUB_QUEUE_BYTES = 16 * 1024 * 1024
MIN_PUBSUB_QUEUE_BYTES = 1024 * 1024
MAX_PUBSUB_QUEUE_BYTES = 1024 * 1024 * 1024

NAMINGS = ("pcapd", "pcapdaemon")

DEFAULT_SYSLOG_PRIORITY = 25  # LOG_DAEMON | LOG_ALERT, as pcapdaemon's sample
DEFAULT_SYSLOG_TAG = "pcapd"

DEFAULT_UPLOAD_ATTEMPTS = 4
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 30.0
MAX_BACKOFF = 3_600.0  # seconds: backoff_initial and backoff_max
DEFAULT_UPLOAD_WORKERS = 4
DEFAULT_SPOOL_DIR = "/var/spool/pcapd"
DEFAULT_SPOOL_MAX_BYTES = 2 * 1024 * 1024 * 1024
DEFAULT_DRAIN_INTERVAL = 30.0
MIN_DRAIN_INTERVAL = 0.1
MAX_DRAIN_INTERVAL = 86_400.0
DEFAULT_ATTEMPT_TIMEOUT = 60.0  # one remote attempt, connect to last byte
MIN_ATTEMPT_TIMEOUT = 0.1
MAX_ATTEMPT_TIMEOUT = 3_600.0
DEFAULT_SHUTDOWN_GRACE = 60.0  # below systemd's TimeoutStopSec=90 in deploy/systemd
MIN_SHUTDOWN_GRACE = 1.0
MAX_SHUTDOWN_GRACE = 3_600.0

DEFAULT_CS_CONNECT_TIMEOUT = 5.0
DEFAULT_CS_READ_TIMEOUT = 120.0
MIN_CS_TIMEOUT = 0.1
MAX_CS_CONNECT_TIMEOUT = 300.0
MAX_CS_READ_TIMEOUT = 3_600.0
DEFAULT_MULTIPART_THRESHOLD = 8 * 1024 * 1024

DEFAULT_SQS_WAIT = 20
MIN_SQS_WAIT = 1  # 0 is short polling: an empty reply at once, one billed call after another
MAX_SQS_WAIT = 20  # SQS's own limit
DEFAULT_SQS_CHUNK = 10
DEFAULT_SQS_VISIBILITY = 30
NOT_FOR_ME = ("release", "delete")

DEFAULT_CORRELATOR_PORT = 3047  # ShoDoHFlo's
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_SCAN_COUNT = 250  # keys per SCAN call: each command stays ~1 ms
DEFAULT_SCAN_BUDGET = 200_000
DEFAULT_MAX_CLIENT_KEYS = 20_000
DEFAULT_MAX_PREFIX_CLIENTS = 64
DEFAULT_CAPTURE_PACKETS = 100
DEFAULT_CAPTURE_DURATION = 30
DEFAULT_CAPTURE_MAX_PACKETS = 10_000
DEFAULT_CAPTURE_MAX_DURATION = 300
DEFAULT_S3_URL_EXPIRY = 3600
DEFAULT_WEB_THREADS = 8
DEFAULT_CAPTURES_SHOWN = 100

DEFAULT_MAX_SKEW = 300
DEFAULT_DEDUP_WINDOW = 600
DEFAULT_DEDUP_PREFIX = "pcapd:seen:"
SSE_MODES = ("AES256", "aws:kms")


class ConfigError(PcapdError):
    """Every problem found in one config; each line names its field."""

    def __init__(self, errors: list[str], path: str | None = None) -> None:
        self.errors = errors
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(where + "; ".join(errors))

    def lines(self) -> list[str]:
        """One `FILE: error: ...` line per problem, as every command prints them."""
        where = f"{self.path}: " if self.path else ""
        return [f"{where}error: {error}" for error in self.errors]


@dataclass(frozen=True, slots=True)
class GeneralConfig:
    node: str
    maxpackets: int = DEFAULT_MAXPACKETS
    writelocal: bool = False
    localdir: str = DEFAULT_LOCALDIR
    snaplength: int = DEFAULT_SNAPLENGTH
    defaulttimeout: int = DEFAULT_TIMEOUT
    maxtimeout: int = DEFAULT_MAXTIMEOUT
    maxduration: int = DEFAULT_MAXDURATION
    maxbytes: int = DEFAULT_MAXBYTES
    packetdebug: bool = False
    defaultduration: int = DEFAULT_DURATION
    format: str = "pcap"
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    # Worst case held by captures: max_memory bytes, since every capture
    # reserves its `bytes` bound before it starts.
    max_memory: int = DEFAULT_MAX_MEMORY
    buffer_size: int = DEFAULT_BUFFER_SIZE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    log_format: str = "kv"
    log_level: str = "info"
    logrequests: bool = False  # log every request body as it arrives (pcapdaemon's option)
    naming: str = "pcapd"  # file names and S3 keys: pcapd's, or pcapdaemon's host-iface-time


@dataclass(frozen=True, slots=True)
class RedisConfig:
    listen: bool = True
    host: str = "127.0.0.1"
    port: int = DEFAULT_REDIS_PORT
    channel: str = DEFAULT_CHANNEL
    auth: Secret | None = None
    username: str | None = None
    db: int = 0
    url: Secret | None = None  # redis://, rediss://, unix://; may hold a password
    tls: bool = False
    tls_ca: str | None = None
    results_channel: str = DEFAULT_RESULTS_CHANNEL
    results_stream: str = DEFAULT_RESULTS_STREAM
    results_stream_maxlen: int = DEFAULT_RESULTS_STREAM_MAXLEN
    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL
    stream_listen: bool = False
    stream: str = DEFAULT_REQUEST_STREAM
    # Worst case held by the pub/sub source between socket and controller.
    pubsub_queue_bytes: int = DEFAULT_PUBSUB_QUEUE_BYTES

    def describe(self) -> str:
        """Where Redis is, without any password: for logs and errors."""
        if self.url is not None:
            parts = urlsplit(self.url.reveal())
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{host}{port}{parts.path}"
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"


@dataclass(frozen=True, slots=True)
class SyslogConfig:
    enabled: bool = False
    priority: int = DEFAULT_SYSLOG_PRIORITY
    tag: str = DEFAULT_SYSLOG_TAG
    address: str = "/dev/log"


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    name: str
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CloudsharkConfig:
    upload: bool = False
    host: str = "localhost"
    scheme: str = "https"
    port: int | None = None
    token: Secret | None = None
    ca_bundle: str | None = None
    connect_timeout: float = DEFAULT_CS_CONNECT_TIMEOUT
    read_timeout: float = DEFAULT_CS_READ_TIMEOUT


@dataclass(frozen=True, slots=True)
class S3Config:
    upload: bool = False
    accessid: str | None = None
    accesskey: Secret | None = None
    endpoint: str | None = None
    bucket: str | None = None
    folder: str = ""
    region: str | None = None
    acl: str | None = None
    encryption: bool = False
    sse: str | None = None
    kms_key_id: str | None = None
    allowed_buckets: tuple[str, ...] = ()
    allowed_endpoints: tuple[str, ...] = ()
    allowed_acls: tuple[str, ...] = ()
    allowed_regions: tuple[str, ...] = ()
    multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD


@dataclass(frozen=True, slots=True)
class SqsConfig:
    listen: bool = False
    region: str | None = None
    accessid: str | None = None
    accesskey: Secret | None = None
    url: str | None = None
    endpoint: str | None = None
    waitseconds: int = DEFAULT_SQS_WAIT
    chunksize: int = DEFAULT_SQS_CHUNK
    visibility_timeout: int = DEFAULT_SQS_VISIBILITY
    not_for_me: str = "release"


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    attempts: int = DEFAULT_UPLOAD_ATTEMPTS
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    backoff_max: float = DEFAULT_BACKOFF_MAX
    upload_workers: int = DEFAULT_UPLOAD_WORKERS
    spool_dir: str = DEFAULT_SPOOL_DIR
    spool_max_bytes: int = DEFAULT_SPOOL_MAX_BYTES
    drain_interval: float = DEFAULT_DRAIN_INTERVAL
    attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    keys: Mapping[str, Secret] = field(default_factory=dict)
    require_signed: bool = False
    max_skew: int = DEFAULT_MAX_SKEW
    dedup_window: int = DEFAULT_DEDUP_WINDOW
    dedup_prefix: str = DEFAULT_DEDUP_PREFIX


@dataclass(frozen=True, slots=True)
class CorrelatorConfig:
    """`pcapd web` and `pcapd correlate`. Each request reads at most
    `scan_budget` keys and `max_client_keys` per client; each open live-results
    page holds one of `threads` server threads."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_CORRELATOR_PORT
    token: Secret | None = None  # without it, nothing can be changed
    read_only: bool = False
    kid: str | None = None  # sign requests with [security] keys[kid]
    page_size: int = DEFAULT_PAGE_SIZE
    scan_count: int = DEFAULT_SCAN_COUNT
    scan_budget: int = DEFAULT_SCAN_BUDGET
    max_client_keys: int = DEFAULT_MAX_CLIENT_KEYS
    max_prefix_clients: int = DEFAULT_MAX_PREFIX_CLIENTS
    nodere: tuple[str, ...] = ()  # offered besides "any" in the capture form
    aliases: tuple[str, ...] = ()  # offered interface aliases; default: [[interface]]'s
    default_packets: int = DEFAULT_CAPTURE_PACKETS
    max_packets: int = DEFAULT_CAPTURE_MAX_PACKETS
    default_duration: int = DEFAULT_CAPTURE_DURATION
    max_duration: int = DEFAULT_CAPTURE_MAX_DURATION
    s3_url_expiry: int = DEFAULT_S3_URL_EXPIRY
    threads: int = DEFAULT_WEB_THREADS
    captures_shown: int = DEFAULT_CAPTURES_SHOWN


@dataclass(frozen=True, slots=True)
class Config:
    general: GeneralConfig
    redis: RedisConfig = RedisConfig()
    syslog: SyslogConfig = SyslogConfig()
    interfaces: tuple[InterfaceConfig, ...] = ()
    cloudshark: CloudsharkConfig = CloudsharkConfig()
    s3: S3Config = S3Config()
    sqs: SqsConfig = SqsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    security: SecurityConfig = SecurityConfig()
    correlator: CorrelatorConfig = CorrelatorConfig()
    # [agents.*] tables, validated by each agent's own config module.
    agents: Mapping[str, Any] = field(default_factory=dict)
    # Remote sinks in the order their sections appear in the file.
    remote_order: tuple[str, ...] = ("s3", "cloudshark")
    # pcapdaemon's [kafka] listen = true: pcapd reads no Kafka, so it is no source.
    kafka_listen: bool = False
    warnings: tuple[str, ...] = ()

    def aliases(self) -> dict[str, tuple[str, ...]]:
        """alias -> interface names that carry it, in config order."""
        found: dict[str, list[str]] = {}
        for iface in self.interfaces:
            for alias in iface.aliases:
                found.setdefault(alias, []).append(iface.name)
        return {alias: tuple(names) for alias, names in found.items()}

    def serve_problems(self) -> list[str]:
        """What stops `pcapd serve` from doing anything useful with this config."""
        problems = []
        if not (self.redis.listen or self.redis.stream_listen or self.sqs.listen):
            if self.kafka_listen:
                problems.append(
                    "kafka.listen: pcapd does not read Kafka, and no other request source "
                    "is enabled: use [redis] listen (pub/sub), [redis] stream_listen "
                    "(a stream) or [sqs] listen instead"
                )
            problems.append(
                "redis.listen, redis.stream_listen, sqs.listen: at least one request "
                "source must be enabled"
            )
        if not (self.general.writelocal or self.s3.upload or self.cloudshark.upload):
            problems.append(
                "general.writelocal, s3.upload, cloudshark.upload: at least one "
                "destination must be enabled"
            )
        return problems


def _toml_type(value: Any) -> str:
    """The TOML name of a value's type, for errors that must not show the value."""
    names = {bool: "a boolean", int: "an integer", float: "a float", list: "an array",
             dict: "a table"}  # fmt: skip
    return names.get(type(value), "a date or time")


class _Section:
    """Typed reads of one TOML table, appending errors instead of raising."""

    def __init__(self, table: Any, name: str, errors: list[str], warnings: list[str]) -> None:
        self.name = name
        self.errors = errors
        self.warnings = warnings
        self.seen: set[str] = set()
        if table is None:
            table = {}
        if not isinstance(table, dict):
            errors.append(f"{name}: expected a table, got {type(table).__name__}")
            table = {}
        self.table: dict[str, Any] = table

    @property
    def present(self) -> bool:
        return bool(self.table)

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        return self.table.get(key)

    def _bad(self, key: str, value: Any, rule: str) -> None:
        self.errors.append(f"{self.name}.{key}: {rule}, got {value!r}")

    def get_int(
        self, key: str, default: int, *, minimum: int = 1, maximum: int | None = None
    ) -> int:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(key, value, "expected an integer")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            self._bad(key, value, f"must be at least {minimum}{upper}")
            return default
        return value

    def optional_int(self, key: str, *, maximum: int) -> int | None:
        if self.table.get(key) is None:
            self.seen.add(key)
            return None
        return self.get_int(key, 0, minimum=1, maximum=maximum)

    def get_float(self, key: str, default: float, *, minimum: float, maximum: float) -> float:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._bad(key, value, "expected a number")
            return default
        # TOML allows nan and inf; nan passes every comparison as false.
        if not math.isfinite(value):
            self._bad(key, value, "must be a finite number")
            return default
        if not minimum <= value <= maximum:
            self._bad(key, value, f"must be at least {minimum} and at most {maximum}")
            return default
        return float(value)

    def get_bool(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self._bad(key, value, "expected true or false")
            return default
        return value

    def get_str(self, key: str, default: str, *, choices: tuple[str, ...] = ()) -> str:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            self._bad(key, value, "expected a string")
            return default
        if choices and value not in choices:
            self._bad(key, value, "expected one of " + ", ".join(choices))
            return default
        return value

    def optional_str(self, key: str, *, choices: tuple[str, ...] = ()) -> str | None:
        value = self.get_str(key, "", choices=choices) if self.table.get(key) is not None else ""
        self.seen.add(key)
        return value or None

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._bad(key, value, "expected a list of strings")
            return ()
        return tuple(value)

    def secret(self, key: str) -> Secret | None:
        """A secret string; whatever else is written there, the error names only
        its type: `auth = 918273645` is a password too."""
        value = self._get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.errors.append(
                f"{self.name}.{key}: expected a string, got {_toml_type(value)} (value not shown)"
            )
            return None
        return self._resolve_secret(key, value) if value else None

    def _resolve_secret(self, key: str, value: str) -> Secret | None:
        """`env:NAME` and `file:/path` keep secrets out of the config file."""
        try:
            return resolve_secret(value)
        except ValueError as exc:
            self.errors.append(f"{self.name}.{key}: {exc}")
            return None

    def secret_map(self, key: str) -> dict[str, Secret]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            self.errors.append(f'{self.name}.{key}: expected a table of name = "secret"')
            return {}
        resolved = {name: self._resolve_secret(f"{key}.{name}", v) for name, v in value.items()}
        return {name: s for name, s in resolved.items() if s is not None}

    def finish(self) -> None:
        for key in sorted(set(self.table) - self.seen):
            self.warnings.append(f"{self.name}.{key}: unknown option, ignored")


def _general(section: _Section, hostname: str) -> GeneralConfig:
    s = section
    maxbytes = s.get_int("maxbytes", DEFAULT_MAXBYTES, minimum=100)
    max_memory = s.get_int("max_memory", DEFAULT_MAX_MEMORY, minimum=1024 * 1024)
    maxtimeout = s.get_int("maxtimeout", DEFAULT_MAXTIMEOUT)
    maxduration = s.get_int("maxduration", DEFAULT_MAXDURATION)
    general = GeneralConfig(
        node=s.get_str("node", hostname) or hostname,
        maxpackets=s.get_int("maxpackets", DEFAULT_MAXPACKETS),
        writelocal=s.get_bool("writelocal", False),
        localdir=s.get_str("localdir", DEFAULT_LOCALDIR),
        snaplength=s.get_int("snaplength", DEFAULT_SNAPLENGTH, maximum=MAX_SNAPLENGTH),
        defaulttimeout=s.get_int("defaulttimeout", min(DEFAULT_TIMEOUT, maxtimeout)),
        maxtimeout=maxtimeout,
        maxduration=maxduration,
        maxbytes=maxbytes,
        packetdebug=s.get_bool("packetdebug", False),
        defaultduration=s.get_int("defaultduration", maxduration),
        format=s.get_str("format", "pcap", choices=FORMATS),
        max_concurrent=s.get_int("max_concurrent", DEFAULT_MAX_CONCURRENT, maximum=1024),
        max_memory=max_memory,
        buffer_size=s.get_int("buffer_size", DEFAULT_BUFFER_SIZE, minimum=65_536),
        max_request_bytes=s.get_int(
            "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES, minimum=1024, maximum=16 << 20
        ),
        log_format=s.get_str("log_format", "kv", choices=LOG_FORMATS),
        log_level=s.get_str("log_level", "info", choices=LOG_LEVELS),
        logrequests=s.get_bool("logrequests", False),
        naming=s.get_str("naming", "pcapd", choices=NAMINGS),
    )
    if general.defaulttimeout > general.maxtimeout:
        s.errors.append(
            f"general.defaulttimeout: {general.defaulttimeout} exceeds "
            f"maxtimeout={general.maxtimeout}"
        )
    if general.defaultduration > general.maxduration:
        s.errors.append(
            f"general.defaultduration: {general.defaultduration} exceeds "
            f"maxduration={general.maxduration}"
        )
    if general.maxbytes > general.max_memory:
        s.errors.append(
            f"general.maxbytes: {general.maxbytes} exceeds max_memory={general.max_memory}: "
            "a capture of that size could never be admitted"
        )
    return general


def _redis(s: _Section) -> RedisConfig:
    url = s.secret("url")
    if url is not None:
        scheme = urlsplit(url.reveal()).scheme
        if scheme not in ("redis", "rediss", "unix"):
            s.errors.append(
                f"redis.url: scheme {scheme!r} is not one of redis://, rediss://, unix://"
            )
        try:
            _ = urlsplit(url.reveal()).port  # raises on a bad or out-of-range port
        except ValueError as exc:
            s.errors.append(f"redis.url: {exc}")
    return RedisConfig(
        listen=s.get_bool("listen", True),
        host=s.get_str("host", "127.0.0.1"),
        port=s.get_int("port", DEFAULT_REDIS_PORT, maximum=65535),
        channel=s.get_str("channel", DEFAULT_CHANNEL) or DEFAULT_CHANNEL,
        auth=s.secret("auth"),
        username=s.optional_str("username"),
        db=s.get_int("db", 0, minimum=0),
        url=url,
        tls=s.get_bool("tls", False),
        tls_ca=s.optional_str("tls_ca"),
        results_channel=s.get_str("results_channel", DEFAULT_RESULTS_CHANNEL),
        results_stream=s.get_str("results_stream", DEFAULT_RESULTS_STREAM),
        results_stream_maxlen=s.get_int("results_stream_maxlen", DEFAULT_RESULTS_STREAM_MAXLEN),
        health_check_interval=s.get_int("health_check_interval", DEFAULT_HEALTH_CHECK_INTERVAL),
        stream_listen=s.get_bool("stream_listen", False),
        stream=s.get_str("stream", DEFAULT_REQUEST_STREAM),
        pubsub_queue_bytes=s.get_int(
            "pubsub_queue_bytes",
            DEFAULT_PUBSUB_QUEUE_BYTES,
            minimum=MIN_PUBSUB_QUEUE_BYTES,
            maximum=MAX_PUBSUB_QUEUE_BYTES,
        ),
    )


def _syslog(s: _Section) -> SyslogConfig:
    return SyslogConfig(
        enabled=s.get_bool("enabled", s.present),
        priority=s.get_int("priority", DEFAULT_SYSLOG_PRIORITY, minimum=0, maximum=191),
        tag=s.get_str("tag", DEFAULT_SYSLOG_TAG),
        address=s.get_str("address", "/dev/log"),
    )


def _interfaces(raw: Any, errors: list[str], warnings: list[str]) -> tuple[InterfaceConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append("interface: expected [[interface]] tables")
        return ()
    found = []
    names: set[str] = set()
    for index, table in enumerate(raw):
        s = _Section(table, f"interface[{index}]", errors, warnings)
        name = s.get_str("name", "")
        if not name:
            errors.append(f"interface[{index}].name: required")
        elif name in names:
            errors.append(f"interface[{index}].name: {name!r} is defined twice")
        names.add(name)
        found.append(InterfaceConfig(name=name, aliases=s.str_list("alias")))
        s.finish()
    return tuple(found)


def _cloudshark(s: _Section) -> CloudsharkConfig:
    # pcapdaemon's `timeout` (seconds for the whole upload) is read_timeout's
    # default here: the connect timeout stays separate and never exceeds it.
    timeout = s.get_float(
        "timeout", DEFAULT_CS_READ_TIMEOUT, minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_READ_TIMEOUT
    )
    if "timeout" in s.table and "read_timeout" in s.table:
        s.errors.append("cloudshark.timeout, cloudshark.read_timeout: set one, not both")
    config = CloudsharkConfig(
        upload=s.get_bool("upload", False),
        host=s.get_str("host", "localhost"),
        scheme=s.get_str("scheme", "https", choices=("http", "https")),
        port=s.optional_int("port", maximum=65535),
        token=s.secret("token"),
        ca_bundle=s.optional_str("ca_bundle"),
        connect_timeout=s.get_float(
            "connect_timeout", min(DEFAULT_CS_CONNECT_TIMEOUT, timeout),
            minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_CONNECT_TIMEOUT,
        ),
        read_timeout=s.get_float(
            "read_timeout", timeout, minimum=MIN_CS_TIMEOUT, maximum=MAX_CS_READ_TIMEOUT
        ),
    )  # fmt: skip
    if config.upload and not config.token:
        s.errors.append("cloudshark.token: required when cloudshark.upload = true")
    return config


def _s3(s: _Section) -> S3Config:
    config = S3Config(
        upload=s.get_bool("upload", False),
        accessid=s.optional_str("accessid"),
        accesskey=s.secret("accesskey"),
        endpoint=s.optional_str("endpoint"),
        bucket=s.optional_str("bucket"),
        folder=s.get_str("folder", ""),
        region=s.optional_str("region"),
        acl=s.optional_str("acl"),
        encryption=s.get_bool("encryption", False),
        sse=s.optional_str("sse", choices=SSE_MODES),
        kms_key_id=s.optional_str("kms_key_id"),
        allowed_buckets=s.str_list("allowed_buckets"),
        allowed_endpoints=s.str_list("allowed_endpoints"),
        allowed_acls=s.str_list("allowed_acls"),
        allowed_regions=s.str_list("allowed_regions"),
        multipart_threshold=s.get_int(
            "multipart_threshold", DEFAULT_MULTIPART_THRESHOLD, minimum=5 * 1024 * 1024
        ),
    )
    if config.upload and not config.bucket:
        s.errors.append("s3.bucket: required when s3.upload = true")
    if bool(config.accessid) != bool(config.accesskey):
        s.errors.append("s3.accessid, s3.accesskey: set both, or neither for boto3's chain")
    if config.kms_key_id and config.sse != "aws:kms":
        s.errors.append('s3.kms_key_id: only used with sse = "aws:kms"')
    return config


def _sqs(s: _Section) -> SqsConfig:
    waitseconds = DEFAULT_SQS_WAIT
    if s.table.get("waitseconds") == 0 and s.table["waitseconds"] is not False:
        s.seen.add("waitseconds")
        s.errors.append(
            "sqs.waitseconds: 0 turns long polling off, so every empty reply is followed at "
            f"once by the next billed ReceiveMessage: use {MIN_SQS_WAIT}..{MAX_SQS_WAIT} "
            f"(default {DEFAULT_SQS_WAIT})"
        )
    else:
        waitseconds = s.get_int(
            "waitseconds", DEFAULT_SQS_WAIT, minimum=MIN_SQS_WAIT, maximum=MAX_SQS_WAIT
        )
    config = SqsConfig(
        listen=s.get_bool("listen", False),
        region=s.optional_str("region"),
        accessid=s.optional_str("accessid"),
        accesskey=s.secret("accesskey"),
        url=s.optional_str("url"),
        endpoint=s.optional_str("endpoint"),
        waitseconds=waitseconds,
        chunksize=s.get_int("chunksize", DEFAULT_SQS_CHUNK, maximum=10),
        visibility_timeout=s.get_int("visibility_timeout", DEFAULT_SQS_VISIBILITY, maximum=43_200),
        not_for_me=s.get_str("not_for_me", "release", choices=NOT_FOR_ME),
    )
    if config.listen and not config.url:
        s.errors.append("sqs.url: required when sqs.listen = true")
    if bool(config.accessid) != bool(config.accesskey):
        s.errors.append("sqs.accessid, sqs.accesskey: set both, or neither for boto3's chain")
    return config


def _delivery(s: _Section) -> DeliveryConfig:
    initial = s.get_float(
        "backoff_initial", DEFAULT_BACKOFF_INITIAL, minimum=0.0, maximum=MAX_BACKOFF
    )
    config = DeliveryConfig(
        attempts=s.get_int("attempts", DEFAULT_UPLOAD_ATTEMPTS, maximum=100),
        backoff_initial=initial,
        backoff_max=s.get_float(
            "backoff_max", max(DEFAULT_BACKOFF_MAX, initial), minimum=0.0, maximum=MAX_BACKOFF
        ),
        upload_workers=s.get_int("upload_workers", DEFAULT_UPLOAD_WORKERS, maximum=64),
        spool_dir=s.get_str("spool_dir", DEFAULT_SPOOL_DIR),
        spool_max_bytes=s.get_int("spool_max_bytes", DEFAULT_SPOOL_MAX_BYTES, minimum=1024 * 1024),
        drain_interval=s.get_float(
            "drain_interval",
            DEFAULT_DRAIN_INTERVAL,
            minimum=MIN_DRAIN_INTERVAL,
            maximum=MAX_DRAIN_INTERVAL,
        ),
        attempt_timeout=s.get_float(
            "attempt_timeout",
            DEFAULT_ATTEMPT_TIMEOUT,
            minimum=MIN_ATTEMPT_TIMEOUT,
            maximum=MAX_ATTEMPT_TIMEOUT,
        ),
        shutdown_grace=s.get_float(
            "shutdown_grace",
            DEFAULT_SHUTDOWN_GRACE,
            minimum=MIN_SHUTDOWN_GRACE,
            maximum=MAX_SHUTDOWN_GRACE,
        ),
    )
    if config.backoff_max < config.backoff_initial:
        s.errors.append(
            f"delivery.backoff_max: {config.backoff_max} is below "
            f"backoff_initial={config.backoff_initial}"
        )
    return config


def _security(s: _Section) -> SecurityConfig:
    config = SecurityConfig(
        keys=s.secret_map("keys"),
        require_signed=s.get_bool("require_signed", False),
        max_skew=s.get_int("max_skew", DEFAULT_MAX_SKEW),
        dedup_window=s.get_int("dedup_window", DEFAULT_DEDUP_WINDOW),
        dedup_prefix=s.get_str("dedup_prefix", DEFAULT_DEDUP_PREFIX),
    )
    if not config.dedup_prefix or len(config.dedup_prefix) > 64:
        s.errors.append("security.dedup_prefix: must be 1 to 64 characters")
    if config.require_signed and not config.keys:
        s.errors.append("security.keys: required when security.require_signed = true")
    return config


def _correlator(s: _Section, security: SecurityConfig) -> CorrelatorConfig:
    max_packets = s.get_int("max_packets", DEFAULT_CAPTURE_MAX_PACKETS)
    max_duration = s.get_int("max_duration", DEFAULT_CAPTURE_MAX_DURATION)
    config = CorrelatorConfig(
        host=s.get_str("host", "127.0.0.1") or "127.0.0.1",
        port=s.get_int("port", DEFAULT_CORRELATOR_PORT, maximum=65535),
        token=s.secret("token"),
        read_only=s.get_bool("read_only", False),
        kid=s.optional_str("kid"),
        page_size=s.get_int("page_size", DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE),
        scan_count=s.get_int("scan_count", DEFAULT_SCAN_COUNT, minimum=10, maximum=100_000),
        scan_budget=s.get_int("scan_budget", DEFAULT_SCAN_BUDGET, minimum=100),
        max_client_keys=s.get_int("max_client_keys", DEFAULT_MAX_CLIENT_KEYS, minimum=10),
        max_prefix_clients=s.get_int("max_prefix_clients", DEFAULT_MAX_PREFIX_CLIENTS),
        nodere=s.str_list("nodere"),
        aliases=s.str_list("aliases"),
        default_packets=s.get_int("default_packets", min(DEFAULT_CAPTURE_PACKETS, max_packets)),
        max_packets=max_packets,
        default_duration=s.get_int("default_duration", min(DEFAULT_CAPTURE_DURATION, max_duration)),
        max_duration=max_duration,
        s3_url_expiry=s.get_int("s3_url_expiry", DEFAULT_S3_URL_EXPIRY, maximum=604_800),
        threads=s.get_int("threads", DEFAULT_WEB_THREADS, maximum=256),
        captures_shown=s.get_int("captures_shown", DEFAULT_CAPTURES_SHOWN, maximum=10_000),
    )
    if config.kid and config.kid not in security.keys:
        s.errors.append(f"correlator.kid: {config.kid!r} is not a key in [security] keys")
    if config.default_packets > config.max_packets:
        s.errors.append(f"correlator.default_packets: {config.default_packets} exceeds "
                        f"max_packets={config.max_packets}")  # fmt: skip
    if config.default_duration > config.max_duration:
        s.errors.append(f"correlator.default_duration: {config.default_duration} exceeds "
                        f"max_duration={config.max_duration}")  # fmt: skip
    return config


def parse_config(data: Mapping[str, Any], hostname: str | None = None) -> Config:
    """Validate a parsed TOML document; raise ConfigError listing every problem."""
    errors: list[str] = []
    warnings: list[str] = []
    host = hostname or socket.gethostname()

    def section(name: str) -> _Section:
        return _Section(data.get(name), name, errors, warnings)

    sections = {
        "general": section("general"),
        "redis": section("redis"),
        "syslog": section("syslog"),
        "cloudshark": section("cloudshark"),
        "s3": section("s3"),
        "sqs": section("sqs"),
        "delivery": section("delivery"),
        "security": section("security"),
        "correlator": section("correlator"),
    }
    agents = data.get("agents", {})
    if not isinstance(agents, dict):
        errors.append("agents: expected a table of [agents.<name>] tables")
        agents = {}
    config = Config(
        general=_general(sections["general"], host),
        redis=_redis(sections["redis"]),
        syslog=_syslog(sections["syslog"]),
        interfaces=_interfaces(data.get("interface"), errors, warnings),
        cloudshark=_cloudshark(sections["cloudshark"]),
        s3=_s3(sections["s3"]),
        sqs=_sqs(sections["sqs"]),
        delivery=_delivery(sections["delivery"]),
        security=_security(sections["security"]),
        agents=agents,
        remote_order=tuple(
            dict.fromkeys([k for k in data if k in ("s3", "cloudshark")] + ["s3", "cloudshark"])
        ),
    )
    # After the rest, so errors keep the order of the sections above.
    config = replace(config, correlator=_correlator(sections["correlator"], config.security))
    for s in sections.values():
        s.finish()
    kafka = data.get("kafka")
    if kafka is not None:
        config = replace(
            config, kafka_listen=isinstance(kafka, dict) and kafka.get("listen") is True
        )
        warnings.append(
            "kafka: pcapd does not read Kafka; section ignored (use [redis] listen, "
            "[redis] stream_listen or [sqs] listen)"
        )
    known = set(sections) | {"interface", "agents", "kafka"}
    warnings.extend(f"{name}: unknown section, ignored" for name in sorted(set(data) - known))
    if errors:
        raise ConfigError(errors)
    return replace(config, warnings=tuple(warnings))


Overrides = Mapping[str, Mapping[str, Any]]


def merge_overrides(data: Mapping[str, Any], overrides: Overrides) -> dict[str, Any]:
    """`data` with `{section: {key: value}}` laid over it (command-line flags win)."""
    merged = dict(data)
    for name, values in overrides.items():
        table = merged.get(name)
        merged[name] = {**(table if isinstance(table, dict) else {}), **values}
    return merged


def load_config(
    path: str | os.PathLike[str] | None,
    hostname: str | None = None,
    overrides: Overrides | None = None,
) -> Config:
    """Read and validate a TOML file; errors name the file and every bad field.

    `overrides` (section -> key -> value) are applied before validation, so a
    value given on the command line is checked as if the file held it. With
    no path, the config is the defaults plus the overrides.
    """
    if path is None:
        return parse_config(merge_overrides({}, overrides or {}), hostname)
    where = os.fspath(path)
    try:
        with open(where, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError([f"cannot read config: {exc.strerror}"], where) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"not valid TOML: {exc}"], where) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"not UTF-8 text (TOML must be UTF-8): {exc.reason} at byte {exc.start}"], where
        ) from exc
    try:
        return parse_config(merge_overrides(data, overrides or {}), hostname)
    except ConfigError as exc:
        raise ConfigError(exc.errors, where) from None
