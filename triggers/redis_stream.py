"""Requests from a Redis stream, one consumer group per node, acked when stored.

Every node reads the stream through its own consumer group named after the
node, so each node sees every request (as with pub/sub) but, unlike pub/sub,
a node that was down finds what it missed: an entry read and not yet acked
stays in the group's pending list, and the next start claims it again
(XAUTOCLAIM). `pcapd trigger --stream` publishes with `publish_stream`.

A new group (first start, or Redis lost its data) starts `NEW_GROUP_LOOKBACK`
seconds back by Redis's clock, not at the stream's start: requests published
while the node was reconnecting are taken, history is not replayed.

Bounds: entries are read only when a capture slot is free, at most
min(batch, free_slots()) per read, and pending entries of an earlier run are
claimed as many at a time. So however long the stream or its pending list,
the node holds at most `batch` (10) entries' bodies that it has not handed
on; a backlog waits in Redis, never in this process.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Generator, Mapping
from functools import partial
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from pcapd.core.backoff import RECONNECT_INITIAL, RECONNECT_MAX, Backoff
from pcapd.core.config import RedisConfig
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client, connect
from triggers.base import Delivery

log = logging.getLogger(__name__)

SOURCE = "redis-stream"
BODY_FIELD = "body"
DEFAULT_BATCH = 10
BLOCK_MS = 500  # one blocking read; also how long `stop` may wait
BACKPRESSURE_POLL = 0.05  # seconds between looks at free_slots() when none is free
# What `pcapd trigger --stream` trims the request stream to (approximately): far
# more than a node misses in a restart, small enough to cost little memory.
DEFAULT_REQUEST_STREAM_MAXLEN = 10_000
NEW_GROUP_LOOKBACK = 30.0  # seconds of the stream a brand-new group still takes
# redis-py's own retries, for a blip; past them our logged backoff takes over.
# Kept short so an ack while Redis is away costs the caller ~0.1 s, not seconds.
CLIENT_RETRIES = 2
CLIENT_RETRY_BASE = 0.02
CLIENT_RETRY_CAP = 0.1

Entry = tuple[str, Mapping[Any, Any] | None]


def publish_stream(client: Client, stream: str, body: bytes, maxlen: int | None) -> str:
    """XADD one request; the stream is trimmed to about `maxlen` entries."""
    entry_id = client.xadd(stream, {BODY_FIELD: body}, maxlen=maxlen, approximate=True)
    return _text(entry_id)


def connect_stream(config: RedisConfig) -> Client:
    """`pcapd.core.redis_conn.connect` with few quick client retries (see CLIENT_RETRIES)."""
    backoff = ExponentialBackoff(cap=CLIENT_RETRY_CAP, base=CLIENT_RETRY_BASE)
    return connect(config, retry=Retry(backoff, CLIENT_RETRIES))


class RedisStreamSource:
    """XREADGROUP as consumer `node` of group `node`; reconnects with capped backoff."""

    name = SOURCE

    def __init__(
        self,
        config: RedisConfig,
        node: str,
        client_factory: Callable[[RedisConfig], Client] = connect_stream,
        free_slots: Callable[[], int] = lambda: DEFAULT_BATCH,
        *,
        batch: int = DEFAULT_BATCH,
        block_ms: int = BLOCK_MS,
        backoff_initial: float = RECONNECT_INITIAL,
        backoff_max: float = RECONNECT_MAX,
    ) -> None:
        self.config = config
        self.stream = config.stream
        self.group = node
        self.consumer = node
        self.malformed = 0  # entries without a body, acked and skipped
        self.read_errors = 0  # failed reads (Redis away or refusing), for metrics
        self.connected = False  # the last call to Redis worked (readiness)
        self._factory = client_factory
        self._free_slots = free_slots
        self._batch = batch
        self._block_ms = block_ms
        self._schedule = Backoff(backoff_initial, backoff_max)
        self._client: Client | None = None
        self._lock = threading.Lock()
        # Entry ids handed out and not yet acked or released; a claim after a
        # reconnect skips them so a capture still running is not started twice.
        self._in_flight: set[str] = set()
        self._unacked: set[str] = set()  # acks that failed; sent again on reconnect

    @property
    def reconnects(self) -> int:
        return self.read_errors

    def deliveries(self, stop: threading.Event) -> Generator[Delivery, None, None]:
        failures = 0
        claim_from: str | None = None  # XAUTOCLAIM cursor while recovering
        ready = False
        backlog: list[Entry] = []
        while not stop.is_set():
            try:
                client = self._get_client()
                if not ready:
                    self._ensure_group(client)
                    claim_from, ready = "0-0", True
                    self.connected = True
                if self._unacked:
                    self._resend_acks(client)
                if not backlog:
                    want = min(self._batch, self._free_slots())
                    if want <= 0:
                        stop.wait(BACKPRESSURE_POLL)
                        continue
                    if claim_from is not None:
                        claim_from, backlog = self._claim(client, claim_from, want)
                    else:
                        backlog = self._read(client, want)
            except redis.ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    event(log, "stream_group_vanished", logging.WARNING, group=self.group,
                          stream=self.stream, action="creating it again")  # fmt: skip
                    ready, backlog = False, []
                    continue
                failures = self._backoff(stop, failures, exc)
                ready, backlog = False, []
                continue
            except redis.RedisError as exc:
                failures = self._backoff(stop, failures, exc)
                ready, backlog = False, []
                continue
            self.connected = True
            if failures:
                event(log, "stream_reading_again", stream=self.stream, failures=failures)
                failures = 0
            while backlog and not stop.is_set():
                if self._free_slots() <= 0:
                    stop.wait(BACKPRESSURE_POLL)
                    continue
                delivery = self._delivery(backlog.pop(0))
                if delivery is not None:
                    yield delivery

    def _backoff(self, stop: threading.Event, failures: int, exc: Exception) -> int:
        failures += 1
        self.read_errors += 1
        self.connected = False
        delay = self._schedule.delay(failures)
        event(
            log, "stream_read_failed", logging.ERROR, stream=self.stream,
            redis=self.config.describe(), error=f"{type(exc).__name__}: {exc}",
            retry_in=round(delay, 2), failures=failures,
        )  # fmt: skip
        stop.wait(delay)
        return failures

    def _get_client(self) -> Client:
        if self._client is None:
            self._client = self._factory(self.config)
        return self._client

    def _ensure_group(self, client: Client) -> None:
        seconds, micros = client.time()
        start_ms = max(0, int((seconds + micros / 1e6 - NEW_GROUP_LOOKBACK) * 1000))
        try:
            client.xgroup_create(self.stream, self.group, id=f"{start_ms}-0", mkstream=True)
            event(log, "stream_group_created", group=self.group, stream=self.stream)
        except redis.ResponseError as exc:
            if not str(exc).startswith("BUSYGROUP"):
                raise

    def _claim(self, client: Client, cursor: str, want: int) -> tuple[str | None, list[Entry]]:
        """Pending entries of the group (an earlier run's), `want` at a time."""
        reply: Any = client.xautoclaim(
            self.stream, self.group, self.consumer, min_idle_time=0, start_id=cursor, count=want
        )
        next_cursor = _text(reply[0])
        with self._lock:
            entries = [
                (_text(entry_id), fields)
                for entry_id, fields in reply[1]
                if _text(entry_id) not in self._in_flight
            ]
        if entries:
            event(log, "stream_claimed", entries=len(entries), stream=self.stream)
        return (None if next_cursor == "0-0" else next_cursor), entries

    def _read(self, client: Client, want: int) -> list[Entry]:
        reply: Any = client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=want, block=self._block_ms
        )
        entries: list[Entry] = []
        for _stream, items in reply or []:
            entries.extend((_text(entry_id), fields) for entry_id, fields in items)
        return entries

    def _delivery(self, entry: Entry) -> Delivery | None:
        entry_id, fields = entry
        body = _field(fields, BODY_FIELD)
        with self._lock:
            self._in_flight.add(entry_id)
        if body is None:
            self.malformed += 1
            names = ", ".join(sorted(_text(k) for k in fields or {})) or "none"
            event(
                log, "stream_entry_malformed", logging.WARNING, id=entry_id, stream=self.stream,
                missing=BODY_FIELD, fields=names, action="acked and skipped",
            )  # fmt: skip
            self._ack(entry_id)
            return None
        return Delivery(
            body=body,
            source=self.name,
            ack=partial(self._ack, entry_id),
            release=partial(self._release, entry_id),
            message_id=entry_id,
        )

    def _ack(self, entry_id: str) -> None:
        """XACK; if Redis is away, again after the reconnect. A second ack is a no-op."""
        with self._lock:
            if entry_id not in self._in_flight or entry_id in self._unacked:
                return
        try:
            self._get_client().xack(self.stream, self.group, entry_id)
        except redis.RedisError as exc:
            event(log, "stream_ack_failed", logging.WARNING, id=entry_id, error=str(exc),
                  action="sent again after reconnect")  # fmt: skip
            with self._lock:
                self._unacked.add(entry_id)
            return
        with self._lock:
            self._in_flight.discard(entry_id)

    def _release(self, entry_id: str) -> None:
        """Leave the entry pending: it is claimed again on the next (re)connect."""
        with self._lock:
            self._in_flight.discard(entry_id)

    def _resend_acks(self, client: Client) -> None:
        with self._lock:
            ids = sorted(self._unacked)
        if ids:
            client.xack(self.stream, self.group, *ids)
            with self._lock:
                self._unacked.difference_update(ids)
                self._in_flight.difference_update(ids)

    def in_flight(self) -> int:
        with self._lock:
            return len(self._in_flight)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _field(fields: Mapping[Any, Any] | None, name: str) -> bytes | None:
    if not fields:
        return None
    value = fields.get(name.encode(), fields.get(name))
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode("utf-8")
