"""The writer's queue (agents/redis_writer.py): producers' operations merged
into the current window, sealed into batches, held at most `max_queue_ops`
entries; and the round trip's share of it: the batches taken from its head,
and what the round trip settled put back or taken away."""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Sequence
from typing import Protocol

from agents.redis_send import BatchSender
from agents.store import INCR, Op
from agents.write_window import Batch, Window
from pcapd.core.logs import event

log = logging.getLogger("pcapd.agents.store")

# Script calls (of at most batch_ops entries each) sent per round trip to one
# server: Redis stays busy while the client packs and reads, and still runs
# other clients' commands between two calls.
PIPELINE_CALLS = 8


class OpSink(Protocol):
    """Where agents.store queues operations: the RedisWriter, or an OpBuffer."""

    def extend(self, keys: list[str], args: Sequence[Op]) -> None: ...


class OpBuffer:
    """Operations gathered by one capture loop without a lock, handed to the
    writer in one `extend` per batch of packets (`hand_off`): one lock per
    dispatch, not per response. Holds at most one batch's operations."""

    __slots__ = ("args", "keys", "writer")

    def __init__(self, writer: OpSink) -> None:
        self.writer = writer
        self.keys: list[str] = []
        self.args: list[Op] = []

    def extend(self, keys: list[str], args: Sequence[Op]) -> None:
        self.keys += keys
        self.args += args

    def hand_off(self) -> None:
        if self.keys:
            self.writer.extend(self.keys, self.args)
            self.keys, self.args = [], []


class WriteQueue(BatchSender):
    """The queue half of `agents.redis_writer.RedisWriter`, whose `__init__`
    sets these attributes."""

    _lock: threading.Lock
    # Notified (under the lock) whenever sent batches leave the queue.
    _drained: threading.Condition
    _window: Window
    _batches: collections.deque[Batch]
    _queued: int  # entries in _batches
    _wake_at: int
    _wake: threading.Event
    _in_flight: int
    _closed: bool

    # -- producers -------------------------------------------------------
    def incr(self, key: str, amount: int = INCR) -> None:
        self.extend([key], [amount])

    def append(self, key: str, member: str) -> None:
        if not member:
            raise ValueError("append needs a non-empty member")
        self.extend([key], [member])

    def extend(self, keys: list[str], args: Sequence[Op]) -> None:
        """Queue several operations under one lock: `args[i]` is an int to
        INCRBY or a member to append (non-empty: agents/store.py builds
        them). They are merged into the current window
        (agents/write_window.py); past the bound, the ones that would need a
        new entry are dropped and counted."""
        with self._lock:
            window = self._window
            at, n = 0, len(keys)
            while True:
                # The bound counts the window too, so what is held never passes
                # max_queue_ops entries, sealed or not.
                at, dropped = window.add(keys, args, at, self.max_queue_ops - self._queued)
                self.stats.dropped_ops += dropped
                if at == n:
                    break
                self._seal_locked()  # a key of both kinds: keep its order
            if window.held >= self._wake_at:
                self._wake.set()

    def _seal_locked(self) -> None:
        window = self._window
        if not window.held:
            return
        self.stats.queued_ops += window.ops
        self._queued += window.held
        self._batches.extend(window.seal(self.batch_ops))

    def flush(self) -> None:
        with self._lock:
            self._seal_locked()
        self._wake.set()

    def wait_for_room(self, ops: int, patience: float) -> bool:
        """Block until `ops` more operations fit in the queue: for a producer
        that can wait (a file read), where dropping would lose what waiting
        keeps. False once the queue has not shrunk for `patience` s (Redis
        down): the caller goes on, and what does not fit is dropped and
        counted as ever. Woken by the sender each time it drains."""
        ops = min(ops, self.max_queue_ops)
        with self._drained:
            last, since = self._depth_locked(), time.monotonic()
            while True:
                depth = self._depth_locked()
                if depth + ops <= self.max_queue_ops:
                    return True
                now = time.monotonic()
                if depth < last:
                    last, since = depth, now
                elif now - since >= patience:
                    return False
                self._wake.set()  # seal what is pending and send it now
                self._drained.wait(since + patience - now)

    def _depth_locked(self) -> int:
        return self._queued + self._window.held

    @property
    def queue_depth(self) -> int:
        """Entries held (merged operations), sealed or not."""
        with self._lock:
            return self._depth_locked()

    def stats_fields(self) -> dict[str, int]:
        """The writer's part of every agent's stats line."""
        s = self.stats
        return {
            "keys_queued": s.queued_ops,
            "keys_written": s.written_ops,
            "keys_dropped": s.dropped_ops,
            "redis_errors": s.redis_errors,
            "redis_not_now": s.redis_not_now,
            "expires_lost": s.expires_lost,
            "index_lost": s.index_lost,
            "queue_depth": self.queue_depth,
        }

    def _lost(self, ops: int, reason: str) -> None:
        if ops:
            self.stats.dropped_ops += ops
            event(log, "redis_writes_lost", logging.ERROR, ops=ops, reason=reason)

    def _take(self) -> list[Batch] | None:
        """The batches of the next round trip (at most PIPELINE_CALLS from
        the queue's head), entries that cannot be sent refused; None once
        stop() has closed the writer."""
        with self._lock:
            if self._closed:
                return None
            done = list(itertools.islice(self._batches, PIPELINE_CALLS))
            for at, batch in enumerate(done):
                sendable = self._sendable(batch)
                if sendable is not batch:
                    self._batches[at] = done[at] = sendable
                    self._queued -= len(batch.keys) - len(sendable.keys)
            self._in_flight = len(done)
            return done

    def _sendable(self, batch: Batch) -> Batch:
        """`batch` without the entries that are not valid text (a lone
        surrogate: no UTF-8 for it), refused and counted; the check costs a
        join when all is ASCII."""
        members = batch.args[batch.counters :] if batch.counters >= 0 else batch.args
        texts = [a for a in members if isinstance(a, str)]
        if "".join(batch.keys).isascii() and "".join(texts).isascii():
            return batch
        good: list[int] = []
        for i, (key, arg) in enumerate(zip(batch.keys, batch.args, strict=True)):
            try:
                key.encode()
                if isinstance(arg, str):
                    arg.encode()
            except UnicodeEncodeError as exc:
                self._refused("ENCODING", batch.weights[i], f"{key!r}: {exc}")
                continue
            good.append(i)
        return batch if len(good) == len(batch.keys) else batch.part(good)

    def _settled(self, done: list[Batch], left: list[Batch] | None, answered: bool) -> bool:
        """After a round trip, in one locked section (stop() cannot come in
        between): True (and `left`, what it did not write, counted as
        dropped) when stop() has closed the writer meanwhile, for the
        sender to leave; else, when `answered`, `done` leaves the queue and
        `left` takes its place at the head (a failed round trip keeps
        `done` there whole, to send again)."""
        with self._lock:
            self._in_flight = 0
            if not self._closed:
                if answered:
                    for sent in done:
                        self._batches.popleft()
                        self._queued -= len(sent.keys)
                    self._batches.extendleft(reversed(left or ()))
                    self._queued += sum(len(b.keys) for b in left or ())
                    self._drained.notify_all()
                return False
            self._batches.clear()
            self._queued = 0
        self._lost(sum(b.ops for b in left or ()), "stopped before Redis answered")
        return True
