"""The batched writer every agent uses: INCR, INCRBY and append-if-absent
operations, merged per window (agents/write_window.py; `write_combining`
off: sent as queued), the counters sent as plain SET NX EX + INCRBY
commands (agents/redis_send.py) and the appends in script calls of at most
`batch_ops` entries (on a cluster, of one hash slot's entries each),
`PIPELINE_CALLS` batches per round trip.

The writer holds at most `max_queue_ops` entries (distinct INCR keys and
distinct (key, member) appends) between the agents and Redis (worst case
memory ~ max_queue_ops x (key + member + ~350) bytes: ~245 B an entry
beyond its text, measured, ~125 B more while a window is sealed); past
that, writes that would need a new entry are dropped and counted, never
blocking the producer, while a repeat still merges. Counts are per write, merged or not.
Beside the queue, while a follow-up round trip (agents/redis_follow_up.py) gets
no answer, it keeps at most `max_queue_ops` counter keys whose EXPIRE, as
many created keys whose index SADD and as many "0"s to take away
(`_zeroes`) are still to send: worst case ~ 3 x max_queue_ops x (key +
~100) bytes more (a dict entry and the key's string each); past that the
oldest are given up (counted; a "0" is left to its TTL). And it marks
queued entries' keys (strings shared with the queue): counters made at
"0" whose INCRBY is not heard yet (`_made`), append keys whose script
reply was lost (`_lost_replies`) and counters whose SET NX and INCRBY
replies both were (`_lost_counters`), each at most the queued entries: ~ 3
x max_queue_ops x ~100 bytes more.
An entry whose key or member is not valid UTF-8 text (a lone surrogate)
is refused and counted when it is sent, not retried.
While Redis is unreachable it retries the oldest batches with capped
backoff; on a cluster each primary that failed waits out its own backoff
(its slots' entries held at the queue's head, unsent; those for a
primary that does not answer at most HELD_SHARE of max_queue_ops while
another primary takes writes: past that given up, so they never crowd out
the others' writes), while the other primaries' slots are written on.
Delivery is at least once, not exactly once: redis-py's own retries are
off (`_client`), so each attempt sends each call once, but a call whose
reply was lost after Redis ran it (a timeout, a cut connection) is sent
again, and its INCRs count twice (appends are idempotent). On a cluster
only the slots that got no answer are sent again. What it writes,
and the script that appends, are spelled in agents/store.py; how one
round trip is sent and its replies counted, in agents/redis_send.py; the
queue and the round trip's share of it, in agents/write_queue.py; what a
round trip's outcome makes of readiness and backoff, in
agents/redis_readiness.py.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable

from prometheus_client import Histogram
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from agents.redis_readiness import Readiness
from agents.redis_replies import not_now
from agents.redis_send import WriterStats
from agents.write_window import Batch, Window
from agents.writer_settings import (
    DEFAULT_BATCH_OPS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_QUEUE_OPS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_TTL_GRACE,
    DEFAULT_WRITE_COMBINING,
    WriterSettings,
)
from pcapd.core.backoff import Backoff, BackoffTracker
from pcapd.core.logs import event
from pcapd.core.metrics import LATENCY_BUCKETS
from pcapd.core.redis_conn import SOCKET_TIMEOUT, Client, close_client
from pcapd.core.redis_errors import error_text

log = logging.getLogger("pcapd.agents.store")

# Socket reads one round trip can wait on in turn (the calls, SCRIPT LOAD,
# the calls again, the follow-up): stop() waits that many socket timeouts
# for a round trip under way, so its counts are in when it returns.
STOP_READS = 4


def make_writer(config: WriterSettings, connect: Callable[[], Client]) -> RedisWriter:
    """The agent's RedisWriter, built from its config."""
    return RedisWriter(
        connect,
        ttl=config.ttl_grace,
        max_queue_ops=config.max_queue_ops,
        batch_ops=config.batch_ops,
        flush_interval=config.flush_interval,
        index=config.client_index,
        combine=config.write_combining,
        ping_interval=config.ping_interval,
    )


