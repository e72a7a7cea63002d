"""What each config section holds: its fields, each default next to its
bounds as named constants (the example and the readers use these names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from pcapd.core.config.correlator_fields import *  # importable from here, as every section's
from pcapd.core.configread import ConfigError as ConfigError  # every command imports it here
from pcapd.core.configread import HostPort
from pcapd.core.secret import Secret

# pcapdaemon's documented defaults (its own code never applied them).
DEFAULT_MAXPACKETS = 50_000
MAX_PACKETS = 2**31 - 1
DEFAULT_LOCALDIR = "/tmp"
DEFAULT_SNAPLENGTH = 262_144  # tcpdump's default: whole packets
DEFAULT_TIMEOUT = 10
DEFAULT_MAXTIMEOUT = 3_600
DEFAULT_MAXDURATION = 3_600
MAX_SECONDS = 7 * 86_400  # timeouts, durations and windows: a week
DEFAULT_MAXBYTES = 100_000_000
MIN_MAXBYTES = 100
# pcapd's own bounds.
# As pcapdaemon, a request without `duration` may capture for `maxduration`.
DEFAULT_DURATION = DEFAULT_MAXDURATION
DEFAULT_MAX_CONCURRENT = 8
MAX_CONCURRENT = 1024
DEFAULT_MAX_MEMORY = 512 * 1024 * 1024
MIN_MAX_MEMORY = 1024 * 1024
MAX_MEMORY = 1 << 40  # also maxbytes' cap: a capture never holds more
DEFAULT_BUFFER_SIZE = 4 * 1024 * 1024  # TPACKET_V3: no drops to 700k pps in bench/
MIN_BUFFER_SIZE = 65_536
MAX_BUFFER_SIZE = 2**31 - 1  # libpcap's buffer size is a C int
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024
MIN_MAX_REQUEST_BYTES = 1024
MAX_MAX_REQUEST_BYTES = 16 << 20
MAX_SNAPLENGTH = 262_144
DEFAULT_FORMAT = "pcap"
FORMATS = ("pcap", "pcapng")
DEFAULT_LOG_FORMAT = "kv"
LOG_FORMATS = ("kv", "json")
DEFAULT_LOG_LEVEL = "info"
LOG_LEVELS = ("debug", "info", "warning", "error")

DEFAULT_REDIS_HOST = "127.0.0.1"
DEFAULT_REDIS_PORT = 6379
MAX_REDIS_DB = 2**31 - 1  # Redis' `databases` is a C int
# pcapd's URL spelling for a cluster seed (redis-py has none: RedisCluster
# takes redis:// or rediss:// and is chosen by the caller).
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
REDIS_URL_SCHEMES = ("redis", "rediss", "unix", *CLUSTER_SCHEMES)
REDIS_URL_SCHEMES_TEXT = ", ".join(f"{scheme}://" for scheme in REDIS_URL_SCHEMES)
MAX_CLUSTER_NODES = 1_000  # seed nodes; one answering is enough to find the rest
DEFAULT_CHANNEL = "capture"
DEFAULT_RESULTS_CHANNEL = "capture-results"
DEFAULT_RESULTS_STREAM = "capture-results"
DEFAULT_RESULTS_STREAM_MAXLEN = 10_000
MAX_RESULTS_STREAM_MAXLEN = 100_000_000
# Seconds a result's event_id is remembered beside the results stream, so a
# resend after a lost reply is not added twice. It covers resends within it
# (the publisher retries at least every 10 s while Redis answers again);
# Redis holds one marker (~150 B) per result for it: rate x window.
DEFAULT_RESULTS_DEDUP_WINDOW = 300
MAX_RESULTS_DEDUP_WINDOW = 86_400
DEFAULT_REQUEST_STREAM = "capture-requests"
DEFAULT_HEALTH_CHECK_INTERVAL = 15
MAX_HEALTH_CHECK_INTERVAL = 3_600
# Requests read off the pub/sub socket and not yet handled: bytes of bodies
# (plus a per-message overhead). What does not fit is answered "overloaded".
DEFAULT_PUBSUB_QUEUE_BYTES = 16 * 1024 * 1024
MIN_PUBSUB_QUEUE_BYTES = 1024 * 1024
MAX_PUBSUB_QUEUE_BYTES = 1024 * 1024 * 1024

# The lookback ring ([[interface]] lookback, lookback_bytes, lookback_bpf;
# [general] maxlookback): seconds and bytes of packets kept per interface.
DEFAULT_LOOKBACK = 0  # no ring
MAX_LOOKBACK = 86_400  # a day: longer history is Stenographer's or Arkime's job
DEFAULT_LOOKBACK_BYTES = 64 * 1024 * 1024
MIN_LOOKBACK_BYTES = 2 * 1024 * 1024  # a few chunks, each holding the largest packet
DEFAULT_MAXLOOKBACK = 300

DEFAULT_NAMING = "pcapd"
NAMINGS = ("pcapd", "pcapdaemon")

DEFAULT_SYSLOG_PRIORITY = 25  # LOG_DAEMON | LOG_ALERT, as pcapdaemon's sample
MAX_SYSLOG_PRIORITY = 191  # facility local7 | severity debug
DEFAULT_SYSLOG_TAG = "pcapd"
DEFAULT_SYSLOG_ADDRESS = "/dev/log"

DEFAULT_UPLOAD_ATTEMPTS = 4
MAX_UPLOAD_ATTEMPTS = 100
DEFAULT_BACKOFF_INITIAL = 0.5
DEFAULT_BACKOFF_MAX = 30.0
MAX_BACKOFF = 3_600.0  # seconds: backoff_initial and backoff_max
DEFAULT_UPLOAD_WORKERS = 4
MAX_UPLOAD_WORKERS = 64
DEFAULT_SPOOL_DIR = "/var/spool/pcapd"
DEFAULT_SPOOL_MAX_BYTES = 2 * 1024 * 1024 * 1024
MIN_SPOOL_MAX_BYTES = 1024 * 1024
MAX_SPOOL_MAX_BYTES = 1 << 50
DEFAULT_DRAIN_INTERVAL = 30.0
MIN_DRAIN_INTERVAL = 0.1
MAX_DRAIN_INTERVAL = 86_400.0
DEFAULT_ATTEMPT_TIMEOUT = 60.0  # one remote attempt, connect to last byte
MIN_ATTEMPT_TIMEOUT = 0.1
MAX_ATTEMPT_TIMEOUT = 3_600.0
DEFAULT_SHUTDOWN_GRACE = 60.0  # below systemd's TimeoutStopSec=90 in deploy/systemd
MIN_SHUTDOWN_GRACE = 1.0
MAX_SHUTDOWN_GRACE = 3_600.0

DEFAULT_CS_HOST = "localhost"
DEFAULT_CS_SCHEME = "https"
CS_SCHEMES = ("http", "https")
DEFAULT_CS_CONNECT_TIMEOUT = 5.0
DEFAULT_CS_READ_TIMEOUT = 120.0
MIN_CS_TIMEOUT = 0.1
MAX_CS_CONNECT_TIMEOUT = 300.0
MAX_CS_READ_TIMEOUT = 3_600.0
DEFAULT_MULTIPART_THRESHOLD = 8 * 1024 * 1024
MIN_MULTIPART_THRESHOLD = 5 * 1024 * 1024  # S3's smallest part
MAX_MULTIPART_THRESHOLD = 5 * 1024**3  # S3's largest part

DEFAULT_SQS_WAIT = 20
MIN_SQS_WAIT = 1  # 0 is short polling: an empty reply at once, one billed call after another
MAX_SQS_WAIT = 20  # SQS's own limit
DEFAULT_SQS_CHUNK = 10
MAX_SQS_CHUNK = 10  # SQS's own limit
DEFAULT_SQS_VISIBILITY = 30
MAX_SQS_VISIBILITY = 43_200  # SQS's own limit: 12 hours
DEFAULT_NOT_FOR_ME = "release"
NOT_FOR_ME = ("release", "delete")

DEFAULT_MAX_SKEW = 300
MAX_SKEW = 86_400
DEFAULT_DEDUP_WINDOW = 600
DEFAULT_DEDUP_PREFIX = "pcapd:seen:"
MAX_PREFIX_LEN = 64  # dedup_prefix, fleet.prefix

# Heartbeat: one Redis hash per node, expiring after HEARTBEATS_MISSED beats.
DEFAULT_FLEET_PREFIX = "pcapd:node:"
DEFAULT_HEARTBEAT_INTERVAL = 10.0
MIN_HEARTBEAT_INTERVAL = 0.5
MAX_HEARTBEAT_INTERVAL = 3_600.0
HEARTBEATS_MISSED = 3
SSE_MODES = ("AES256", "aws:kms")


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
    format: str = DEFAULT_FORMAT
    max_concurrent: int = DEFAULT_MAX_CONCURRENT
    # Worst case held by captures: max_memory bytes, since every capture
    # reserves its `bytes` bound before it starts.
    max_memory: int = DEFAULT_MAX_MEMORY
    buffer_size: int = DEFAULT_BUFFER_SIZE
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    log_format: str = DEFAULT_LOG_FORMAT
    log_level: str = DEFAULT_LOG_LEVEL
    logrequests: bool = False  # log every request body as it arrives (pcapdaemon's option)
    naming: str = DEFAULT_NAMING  # file names and S3 keys: pcapd's, or pcapdaemon's host-iface-time
    maxlookback: int = DEFAULT_MAXLOOKBACK  # a request's `lookback` cap, in seconds


@dataclass(frozen=True, slots=True)
class RedisConfig:
    listen: bool = True
    host: str = DEFAULT_REDIS_HOST
    port: int = DEFAULT_REDIS_PORT
    channel: str = DEFAULT_CHANNEL
    auth: Secret | None = None
    username: str | None = None
    db: int = 0
    url: Secret | None = None  # redis://, rediss://, unix://; may hold a password
    # Redis Cluster: seeds from `nodes`, else `url` (redis+cluster:// or
    # rediss+cluster:// say so alone), else host/port.
    cluster: bool = False
    nodes: tuple[str, ...] = ()  # "HOST:PORT" seeds of a cluster
    sharded_pubsub: bool = False  # SSUBSCRIBE/SPUBLISH for requests, results, reply_to
    tls: bool = False
    tls_ca: str | None = None
    results_channel: str = DEFAULT_RESULTS_CHANNEL
    results_stream: str = DEFAULT_RESULTS_STREAM
    results_stream_maxlen: int = DEFAULT_RESULTS_STREAM_MAXLEN
    results_dedup_window: int = DEFAULT_RESULTS_DEDUP_WINDOW
    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL
    stream_listen: bool = False
    stream: str = DEFAULT_REQUEST_STREAM
    # Worst case held by the pub/sub source between socket and controller.
    pubsub_queue_bytes: int = DEFAULT_PUBSUB_QUEUE_BYTES

    def with_url(self, url: Secret) -> RedisConfig:
        """This config pointed at `url` instead (an agent's `redis_url`,
        `--redis-url`): the URL alone says whether it is a cluster."""
        return replace(self, url=url, cluster=False, nodes=())

    @property
    def clustered(self) -> bool:
        """A Redis Cluster: `cluster = true`, or a redis+cluster:// URL."""
        return self.cluster or (
            self.url is not None and urlsplit(self.url.reveal()).scheme in CLUSTER_SCHEMES
        )

    def describe(self) -> str:
        """Where Redis is, without any password: for logs and errors."""
        if self.clustered and self.nodes:
            scheme = "rediss" if self.tls else "redis"
            return f"{scheme}+cluster://{','.join(self.nodes)}"
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
    address: str = DEFAULT_SYSLOG_ADDRESS


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """With `lookback` > 0 the interface keeps a ring of its last `lookback`
    seconds of packets matching `lookback_bpf`, in at most `lookback_bytes`
    (reserved against general.max_memory at start)."""

    name: str
    aliases: tuple[str, ...] = ()
    lookback: int = DEFAULT_LOOKBACK
    lookback_bytes: int = DEFAULT_LOOKBACK_BYTES
    lookback_bpf: str = ""  # what the ring keeps: everything by default


@dataclass(frozen=True, slots=True)
class CloudsharkConfig:
    upload: bool = False
    host: str = DEFAULT_CS_HOST
    scheme: str = DEFAULT_CS_SCHEME
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
    not_for_me: str = DEFAULT_NOT_FOR_ME


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
class FleetConfig:
    """The node's heartbeat (pcapd/fleet/): the hash `<prefix><node>`,
    rewritten every `heartbeat_interval` s and expiring after
    HEARTBEATS_MISSED missed beats. Read by `pcapd nodes`."""

    prefix: str = DEFAULT_FLEET_PREFIX
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """`pcapd serve`'s Prometheus /metrics, /healthz and /readyz (docs/operations.md);
    off unless `listen` is set. Each agent has its own `metrics_listen`."""

    listen: HostPort | None = None
