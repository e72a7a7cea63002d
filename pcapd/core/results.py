"""Publishing result events: results channel, capped results stream, reply_to."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

import redis

from pcapd.core.backoff import Backoff
from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client, is_cluster, publish

log = logging.getLogger("pcapd.core.results")

PUBLISH_ATTEMPTS = 3
MAX_PENDING = 10_000  # results held while Redis is away (~1 KB each)
SEND_BATCH = 200  # queued results sent in one pipeline: a flood's answers keep up

# Commands for the same pipeline, in order with the results (dedup marks):
# called with the pipeline (or, on a cluster, the client) to add them.
Commands = Callable[[Any], None]
_Pending = tuple[ResultEvent | Commands, str | None]


class ResultPublisher:
    """Sends each event to every place it belongs; Redis trouble costs a log line.

    `publish` sends at once and says whether it got through (the spool CLI
    wants to know). The daemon uses `submit` instead: events queue (at most
    MAX_PENDING, the oldest dropped and counted past that) and one thread
    sends them, backing off while Redis is away, so no capture or trigger
    thread ever waits on Redis to report.

    `later` queues other writes that must not hold up a thread either (a
    request's `served` mark): they go in the same pipelines, in order.

    Sending is serialised: redis-py 8 was seen to crash with AttributeError
    inside `connect()` when two threads opened pooled connections at once.
    """

    def __init__(self, connect: Callable[[], Client], config: RedisConfig) -> None:
        self._connect = connect
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.config = config
        self.dropped = 0
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- synchronous -----------------------------------------------------
    def publish(self, result: ResultEvent, reply_to: str | None = None) -> bool:
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            error = self._send(result, reply_to)
            if error is None:
                return True
            event(
                log, "result_publish_failed", logging.WARNING,
                id=result.id, attempt=attempt, error=error,
            )  # fmt: skip
        event(log, "result_lost", logging.ERROR, id=result.id, result=result.to_json())
        return False

    def _send(self, result: ResultEvent, reply_to: str | None) -> str | None:
        """None when sent, else the error."""
        return self._send_all([(result, reply_to)])

    def _send_all(self, batch: list[_Pending]) -> str | None:
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._connect()
                # redis-py's cluster pipeline refuses PUBLISH: one command at
                # a time there (results are few; the single server keeps its pipeline).
                pipe = self._client if is_cluster(self._client) else self._client.pipeline(
                    transaction=False)  # fmt: skip
                sharded = self.config.sharded_pubsub
                for result, reply_to in batch:
                    if not isinstance(result, ResultEvent):
                        result(pipe)
                        continue
                    body = result.to_json()
                    publish(pipe, self.config.results_channel, body, sharded=sharded)
                    if self.config.results_stream:
                        pipe.xadd(
                            self.config.results_stream,
                            {"event": body},
                            maxlen=self.config.results_stream_maxlen,
                            approximate=True,
                        )
                    if reply_to:
                        publish(pipe, reply_to, body, sharded=sharded)
                if isinstance(pipe, redis.client.Pipeline):
                    pipe.execute()
                return None
            except (redis.RedisError, OSError, AttributeError) as exc:
                self._client = None
                return str(exc) or type(exc).__name__

    # -- queued, for the daemon -----------------------------------------
    @property
    def queue_depth(self) -> int:
        with self._wake:
            return len(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="results", daemon=True)
        self._thread.start()

    def submit(self, result: ResultEvent, reply_to: str | None = None) -> None:
        """Queue `result`; never blocks. Without a running thread, send now."""
        if self._thread is None:
            self.publish(result, reply_to)
            return
        self._queue((result, reply_to))

    def later(self, commands: Commands) -> None:
        """Queue `commands` behind the results queued so far; never blocks.
        Without a running thread, run them now (once; Redis errors are the
        caller's). Lost, like a result, past MAX_PENDING."""
        if self._thread is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                commands(self._client)
            return
        self._queue((commands, None))

    def _queue(self, item: _Pending) -> None:
        with self._wake:
            if len(self._pending) >= MAX_PENDING:
                lost, _ = self._pending.popleft()
                self.dropped += 1
                _log_lost(lost, f"{MAX_PENDING} results waiting for Redis")
            self._pending.append(item)
            self._wake.notify()

    def stop(self, timeout: float) -> int:
        """Send what is queued for at most `timeout` s; returns how many
        results were left (queued commands left are logged, not counted)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._wake:
            left = [item for item, _ in self._pending]
            self._pending.clear()
        for item in left:
            _log_lost(item, "Redis unreachable at shutdown")
        lost = sum(isinstance(item, ResultEvent) for item in left)
        self.dropped += lost
        return lost

    def _run(self) -> None:
        backoff = Backoff().tracker()
        while True:
            with self._wake:
                while not self._pending and not self._stopping:
                    self._wake.wait()
                if not self._pending:
                    return
                batch = list(itertools.islice(self._pending, SEND_BATCH))
            error = self._send_all(batch)
            if error is None:
                backoff.succeeded()
                with self._wake:
                    # What submit() dropped meanwhile went from the front.
                    for item in batch:
                        if self._pending and self._pending[0] is item:
                            self._pending.popleft()
                continue
            wait = backoff.failed()
            first = batch[0][0]
            event(
                log, "result_publish_failed", logging.WARNING, error=error,
                id=first.id if isinstance(first, ResultEvent) else None,
                waiting=len(self._pending), retry_in=round(wait, 2),
            )  # fmt: skip
            with self._wake:
                self._wake.wait(wait)


def _log_lost(item: ResultEvent | Commands, reason: str) -> None:
    if isinstance(item, ResultEvent):
        event(log, "result_lost", logging.ERROR, id=item.id, result=item.to_json(), reason=reason)
    else:
        event(log, "redis_write_lost", logging.WARNING, what=repr(item), reason=reason)
