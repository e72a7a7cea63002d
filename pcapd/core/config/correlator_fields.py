"""The [correlator] section's fields, each default next to its bounds
(`pcapd.core.config.sections` has the other sections' and takes these in)."""

from __future__ import annotations

from dataclasses import dataclass

from pcapd.core.secret import Secret

DEFAULT_CORRELATOR_PORT = 3047  # ShoDoHFlo's
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Every Redis command the correlator sends is small (bench/correlator.py: SCAN
# COUNT 100 and MGET of 100 keys average well under 1 ms on 2.1M keys); the
# work per HTTP request is bounded by keys examined and by seconds.
DEFAULT_SCAN_COUNT = 100  # keys per SCAN/SSCAN call
MAX_SCAN_COUNT = 1000  # ~5 ms a call on 2M keys: past it one call nears 10 ms
DEFAULT_SCAN_BUDGET = 200_000  # keys examined per request
DEFAULT_SCAN_SECONDS = 1.0  # SCAN time per request; then a cursor to go on from
MAX_SCAN_SECONDS = 60.0
DEFAULT_KEYS_PER_COMMAND = 100  # keys per MGET or UNLINK
MAX_KEYS_PER_COMMAND = 1000
DEFAULT_KEYS_PER_PIPELINE = 1000  # Redis serves one pipeline without serving others
DEFAULT_MAX_CLIENT_KEYS = 20_000
# Keys of the clients one request reads, in all: a page of 500 clients of
# max_client_keys each would be 10M keys (~20 s and ~1 GB in the web process).
DEFAULT_MAX_REQUEST_KEYS = 200_000
DEFAULT_MAX_PREFIX_CLIENTS = 64
DEFAULT_CAPTURE_PACKETS = 100
DEFAULT_CAPTURE_DURATION = 30
DEFAULT_CAPTURE_MAX_PACKETS = 10_000
DEFAULT_CAPTURE_MAX_DURATION = 300
DEFAULT_S3_URL_EXPIRY = 3600
DEFAULT_WEB_THREADS = 8
# Seconds the correlator waits for Redis to connect or answer one command. Its
# commands take milliseconds (a stalled Redis was seen at 86 ms), so a Redis
# that says nothing for this long is hung: the request answers 503 rather
# than holding a server thread for the 10 s timeout and retries of the rest.
DEFAULT_CORRELATOR_REDIS_TIMEOUT = 2.0
MAX_CORRELATOR_REDIS_TIMEOUT = 60.0
DEFAULT_CAPTURES_SHOWN = 100
# Seconds a live results page waits past the capture's max_duration (uploads,
# retries, a spool) before it ends.
DEFAULT_RESULT_WAIT = 20
MAX_RESULT_WAIT = 3600


@dataclass(frozen=True, slots=True)
class CorrelatorConfig:
    """`pcapd web` and `pcapd correlate`. Each request examines at most
    `scan_budget` keys for at most `scan_seconds`, `scan_count` per SCAN,
    reads values `keys_per_command` per MGET and `keys_per_pipeline` per round
    trip, at most `max_client_keys` per client and `max_request_keys` for all
    the clients it shows (worst case in the web process: ~max_request_keys x
    (key + value) bytes per busy thread); each open live-results
    page holds one of `threads` server threads. Redis gets `redis_timeout`
    seconds per command (and to connect), once more after a failure, so a
    request Redis cannot serve answers 503 after 2 x redis_timeout (4 x when
    a pooled connection was due its health check, a PING retried too)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_CORRELATOR_PORT
    token: Secret | None = None  # without it, nothing can be changed
    read_only: bool = False
    kid: str | None = None  # sign requests with [security] keys[kid]
    page_size: int = DEFAULT_PAGE_SIZE
    scan_count: int = DEFAULT_SCAN_COUNT
    scan_budget: int = DEFAULT_SCAN_BUDGET
    scan_seconds: float = DEFAULT_SCAN_SECONDS
    keys_per_command: int = DEFAULT_KEYS_PER_COMMAND
    keys_per_pipeline: int = DEFAULT_KEYS_PER_PIPELINE
    read_index: bool = True  # false: find a client's keys by SCAN even if it has an index
    max_client_keys: int = DEFAULT_MAX_CLIENT_KEYS
    max_request_keys: int = DEFAULT_MAX_REQUEST_KEYS
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
    result_wait: int = DEFAULT_RESULT_WAIT
    redis_timeout: float = DEFAULT_CORRELATOR_REDIS_TIMEOUT
