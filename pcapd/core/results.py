"""Publishing result events: results channel, capped results stream, reply_to.

Each event the publisher is given gets its `event_id` (a uuid) before its
first send, and keeps it through every resend. A connection that breaks after
Redis ran a pipeline loses the reply, and the batch goes again: the stream
entry is added by a script only if the id's marker (set once the entry is
in, for `[redis] results_dedup_window` s) was not there, so the stream holds
it once; pub/sub cannot be taken back, so a subscriber may get a message
twice, with the same `event_id` (pcapd's readers drop the second).
redis-py's own retries are off on the publisher's client: a resend is always
this module's, seen and logged. What Redis refuses for good (NOPERM,
WRONGTYPE: `redis_conn.refused_for_good`) is not resent: that event is logged
lost, the others go on. After a round Redis took in part (OOM or READONLY on
the stream's script, its PUBLISH through), only the rest goes again (`_Rest`).
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from pcapd.core.backoff import Backoff, BackoffTracker
from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.redis_conn import (
    Client,
    is_cluster,
    publish,
    refused_for_good,
    same_slot_prefix,
)

log = logging.getLogger("pcapd.core.results")

PUBLISH_ATTEMPTS = 4
# `publish`'s waits between attempts: ~1.5, 3, 6 s (half of each random), so
# a Redis restart of up to ~5 s costs no result (10.5 s at most in all).
PUBLISH_BACKOFF = Backoff(initial=1.5, maximum=6.0)
MAX_PENDING = 10_000  # results held while Redis is away (~1 KB each)
SEND_BATCH = 200  # queued results sent in one pipeline: a flood's answers keep up

# Commands for the same pipeline, in order with the results (dedup marks):
# called with the pipeline (or, on a cluster, the client) to add them.
Commands = Callable[[Any], None]
CHANNEL, STREAM, REPLY = "channel", "stream", "reply_to"  # a result's commands


@dataclass(frozen=True, slots=True)
class _Rest:
    """What of a result is left to send after a round Redis failed in part
    (its PUBLISH went, its stream script met OOM or READONLY): only that goes
    again, so a long OOM does not repeat the event on the channel each round."""

    result: ResultEvent
    parts: frozenset[str]  # of CHANNEL, STREAM, REPLY


_Item = ResultEvent | _Rest | Commands
_Pending = tuple[_Item, str | None]

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


class Sent(enum.Enum):
    """What became of a result `publish` was given. Truthy only when SENT."""

    SENT = "sent"
    REFUSED = "refused"  # refused for good: logged lost; a resend would be too
    UNREACHABLE = "unreachable"  # Redis away past the attempts: logged lost; try later

    def __bool__(self) -> bool:
        return self is Sent.SENT


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
        pending: _Pending = (result, reply_to)
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            rest: dict[int, _Pending | None] = {}
            error, refused = self._send_all([pending], rest)
            pending = rest.get(0) or pending
            if refused:
                _log_lost(result, f"refused by Redis: {refused[0]}")
                return Sent.REFUSED
            if error is None:
                return Sent.SENT
            wait = backoff.failed() if attempt < PUBLISH_ATTEMPTS else 0.0
            event(
                log, "result_publish_failed", logging.WARNING,
                id=result.id, attempt=attempt, error=error, retry_in=round(wait, 2),
            )  # fmt: skip
            time.sleep(wait)
        _log_lost(result, f"Redis unreachable after {PUBLISH_ATTEMPTS} attempts")
        return Sent.UNREACHABLE

    def _send_all(
        self, batch: list[_Pending], rest: dict[int, _Pending | None] | None = None
    ) -> tuple[str | None, dict[int, str]]:
        """Send `batch` in one pipeline: (the error, when Redis did not take
        it all and the batch must go again; None once it did) and, by
        position, the items whose commands Redis refused for good
        (`refused_for_good`): sent again they would be refused again, so they
        are not. After an error, `rest` (when given) says by position what
        needs no resend (None: sent, or refused) and what goes again in part
        (`_Rest`); an item it does not name goes again whole."""
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._new_client()
                # redis-py's cluster pipeline refuses PUBLISH: one command at
                # a time there (results are few; the single server keeps its pipeline).
                client = self._client
                cluster = is_cluster(client)
                if cluster:
                    outcomes = self._send_each(client, batch)
                else:
                    pipe = client.pipeline(transaction=False)
                    plan = []  # each item's commands in the pipeline, and what they are
                    for item, reply_to in batch:
                        start = len(pipe.command_stack)
                        parts = self._add(pipe, item, reply_to)
                        plan.append((start, len(pipe.command_stack), parts))
                    replies = pipe.execute(raise_on_error=False)
                    outcomes = [(parts, replies[start:end]) for start, end, parts in plan]
            except _TRANSIENT as exc:
                self._client = None
                return _describe(exc), {}
            refused, done, transient = _settle(batch, outcomes, cluster=cluster)
            if transient is None:
                return None, refused
            self._client = None  # reconnect: a failover may have moved the primary
            if rest is not None:
                rest.update(done)
            return _describe(transient), refused

    def _send_each(self, client: Any, batch: list[_Pending]) -> list[_Outcome]:
        """A cluster's way: one command at a time, each error reply noted and
        the item's other commands still sent; the items up to the first that
        met a transient reply (those after it go again whole). Other errors
        raise (all goes again)."""
        outcomes = []
        for item, reply_to in batch:
            noting = _Replies(client)
            outcomes.append((self._add(noting, item, reply_to), noting.replies))
            if any(
                isinstance(r, redis.ResponseError) and not refused_for_good(r, cluster=True)
                for r in noting.replies
            ):
                break
        return outcomes

    def _add(self, pipe: Any, item: _Item, reply_to: str | None) -> list[str] | None:
        """`item`'s commands onto `pipe` (a pipeline, or a cluster client):
        for a result, what each command is (CHANNEL, STREAM, REPLY)."""
        parts = item.parts if isinstance(item, _Rest) else None
        result = _result_of(item)
        if result is None:
            item(pipe)  # type: ignore[operator]  # not a result: commands
            return None
        sharded, stream = self.config.sharded_pubsub, self.config.results_stream
        if result.event_id is None:  # publish() and submit() give it; else its own, never shared
            result = with_event_id(result)
        body, event_id = result.to_json(), str(result.event_id)
        added = []
        if parts is None or CHANNEL in parts:
            publish(pipe, self.config.results_channel, body, sharded=sharded)
            added.append(CHANNEL)
        if stream and (parts is None or STREAM in parts):
            pipe.eval(
                _ADD_ONCE, 2, stream, event_mark_key(stream, event_id), event_id,
                self.config.results_stream_maxlen, body, self.config.results_dedup_window,
            )  # fmt: skip
            added.append(STREAM)
        if reply_to and (parts is None or REPLY in parts):
            publish(pipe, reply_to, body, sharded=sharded)
            added.append(REPLY)
        return added

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

    def submit(self, result: ResultEvent, reply_to: str | None = None) -> bool:
        """Queue `result` as a new event; never blocks. Without a running
        thread, send now. False (`result_lost` logged) once `stop` was called,
        or when sent now and Redis stayed unreachable: it will not be sent."""
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

    def _lost(self, item: _Item, reason: str) -> None:
        """`item` given up (logged; a result is counted in `dropped`)."""
        if _result_of(item) is not None:
            with self._wake:
                self.dropped += 1
        _log_lost(item, reason)

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
        lost = sum(_result_of(item) is not None for item in left)
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

    def _send_batch(self, batch: list[_Pending], backoff: BackoffTracker) -> None:
        """One round of `_run`: `batch` sent and taken off the queue, or
        (Redis away) a wait before the next round."""
        rest: dict[int, _Pending | None] = {}
        error, refused = self._send_all(batch, rest)
        for at, why in refused.items():
            self._lost(batch[at][0], f"refused by Redis: {why}")
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
        first = _result_of(batch[0][0])
        event(
            log, "result_publish_failed", logging.WARNING, error=error,
            id=first.id if first is not None else None,
            waiting=len(self._pending), retry_in=round(wait, 2),
        )  # fmt: skip
        with self._wake:
            self._wake.wait(wait)


class _Replies:
    """A cluster client whose commands run at once, each reply noted, an
    error reply too (returned instead of raised: the item's other commands
    still go)."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.replies: list[Any] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self._client, name)

        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                reply = method(*args, **kwargs)
            except redis.ResponseError as exc:
                reply = exc
            self.replies.append(reply)
            return reply

        return run