class RedisWriter(Readiness):
    """Buffers INCR / append-if-absent operations and writes them in batches.

    Thread-safe producers call `incr` / `append`; a background thread sends.
    """

    def __init__(
        self,
        connect: Callable[[], Client],
        *,
        ttl: int = DEFAULT_TTL_GRACE,
        max_queue_ops: int = DEFAULT_MAX_QUEUE_OPS,
        batch_ops: int = DEFAULT_BATCH_OPS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        index: bool = False,
        combine: bool = DEFAULT_WRITE_COMBINING,
        ping_interval: float = DEFAULT_PING_INTERVAL,
    ) -> None:
        self._connect = connect
        self.combine = combine
        self.ping_interval = ping_interval
        self.index = index
        self.ttl = ttl
        self.max_queue_ops = max_queue_ops
        self.batch_ops = batch_ops
        self.flush_interval = flush_interval
        self.stats = WriterStats()
        # True while Redis answers: the last round trip (a batch and its
        # follow-up, or an idle PING) got a reply to every command, a "not
        # now" too; on a cluster, while some primary answered its last
        # contact (`heard_nodes`; `unanswered` names the slots of the others).
        self.connected = False
        self.failed_pings = 0  # idle PINGs unanswered (no write failed with them)
        # While Redis answers but takes no writes now (at maxmemory, a
        # replica, loading, a PING answered BUSY ...: the last round trip's
        # first "not now"), that error: readiness fails naming it. None
        # otherwise, and on a cluster (its readiness is per slot).
        self.not_now: str | None = None
        # Cluster only: the primaries (host:port) that answered the last
        # round trip that went to them, a "not now" too.
        self.heard_nodes: set[str] = set()
        self._backoff = Backoff()
        # One script call, sent to answered; registered by the agent's metrics, if on.
        self.write_seconds = Histogram(
            "pcapd_agent_redis_write_seconds", "Time of one batched write to Redis",
            buckets=LATENCY_BUCKETS, registry=None,
        )  # fmt: skip
        self._lock = threading.Lock()
        # Notified (under the lock) whenever sent batches leave the queue.
        self._drained = threading.Condition(self._lock)
        self._expires: dict[str, None] = {}
        self._indexes: dict[str, None] = {}
        self._zeroes: dict[str, float] = {}
        self._made: dict[str, float] = {}
        self._lost_replies: dict[str, None] = {}
        self._lost_counters: dict[str, int] = {}
        self._lost_logged: dict[str, float] = {}
        self._window = Window(combine)
        self._batches: collections.deque[Batch] = collections.deque()
        self._queued = 0  # entries in _batches
        # The window wakes the sender early once it holds this many entries.
        self._wake_at = max(1, max_queue_ops // 2)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Under the lock: batches at the queue's head the sender has in a
        # round trip; set by stop() once it has counted what is left (then
        # the sender counts what its round trip did not write, and leaves);
        # set by the sender as it leaves.
        self._in_flight = 0
        self._closed = False
        self._sender_done = False
        # s: the socket timeout of the sender's client (one read's longest wait)
        self._read_timeout = SOCKET_TIMEOUT
        # cause -> (when last logged, ops dropped since): the writer thread's own.
        self._drop_log: dict[str, tuple[float, int]] = {}
        self.access_refused: tuple[float, str] | None = None
        self._last_error: str | None = None  # a round trip's first error
        self._no_answer = False  # some command of that round trip got no answer
        self._heard_not_now = False  # and some got a "not now"
        self._round_tried: set[str] = set()
        self._round_heard: set[str] = set()
        self._round_failed: set[str] = set()
        self._left_slots: dict[int, str] = {}
        self._given_up, self._given_up_logged = 0, -math.inf
        self._given_up_from: set[str] = set()
        self._node_states: dict[str, bool | None] = {}
        # Cluster only (None otherwise): hash slot -> the primary owning it,
        # for each slot whose last write got no answer or a "not now", and
        # each slot of a primary whose last contact failed (a node down, a
        # failover); read by readiness while `connected` stays true.
        self.unanswered: dict[int, str] | None = None
        self._node_backoff: dict[str, tuple[BackoffTracker, float]] = {}
        self._redirected: dict[int, str] = {}
        self._silent: set[str] = set()
        self._round_silent: set[str] = set()
        self._pinging: set[str] = set()
        self._pinged: queue.SimpleQueue[tuple[str, object]] = queue.SimpleQueue()
        self._held: Batch | None = None
        self._held_until = -math.inf

    # -- sender ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` s), then stop. A round
        trip still under way then (Redis slower than `timeout`) is waited
        for, at most until its socket timeouts run out (STOP_READS of
        them): the sender counts what it did not write as dropped and ends,
        so the counts are final when stop() returns; no write is counted
        twice, and nothing is sent after that."""
        self.flush()
        deadline = time.monotonic() + timeout
        while self.queue_depth and time.monotonic() < deadline and self._thread:
            self._wake.set()
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        with self._lock:
            self._closed = True
            sending = self._thread is not None and not self._sender_done
            keep = self._in_flight if sending else 0
            left = sum(batch.ops for batch in itertools.islice(self._batches, keep, None))
            left += self._window.ops
            kept = list(itertools.islice(self._batches, keep))
            self._batches.clear()
            self._batches.extend(kept)
            self._window = Window(self.combine)
            self._queued = sum(len(batch.keys) for batch in kept)
            self._drained.notify_all()
        self._lost(left, "stopped before Redis took them")
        if not sending:
            self._finish()
        elif self._thread:  # its reply or its socket timeout ends it; then it counts
            self._thread.join(STOP_READS * self._read_timeout + 1.0)
            if self._thread.is_alive():
                event(log, "redis_writer_stop_timed_out", logging.ERROR,
                      waited=round(STOP_READS * self._read_timeout + 1.0, 2))  # fmt: skip

    def _finish(self) -> None:
        """Once the sender is done: what is still pending is given up, and
        what the rate limit held back is logged."""
        for pending, name in ((self._expires, "redis_expires_lost"),
                              (self._indexes, "redis_index_lost")):  # fmt: skip
            if not pending:
                continue
            if pending is self._expires:  # written, but their EXPIRE never answered
                self.stats.expires_lost += len(pending)
            else:  # created, but never added to their client's index
                self.stats.index_lost += len(pending)
            event(log, name, logging.ERROR, keys=len(pending),
                  reason="stopped before Redis answered")  # fmt: skip
            pending.clear()
        self._made.clear()  # their resend given up: a "0" left expires with its TTL
        self._lost_replies.clear()
        self._lost_counters.clear()
        for cause, (_, held) in self._drop_log.items():  # what the rate limit held back
            if held:
                self._log_refused(cause, held, "")
        self._drop_log.clear()
        if self._given_up:  # given up as held after the last line saying so
            self._log_given_up()

    def _run(self) -> None:
        try:
            self._send_all()
        finally:
            with self._lock:
                self._sender_done = True
                closed = self._closed
            if closed:  # stop() returned before this thread did
                self._finish()

    def _send_all(self) -> None:
        client: Client | None = None
        backoff = self._backoff.tracker()
        last_contact = -math.inf
        sealed = time.monotonic()
        try:
            while not self._stop.is_set():
                # A window lasts flush_interval, or as long as the last send took
                # when Redis is the slower side: then it merges more, on its own.
                wait = sealed + self.flush_interval - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                self._wake.clear()
                with self._lock:
                    self._seal_locked()
                sealed = time.monotonic()
                if isinstance(client, RedisCluster) and (self._silent or self._pinging):
                    self._tend_silent(client)
                idle = not self._batches
                # With a primary resting, what its follow-up left waits for the next PING.
                follow_up = self._follow_up_left and not self._node_backoff
                if idle and (follow_up or sealed - last_contact >= self.ping_interval):
                    pinged = self._ping(client, backoff)
                    if pinged is not client:
                        close_client(client)
                    client = pinged
                    last_contact = time.monotonic()
                while self._batches and not self._stop.is_set() and not self._resting_only():
                    done = self._take()
                    if done is None:
                        return
                    left: list[Batch] | None = None
                    try:
                        client = client or self._client()
                        began = time.monotonic()
                        if isinstance(client, RedisCluster):
                            # Per slot, calls are small already: one round trip
                            # per primary for all of `done`.
                            batch = Batch.joined(done)
                            left = self._capped(self._send_slots(client, batch))  # counts per slot
                        else:
                            left = self._send_plain(client, done)  # counts per call
                        self.write_seconds.observe(time.monotonic() - began)
                    except Exception as exc:  # nothing was sent (no connection): back off, retry
                        if self._settled(done, done, answered=False):
                            return
                        self._begin_round()
                        # Refused while connecting (NOPERM, a bad password): no
                        # write was answered, so no "not now"; LOADING, BUSY are.
                        self._note_error(exc, heard=not_now(exc))
                        self.heard_nodes.clear()
                        self._failed(backoff)
                        close_client(client)
                        client = None
                        continue
                    if self._settled(done, left, answered=True):
                        return
                    cluster = isinstance(client, RedisCluster)
                    if isinstance(client, RedisCluster):  # `left`: one batch, at the head now
                        self._nodes_settled(client, left[0] if left else None)
                    # Calls (only those go again: `left`) or their follow-up
                    # (kept for the next round trip) failed.
                    if self._last_error is not None:
                        self._failed(None if cluster else backoff)
                        continue
                    backoff.succeeded()
                    if not cluster:
                        self.connected, self.not_now = True, None
                    last_contact = time.monotonic()
        finally:
            close_client(client)  # its sockets now, not whenever the GC comes

    def _client(self) -> Client:
        """A new client with redis-py's own retries off (redis-py 8 resends a
        command up to 10 times on a timeout, and Redis runs each copy): the
        writer's backoff is the only retry, one call per attempt."""
        client = self._connect()
        client.set_retry(Retry(NoBackoff(), 0))
        kwargs = (client.nodes_manager if isinstance(client, RedisCluster)
                  else client.connection_pool).connection_kwargs  # fmt: skip
        self._read_timeout = float(kwargs.get("socket_timeout") or SOCKET_TIMEOUT)
        return client

    def _ping(self, client: Client | None, backoff: BackoffTracker) -> Client | None:
        """PING while idle (each primary of a cluster), and send the EXPIREs a
        failed round trip left; the client to use next (None after a
        failure, which waits out the backoff as a failed batch does). A
        PING answered BUSY or LOADING is Redis there, busy: `not_now`."""
        try:
            if client is None:
                client = self._client()
            if isinstance(client, RedisCluster):
                self._ping_primaries(client)
                return client
            client.ping()
        except Exception as exc:
            if not_now(exc):
                self.connected, self.not_now = True, error_text(exc)
            else:
                self._unreachable(exc)
                client = None
            self._stop.wait(backoff.failed())
            return client
        if self._follow_up_left and not self._send_expires(client):
            self._failed(backoff)
            return client if self.connected else None
        backoff.succeeded()
        self.connected, self.not_now = True, None
        return client


def dropped_status(writer: RedisWriter, agent: str) -> int:
    """Exit status for an agent that read a file, once `writer` has stopped: 1
    (and a line saying so) if keys never reached Redis, as the file is read
    once and they are lost."""
    if not writer.stats.dropped_ops:
        return 0
    event(log, "keys_dropped", logging.ERROR, agent=agent, keys=writer.stats.dropped_ops)
    return 1
