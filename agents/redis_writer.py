"""The batched writer every agent uses: INCR, INCRBY and append-if-absent
operations, queued in bounded batches and sent as one script call each.

The writer holds at most `max_queue_ops` operations between the agents and
Redis (worst case memory ~ max_queue_ops x (key + member) bytes); past that
new operations are dropped and counted, never blocking the producer. While
Redis is unreachable it retries the oldest batch with capped backoff. What it
writes, and the script that writes it, are spelled in agents/store.py.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from prometheus_client import Histogram
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from agents.store import BATCH_SCRIPT, INCR, INCRBY, index_commands
from pcapd.core.backoff import Backoff, BackoffTracker
from pcapd.core.logs import event
from pcapd.core.metrics import LATENCY_BUCKETS
from pcapd.core.redis_conn import Client, group_by_slot, is_cluster, send_by_slot

log = logging.getLogger("pcapd.agents.store")

# Each agent's config reads these with the bounds beside them.
DEFAULT_TTL_GRACE = 900
MAX_TTL_GRACE = 2**31 - 1  # Redis EXPIRE seconds
DEFAULT_MAX_QUEUE_OPS = 200_000
MAX_QUEUE_OPS = 100_000_000
DEFAULT_BATCH_OPS = 1_000
MAX_BATCH_OPS = 100_000
DEFAULT_FLUSH_INTERVAL = 0.05
MIN_FLUSH_INTERVAL = 0.001
MAX_FLUSH_INTERVAL = 10.0
ROOM_POLL = 0.002  # s between looks at the queue in wait_for_room
DROP_LOG_INTERVAL = 10.0  # s; each cause of dropped writes is logged at most this often
# s: an idle writer PINGs Redis this often, so `connected` (readiness) stays true
PING_INTERVAL = 5.0

# Cluster replies that say "not now" rather than "no": sent again after backoff.
_TRANSIENT = (
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN: a primary is away
    redis.exceptions.TryAgainError,  # a slot migrating
    redis.exceptions.AskError,  # and MOVED, once redis-py's own redirections ran out
)


@dataclass(slots=True)
class WriterStats:
    queued_ops: int = 0
    written_ops: int = 0
    # Never written: queue full, still queued when the writer stopped, or
    # refused by Redis (the agents' keys_dropped).
    dropped_ops: int = 0
    rejected_ops: int = 0  # of dropped_ops, refused by Redis (WRONGTYPE, READONLY, NOPERM, ...)
    redis_errors: int = 0


class RedisWriter:
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
    ) -> None:
        self._connect = connect
        self.index = index
        self.ttl = ttl
        self.max_queue_ops = max_queue_ops
        self.batch_ops = batch_ops
        self.flush_interval = flush_interval
        self.stats = WriterStats()
        # True while the last round trip to Redis (a batch or an idle PING) worked.
        self.connected = False
        # One script call, sent to answered; registered by the agent's metrics, if on.
        self.write_seconds = Histogram(
            "pcapd_agent_redis_write_seconds", "Time of one batched write to Redis",
            buckets=LATENCY_BUCKETS, registry=None,
        )  # fmt: skip
        self._lock = threading.Lock()
        self._pending_keys: list[str] = []
        self._pending_args: list[str] = []
        self._batches: collections.deque[tuple[list[str], list[str]]] = collections.deque()
        self._queued = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # cause -> (when last logged, ops dropped since): the writer thread's own.
        self._drop_log: dict[str, tuple[float, int]] = {}
        self._last_error = ""  # why a cluster slot's write was not answered
        # Cluster only (None otherwise): hash slot -> the primary owning it now,
        # for each slot whose last write got no answer (a node down, a
        # failover); read by readiness while `connected` stays true.
        self.unanswered: dict[int, str] | None = None

    # -- producers -------------------------------------------------------
    def incr(self, key: str, amount: int = 1) -> None:
        self._add(key, INCR if amount == 1 else f"{INCRBY}{amount}")

    def append(self, key: str, member: str) -> None:
        if not member or member[0] == INCRBY:
            raise ValueError("append needs a non-empty member not starting with NUL")
        self._add(key, member)

    def extend(self, keys: list[str], args: list[str]) -> None:
        """Queue several operations under one lock: `args[i]` is `INCR`, `INCRBY`
        + a number, or a member to append (non-empty, not starting with NUL;
        not checked here: agents/store.py builds them). Past the bound the
        ones that do not fit are dropped and counted, as `_add` drops them."""
        with self._lock:
            room = self.max_queue_ops - self._queued - len(self._pending_keys)
            if room < len(keys):
                self.stats.dropped_ops += len(keys) - max(room, 0)
                if room <= 0:
                    return
                keys, args = keys[:room], args[:room]
            self._pending_keys += keys
            self._pending_args += args
            if len(self._pending_keys) >= self.batch_ops:
                self._seal_locked()

    def _add(self, key: str, arg: str) -> None:
        with self._lock:
            # The bound counts the batch being filled too, so what is held never
            # passes max_queue_ops, sealed or not.
            if self._queued + len(self._pending_keys) >= self.max_queue_ops:
                self.stats.dropped_ops += 1
                return
            self._pending_keys.append(key)
            self._pending_args.append(arg)
            if len(self._pending_keys) >= self.batch_ops:
                self._seal_locked()

    def _seal_locked(self) -> None:
        keys, args = self._pending_keys, self._pending_args
        if not keys:
            return
        self._pending_keys, self._pending_args = [], []
        if self._queued + len(keys) > self.max_queue_ops:
            self.stats.dropped_ops += len(keys)
            return
        self._batches.append((keys, args))
        self._queued += len(keys)
        self.stats.queued_ops += len(keys)
        self._wake.set()

    def flush(self) -> None:
        with self._lock:
            self._seal_locked()

    def wait_for_room(self, ops: int, patience: float) -> bool:
        """Block until `ops` more operations fit in the queue: for a producer
        that can wait (a file read), where dropping would lose what waiting
        keeps. False once the queue has not shrunk for `patience` s (Redis
        down): the caller goes on, and what does not fit is dropped and
        counted as ever."""
        ops = min(ops, self.max_queue_ops)
        last, since = self.queue_depth, time.monotonic()
        while True:
            depth = self.queue_depth
            if depth + ops <= self.max_queue_ops:
                return True
            now = time.monotonic()
            if depth < last:
                last, since = depth, now
            elif now - since >= patience:
                return False
            self._wake.set()  # seal what is pending and send it now
            time.sleep(ROOM_POLL)

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return self._queued + len(self._pending_keys)

    # -- sender ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` s), then stop."""
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
            left = self._queued + len(self._pending_keys)
            self._batches.clear()
            self._pending_keys, self._pending_args = [], []
            self._queued = 0
        if left:
            self.stats.dropped_ops += left
            event(
                log, "redis_writes_lost", logging.ERROR, ops=left,
                reason="stopped before Redis took them",
            )  # fmt: skip
        for cause, (_, held) in self._drop_log.items():  # what the rate limit held back
            if held:
                self._log_refused(cause, held, "")
        self._drop_log.clear()

    def _refused(self, cause: str, ops: int, error: str) -> None:
        """Count `ops` writes Redis refused; log each cause (the error's code,
        e.g. WRONGTYPE, READONLY, NOPERM, CROSSSLOT) once per DROP_LOG_INTERVAL,
        with the ops refused since the last line."""
        self.stats.rejected_ops += ops
        self.stats.dropped_ops += ops
        now = time.monotonic()
        last, held = self._drop_log.get(cause, (-math.inf, 0))
        if now - last >= DROP_LOG_INTERVAL:
            self._log_refused(cause, held + ops, error)
            self._drop_log[cause] = (now, 0)
        else:
            self._drop_log[cause] = (last, held + ops)

    def _log_refused(self, cause: str, ops: int, error: str) -> None:
        event(
            log, "redis_writes_refused", logging.ERROR, cause=cause, ops=ops, error=error,
            dropped_total=self.stats.dropped_ops,
        )  # fmt: skip

    def _run(self) -> None:
        client: Client | None = None
        script = None
        backoff = Backoff().tracker()
        last_contact = -math.inf
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()
            if not self._batches and time.monotonic() - last_contact >= PING_INTERVAL:
                client = self._ping(client, backoff)
                last_contact = time.monotonic()
            while self._batches and not self._stop.is_set():
                keys, args = self._batches[0]
                left: tuple[list[str], list[str]] | None = None
                try:
                    if client is None or script is None:
                        client = client or self._connect()
                        script = client.register_script(BATCH_SCRIPT)
                    assert script is not None
                    began = time.monotonic()
                    if is_cluster(client):
                        left = self._send_slots(client, script.sha, keys, args)
                        rejected = -1  # counted per slot group
                    else:
                        rejected, first = script(keys=keys, args=[self.ttl, int(self.index), *args])
                        rejected = int(rejected)
                    self.write_seconds.observe(time.monotonic() - began)
                except redis.ResponseError as exc:
                    # Redis answered and refused the whole batch (a read-only
                    # replica, an ACL): retrying would only wedge the queue
                    # behind it.
                    self._refused(_cause(str(exc), exc), len(keys), str(exc))
                    rejected = -1
                except Exception as exc:  # connection trouble, or a bug: back off, retry
                    self.stats.redis_errors += 1
                    self.connected = False
                    wait = backoff.failed()
                    event(
                        log, "redis_write_failed", logging.WARNING, error=str(exc),
                        queued_ops=self.queue_depth, retry_in=round(wait, 2),
                    )  # fmt: skip
                    client = None
                    self._stop.wait(wait)
                    continue
                if left is not None:  # some slots' nodes did not answer: only those again
                    with self._lock:
                        self._batches[0] = left
                        self._queued -= len(keys) - len(left[0])
                    self.stats.redis_errors += 1
                    wait = backoff.failed()
                    event(
                        log, "redis_write_failed", logging.WARNING, error=self._last_error,
                        queued_ops=self.queue_depth, retry_in=round(wait, 2),
                    )  # fmt: skip
                    self._stop.wait(wait)
                    continue
                backoff.succeeded()
                self.connected = True
                last_contact = time.monotonic()
                with self._lock:
                    self._batches.popleft()
                    self._queued -= len(keys)
                if rejected > 0:
                    self._refused(_cause(_text(first)), rejected, _text(first))
                if rejected >= 0:
                    self.stats.written_ops += len(keys) - rejected

    def _ping(self, client: Client | None, backoff: BackoffTracker) -> Client | None:
        """PING while idle; the client to use next (None after a failure, which
        waits out the backoff as a failed batch does)."""
        try:
            if client is None:
                client = self._connect()
            client.ping()
        except Exception as exc:
            if self.connected:
                event(log, "redis_unreachable", logging.WARNING, error=str(exc))
            self.connected = False
            self._stop.wait(backoff.failed())
            return None
        backoff.succeeded()
        self.connected = True
        return client

    def _send_slots(
        self, client: RedisCluster, sha: str, keys: list[str], args: list[str]
    ) -> tuple[list[str], list[str]] | None:
        """One script call per hash slot, pipelined per node
        (`redis_conn.send_by_slot`, which follows MOVED and ASK); counts what
        each slot wrote or refused. Returns the operations of the slots that
        got no answer (node down, failover), to be sent again, or None when
        every slot answered."""
        slots = group_by_slot(keys, args)
        mode = 2 if self.index else 0
        retry_keys: list[str] = []
        retry_args: list[str] = []
        created: list[str] = []
        unanswered: dict[int, str] = {}
        for attempt in range(2):  # a second only to load the script where it is missing
            commands = [
                (slot, ("EVALSHA", sha, len(group[0]), *group[0], self.ttl, mode, *group[1]))
                for slot, group in slots.items()
            ]
            missing: dict[int, tuple[list[str], list[str]]] = {}
            for (slot, group), reply in zip(
                slots.items(), send_by_slot(client, commands), strict=True
            ):
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 0:
                    missing[slot] = group
                elif isinstance(reply, redis.ResponseError) and not isinstance(reply, _TRANSIENT):
                    self._refused(_cause(str(reply), reply), len(group[0]), str(reply))
                elif isinstance(reply, Exception):
                    self._last_error = str(reply) or type(reply).__name__
                    unanswered[slot] = _owner(client, slot)
                    retry_keys.extend(group[0])
                    retry_args.extend(group[1])
                else:
                    refused = int(reply[0])
                    if refused:
                        self._refused(_cause(_text(reply[1])), refused, _text(reply[1]))
                    self.stats.written_ops += len(group[0]) - refused
                    created.extend(_text(k) for k in reply[2:])
            if not missing:
                break
            client.script_load(BATCH_SCRIPT)  # every primary: one restarted without it
            slots = missing
        self.unanswered = unanswered
        if created:
            self._index(client, created)
        return (retry_keys, retry_args) if retry_keys else None

    def _index(self, client: RedisCluster, created: list[str]) -> None:
        """SADD new keys to their clients' index sets (best effort: the index
        only speeds the correlator up, which falls back to SCAN without it)."""
        commands = [(key_slot(index.encode()), command)
                    for index, command in index_commands(created, self.ttl)]  # fmt: skip
        send_by_slot(client, commands)


def dropped_status(writer: RedisWriter, agent: str) -> int:
    """Exit status for an agent that read a file, once `writer` has stopped: 1
    (and a line saying so) if keys never reached Redis, as the file is read
    once and they are lost."""
    if not writer.stats.dropped_ops:
        return 0
    event(log, "keys_dropped", logging.ERROR, agent=agent, keys=writer.stats.dropped_ops)
    return 1


def _owner(client: RedisCluster, slot: int) -> str:
    """The primary the slot map names for `slot` now (refreshed after a failure)."""
    try:
        return str(client.nodes_manager.get_node_from_slot(slot).name)
    except (redis.RedisError, RedisClusterException):
        return "no primary known"


def _cause(error: str, exc: Exception | None = None) -> str:
    """A Redis error's code, its first word (`WRONGTYPE Operation against...`),
    or redis-py's class for it where redis-py cut the code off (NOPERM)."""
    code = error.split(" ", 1)[0]
    if code.isalpha() and code.isupper():
        return code
    return type(exc).__name__ if exc is not None else "unknown"


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