# An item's commands (what each is, for a result) and their replies, in order.
_Outcome = tuple[list[str] | None, list[Any]]


def _settle(
    batch: list[_Pending], outcomes: list[_Outcome], *, cluster: bool
) -> tuple[dict[int, str], dict[int, _Pending | None], redis.ResponseError | None]:
    """From each item's replies: (by position, the refused for good; what
    needs no resend (None) or only in part (`_Rest`); the first transient
    error reply). An item without an outcome goes again whole."""
    refused: dict[int, str] = {}
    done: dict[int, _Pending | None] = {}
    transient = None
    for at, (parts, mine) in enumerate(outcomes):
        errors = [r for r in mine if isinstance(r, redis.ResponseError)]
        firm = [e for e in errors if refused_for_good(e, cluster=cluster)]
        if firm:
            refused[at] = _describe(firm[0])
        if firm or not errors:
            done[at] = None
            continue
        transient = transient or errors[0]  # READONLY after a failover, BUSY, OOM
        result = _result_of(batch[at][0])
        if parts and result is not None:
            failed = frozenset(
                part for part, reply in zip(parts, mine, strict=True)
                if isinstance(reply, redis.ResponseError)
            )  # fmt: skip
            if failed != frozenset(parts):
                done[at] = (_Rest(result, failed), batch[at][1])
    return refused, done, transient


# What `_send_all` takes for Redis unreachable (all goes again): redis-py's
# errors, the socket's, a cluster's that are not RedisError (a slot no node
# serves), and redis-py 8's AttributeError inside connect().
_TRANSIENT = (redis.RedisError, RedisClusterException, OSError, AttributeError)


def _describe(exc: Exception) -> str:
    """The error as logged, with the code redis-py cut off its message (NOPERM)."""
    text = str(exc) or type(exc).__name__
    code = getattr(exc, "status_code", None)
    return f"{code} {text}" if isinstance(code, str) and not text.startswith(code) else text


def _result_of(item: _Item) -> ResultEvent | None:
    """The result `item` is (or is what is left of); None for commands."""
    if isinstance(item, _Rest):
        return item.result
    return item if isinstance(item, ResultEvent) else None


def _log_lost(item: _Item, reason: str) -> None:
    result = _result_of(item)
    if result is not None:
        event(
            log, "result_lost", logging.ERROR, id=result.id, result=result.to_json(), reason=reason
        )
    else:
        event(log, "redis_write_lost", logging.WARNING, what=repr(item), reason=reason)
