"""Publishing result events: results channel, capped results stream, reply_to.

Each event the publisher is given gets its `event_id` (a uuid) before its
first send, and keeps it through every resend. A connection that breaks after
Redis ran a batch loses the reply, and the batch goes again: the stream
entry is added by a script only if the id's marker (set once the entry is
in, for `[redis] results_dedup_window` s) was not there, so the stream holds
it once; pub/sub cannot be taken back, so a subscriber may get a message
twice, with the same `event_id` (pcapd's readers drop the second).
redis-py's own retries are off on the publisher's client: a resend is always
this module's, seen and logged. What Redis refuses for good (NOPERM,
WRONGTYPE: `redis_errors.refusal`) is not resent: that event is logged
lost, the others go on. After a round Redis took in part (OOM or READONLY on
the stream's script, its PUBLISH through), only the rest goes again. What
one batch sends and what it makes of the replies is `pcapd.core.result_send`.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import threading
import time
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pcapd.core.backoff import Backoff, BackoffTracker
from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client, connecting, is_cluster
from pcapd.core.redis_errors import error_text
from pcapd.core.redis_wire import UNANSWERED
from pcapd.core.result_send import (
    CHANNEL,
    REPLY,
    STREAM,
    Commands,
    Item,
    Pending,
    event_mark_key,
    log_lost,
    result_of,
    send_batch,
    settle,
    with_event_id,
)

__all__ = [
    "CHANNEL", "MAX_PENDING", "PUBLISH_ATTEMPTS", "PUBLISH_BACKOFF", "REPLY", "SEND_BATCH",
    "STREAM", "Commands", "ResultPublisher", "Sent", "event_mark_key", "with_event_id",
]  # fmt: skip

log = logging.getLogger("pcapd.core.results")

PUBLISH_ATTEMPTS = 4
# `publish`'s waits between attempts: ~1.5, 3, 6 s (half of each random), so
# a Redis restart of up to ~5 s costs no result (10.5 s at most in all).
PUBLISH_BACKOFF = Backoff(initial=1.5, maximum=6.0)
MAX_PENDING = 10_000  # results held while Redis is away (~1 KB each)
SEND_BATCH = 200  # queued results sent in one round trip: a flood's answers keep up


class Sent(enum.Enum):
    """What became of a result `publish` was given. Truthy only when SENT."""

    SENT = "sent"
    REFUSED = "refused"  # refused for good: logged lost; a resend would be too
    UNREACHABLE = "unreachable"  # Redis away past the attempts: logged lost; try later

    def __bool__(self) -> bool:
        return self is Sent.SENT


class ResultPublisher:
    """Sends each event to every place it belongs; Redis trouble costs a log line.

    `publish` sends at once and says whether it got through (the spool CLI
    wants to know). The daemon uses `submit` instead: events queue (at most
    MAX_PENDING, the oldest dropped and counted past that) and one thread
    sends them, backing off while Redis is away, so no capture or trigger
    thread ever waits on Redis to report.

    `later` queues other writes that must not hold up a thread either (a
    request's `served` mark): they go in the same round trips, in order.

    Sending is serialised: redis-py 8 was seen to crash with AttributeError
    inside `connect()` when two threads opened pooled connections at once.
    """

    def __init__(self, connect: Callable[[], Client], config: RedisConfig) -> None:
        self._connect = connect
        self._client: Client | None = None
        self._lock = threading.Lock()
        self.config = config
        self.dropped = 0
        self._pending: collections.deque[Pending] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- synchronous -----------------------------------------------------
    def publish(self, result: ResultEvent, reply_to: str | None = None) -> Sent:
        """Send now: up to PUBLISH_ATTEMPTS tries PUBLISH_BACKOFF apart while
        Redis is unreachable (or busy, loading ...); UNREACHABLE (and
        `result_lost` logged) once they are spent, REFUSED (logged) at once
        when Redis refuses it for good (NOPERM, WRONGTYPE: no resend would do
        better). An `event_id` the result carries is kept (a resend of the
        same result is then in the stream once); else it gets a new one."""
        if result.event_id is None:
            result = with_event_id(result)
        backoff = PUBLISH_BACKOFF.tracker()
        pending: Pending = (result, reply_to)
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            rest: dict[int, Pending | None] = {}
            error, refused = self._send_all([pending], rest)
            pending = rest.get(0) or pending
            if refused:
                log_lost(result, refused[0])
                return Sent.REFUSED
            if error is None:
                return Sent.SENT
            wait = backoff.failed() if attempt < PUBLISH_ATTEMPTS else 0.0
            event(
                log, "result_publish_failed", logging.WARNING,
                id=result.id, attempt=attempt, error=error, retry_in=round(wait, 2),
            )  # fmt: skip
            time.sleep(wait)
        log_lost(result, f"Redis unreachable after {PUBLISH_ATTEMPTS} attempts")
        return Sent.UNREACHABLE

    def _send_all(
        self, batch: list[Pending], rest: dict[int, Pending | None] | None = None
    ) -> tuple[str | None, dict[int, str]]:
        """Send `batch` in one round trip: (the error, when Redis did not take
        it all and the batch must go again; None once it did) and, by
        position, why each item given up is (`result_send.given_up`: its
        commands refused for good, or not encodable): sent again they would
        fail again, so they are not. After an error, `rest` (when given)
        says by position what needs no resend (None: sent, or given up) and
        what goes again in part (`Rest`); an item it does not name goes
        again whole."""
        with self._lock:
            try:
                fresh = self._client is None
                if self._client is None:
                    self._client = self._new_client()
                client = self._client
                cluster = is_cluster(client)
                outcomes = send_batch(client, batch, self.config, fresh=fresh)
            except UNANSWERED as exc:
                self._client = None
                return error_text(exc), {}
            refused, done, transient = settle(batch, outcomes, cluster=cluster)
            if transient is None:
                return None, refused
            self._client = None  # reconnect: a failover may have moved the primary
            if rest is not None:
                rest.update(done)
            return error_text(transient), refused

    def _new_client(self) -> Client:
        """A client with redis-py's own retries off (redis-py 8 resends a
        command up to 10 times, and Redis runs each copy): `_send_all`'s
        callers are the only resend, with the same event ids."""
        with connecting():  # a cluster's client reads its slot map now
            client = self._connect()
        client.set_retry(Retry(NoBackoff(), 0))
        return client

    # -- queued, for the daemon -----------------------------------------
    @property
    def queue_depth(self) -> int:
        with self._wake:
            return len(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="results", daemon=True)
        self._thread.start()

    def submit(self, result: ResultEvent, reply_to: str | None = None) -> bool:
        """Queue `result`; never blocks. Without a running thread, send now.
        False (`result_lost` logged) once `stop` was called, or when sent now
        and Redis stayed unreachable: it will not be sent. An `event_id` the
        result carries is kept, as `publish` keeps it (a spool entry's
        `delivered`, said again by each run, is in the stream once); else it
        gets a new one."""
        if result.event_id is None:
            result = with_event_id(result)
        if self._thread is None:
            return self.publish(result, reply_to) is not Sent.UNREACHABLE
        with self._wake:
            stopping = self._stopping
        if stopping:
            self._lost(result, "submitted after the publisher stopped")
            return False
        self._queue((result, reply_to))
        return True

    def later(self, commands: Commands) -> None:
        """Queue `commands` behind the results queued so far; never blocks.
        Without a running thread, send them now (once; Redis not reached, as
        a redis.ConnectionError, or the first error reply is raised, for the
        caller). Lost, like a result, past MAX_PENDING."""
        if self._thread is None:
            with self._lock:
                try:
                    if self._client is None:
                        self._client = self._new_client()
                    [(_, replies)] = send_batch(self._client, [(commands, None)], self.config)
                except UNANSWERED as exc:
                    self._client = None
                    if isinstance(exc, redis.RedisError):
                        raise
                    raise redis.ConnectionError(error_text(exc)) from exc
            if error := next((r for r in replies if isinstance(r, Exception)), None):
                raise error
            return
        self._queue((commands, None))

    def _queue(self, item: Pending) -> None:
        with self._wake:
            if len(self._pending) >= MAX_PENDING:
                lost, _ = self._pending.popleft()
                self.dropped += 1
                log_lost(lost, f"{MAX_PENDING} results waiting for Redis")
            self._pending.append(item)
            self._wake.notify()

    def _lost(self, item: Item, reason: str) -> None:
        """`item` given up (logged; a result is counted in `dropped`)."""
        if result_of(item) is not None:
            with self._wake:
                self.dropped += 1
        log_lost(item, reason)

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
            log_lost(item, "Redis unreachable at shutdown")
        lost = sum(result_of(item) is not None for item in left)
        with self._wake:
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
            try:
                self._send_batch(batch, backoff)
            except Exception:  # a bug here must not stop every later result
                event(log, "result_publisher_failed", logging.ERROR, exc_info=True)
                with self._wake:
                    self._wake.wait(backoff.failed())

    def _send_batch(self, batch: list[Pending], backoff: BackoffTracker) -> None:
        """One round of `_run`: `batch` sent and taken off the queue, or
        (Redis away) a wait before the next round."""
        rest: dict[int, Pending | None] = {}
        error, refused = self._send_all(batch, rest)
        for at, why in refused.items():
            self._lost(batch[at][0], why)
        if error is None:
            backoff.succeeded()
        with self._wake:
            # Off the front: what was sent (all, without an error), with
            # what is left of it put back; what submit() dropped meanwhile
            # already went from the front.
            again = []
            for at, item in enumerate(batch):
                if self._pending and self._pending[0] is item:
                    self._pending.popleft()
                    left = rest.get(at, item) if error is not None else None
                    if left is not None:
                        again.append(left)
            self._pending.extendleft(reversed(again))
        if error is None:
            return
        wait = backoff.failed()
        first = result_of(batch[0][0])
        event(
            log, "result_publish_failed", logging.WARNING, error=error,
            id=first.id if first is not None else None,
            waiting=len(self._pending), retry_in=round(wait, 2),
        )  # fmt: skip
        with self._wake:
            self._wake.wait(wait)
