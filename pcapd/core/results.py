"""Publishing result events: results channel, capped results stream, reply_to.

Each event the publisher is given gets its `event_id` (a uuid) before its
first send, and keeps it through every resend. A connection that breaks after
Redis ran a pipeline loses the reply, and the batch goes again: the stream
entry is added by a script only if the id's marker (SET NX, for `[redis]
results_dedup_window` s) was not there, so the stream holds it once; pub/sub
cannot be taken back, so a subscriber may get a message twice, with the same
`event_id` (pcapd's readers drop the second). redis-py's own retries are off
on the publisher's client: a resend is always this module's, seen and logged.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pcapd.core.backoff import Backoff
from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client, is_cluster, publish, same_slot_prefix

log = logging.getLogger("pcapd.core.results")

PUBLISH_ATTEMPTS = 3
MAX_PENDING = 10_000  # results held while Redis is away (~1 KB each)
SEND_BATCH = 200  # queued results sent in one pipeline: a flood's answers keep up

# Commands for the same pipeline, in order with the results (dedup marks):
# called with the pipeline (or, on a cluster, the client) to add them.
Commands = Callable[[Any], None]
_Pending = tuple[ResultEvent | Commands, str | None]

# XADD the event ARGV[3] (its id ARGV[1]) to the stream KEYS[1], capped at
# ~ARGV[2] entries, unless the id's marker KEYS[2] is there; the marker is
# set for ARGV[4] s once the entry is in (an XADD Redis refuses aborts the
# script before it, so a resend is not taken for done). 1 if added, 0 if it
# was already.
_ADD_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event_id', ARGV[1], 'event', ARGV[3])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
return 1
"""


def event_mark_key(stream: str, event_id: str) -> str:
    """The one spelling of a result's marker: in the stream's hash slot, so
    one script touches both on a cluster."""
    return f"{same_slot_prefix(stream)}:event:{event_id}"


def with_event_id(result: ResultEvent) -> ResultEvent:
    """`result` as one new event: a fresh id, whatever it carried (events are
    derived from others with `replace`, which would copy it)."""
    return replace(result, event_id=uuid.uuid4().hex)


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
        result = with_event_id(result)
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
                    self._client = self._new_client()
                # redis-py's cluster pipeline refuses PUBLISH: one command at
                # a time there (results are few; the single server keeps its pipeline).
                pipe = self._client if is_cluster(self._client) else self._client.pipeline(
                    transaction=False)  # fmt: skip
                sharded, stream = self.config.sharded_pubsub, self.config.results_stream
                for result, reply_to in batch:
                    if not isinstance(result, ResultEvent):
                        result(pipe)
                        continue
                    body, event_id = result.to_json(), result.event_id
                    assert event_id is not None, "given its id by publish() or submit()"
                    publish(pipe, self.config.results_channel, body, sharded=sharded)
                    if stream:
                        pipe.eval(
                            _ADD_ONCE, 2, stream, event_mark_key(stream, event_id), event_id,
                            self.config.results_stream_maxlen, body,
                            self.config.results_dedup_window,
                        )  # fmt: skip
                    if reply_to:
                        publish(pipe, reply_to, body, sharded=sharded)
                if isinstance(pipe, redis.client.Pipeline):
                    pipe.execute()
                return None
            except (redis.RedisError, OSError, AttributeError) as exc:
                self._client = None
                return str(exc) or type(exc).__name__

    def _new_client(self) -> Client:
        """A client with redis-py's own retries off (redis-py 8 resends a
        command up to 10 times, and Redis runs each copy): `_send_all`'s
        callers are the only resend, with the same event ids."""
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

    def submit(self, result: ResultEvent, reply_to: str | None = None) -> None:
        """Queue `result`; never blocks. Without a running thread, send now."""
        if self._thread is None:
            self.publish(result, reply_to)
            return
        self._queue((with_event_id(result), reply_to))

    def later(self, commands: Commands) -> None:
        """Queue `commands` behind the results queued so far; never blocks.
        Without a running thread, run them now (once; Redis errors are the
        caller's). Lost, like a result, past MAX_PENDING."""
        if self._thread is None:
            with self._lock:
                if self._client is None:
                    self._client = self._new_client()
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
