"""Ids seen recently: a request redelivered, or sent on two sources, runs once.

`RedisSeen` keeps them in Redis as well (`SET NX` with the window as expiry),
so they hold across restarts and for every process of a node; `RecentIds`
keeps them in memory, and is what `RedisSeen` falls back to while Redis is
away.

`RecentIds` remembers each id for `window_seconds` after it was first seen, and
at most `max_ids` ids at once: past that the oldest is forgotten early (and
counted in `evicted`), so a storm costs bounded memory, never the process.

Under a storm the Redis round trips are shared: claims made at once by many
capture threads go out in one pipeline (`pcapd.claim_batch`, one thread per set),
and `served` marks are queued with the result events (`later`).

Memory bound: `max_ids` entries of one id string each. Request ids are at most
128 ASCII characters (pcapd.core.request), HMAC signatures 64, so an entry costs
about 300 bytes in CPython (string, float, dict slot); the default 100,000
entries stay under ~30 MiB.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import redis

from pcapd.claim_batch import SERVED, Claim, ClaimBatcher
from pcapd.core.config import SecurityConfig
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client
from pcapd.core.result_send import Commands

log = logging.getLogger("pcapd.dedup")

DEFAULT_MAX_IDS = 100_000
REDIS_RETRY_AFTER = 5.0  # seconds of memory only after a Redis error, so no request waits on it
# s a claim waits for its batch's reply: beyond the dedup client's socket
# timeout, so its own error (then memory only) comes first.
CLAIM_WAIT = 5.0
MAX_CAUSES_LOGGED = 8  # distinct errors logged per outage; the rest are quiet


class SeenSet(Protocol):
    """What `signing.verify` needs: record-and-test, and the window."""

    @property
    def window(self) -> float: ...

    def seen(self, key: str) -> bool: ...


class SharedSeen(SeenSet, Protocol):
    """What the controller needs besides: the in-memory part alone (`here`),
    so a request refused anyway costs no Redis round trip; a claim in the
    shared part once it is admitted; and the end of the story."""

    @property
    def here(self) -> RecentIds: ...

    def claim(self, key: str) -> bool: ...

    def claim_soon(self, key: str) -> Ticket: ...

    def served(self, key: str) -> None: ...

    def forget(self, key: str) -> None: ...


class Ticket(Protocol):
    """A claim on its way (`claim_soon`): a capture runs meanwhile."""

    def taken_now(self) -> bool:
        """Answered already, and taken: whatever runs for it may stop."""
        ...

    def wait(self) -> bool:
        """The answer, as `claim` gives it."""
        ...

    def answered(self) -> bool:
        """`wait` would not wait."""
        ...


@dataclass(frozen=True, slots=True)
class Answered:
    """A ticket answered at once."""

    taken: bool

    def taken_now(self) -> bool:
        return self.taken

    def wait(self) -> bool:
        return self.taken

    def answered(self) -> bool:
        return True


class RecentIds:
    """Thread-safe: sources and workers of one daemon share one instance."""

    def __init__(
        self,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_ids: int = DEFAULT_MAX_IDS,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds={window_seconds}: must be positive")
        if max_ids < 1:
            raise ValueError(f"max_ids={max_ids}: must be at least 1")
        self.window = float(window_seconds)
        self.max_ids = max_ids
        self.evicted = 0  # forgotten before their window ended, to stay within max_ids
        self._clock = clock
        self._first_seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, request_id: str) -> bool:
        """Record `request_id`; True if it was already seen within the window.

        A repeat does not restart the window: it counts from the first sighting,
        so an id sent over and over is forgotten `window` after it first came.
        """
        with self._lock:
            now = self._clock()
            self._expire(now)
            if request_id in self._first_seen:
                return True
            self._first_seen[request_id] = now
            while len(self._first_seen) > self.max_ids:
                self._first_seen.popitem(last=False)
                self.evicted += 1
            return False

    @property
    def here(self) -> RecentIds:
        return self

    def claim(self, request_id: str) -> bool:
        """Nothing is shared beyond this process: never taken elsewhere."""
        return False

    def claim_soon(self, request_id: str) -> Ticket:
        return Answered(False)

    def served(self, request_id: str) -> None:
        """Nothing to do in memory: a process that dies forgets everything anyway."""

    def forget(self, request_id: str) -> None:
        """Drop `request_id`, so that a request that was not served can come again."""
        with self._lock:
            self._first_seen.pop(request_id, None)

    def __contains__(self, request_id: object) -> bool:
        """Seen within the window, without recording it (a peek)."""
        with self._lock:
            self._expire(self._clock())
            return request_id in self._first_seen

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._first_seen)

    def _expire(self, now: float) -> None:
        # Entries are in first-seen order, so expired ones are all at the front.
        cutoff = now - self.window
        while self._first_seen:
            oldest, when = next(iter(self._first_seen.items()))
            if when > cutoff:
                break
            del self._first_seen[oldest]


def seen_key(prefix: str, kind: str, node: str, value: str) -> str:
    """The one spelling of a dedup key: `<prefix><kind>:<node>:<value>`."""
    return f"{prefix}{kind}:{node}:{value}"


class RedisSeen:
    """Seen ids (or signatures) of one node, in Redis and in memory.

    Keyed by node: two nodes capturing one request is what a fleet request
    asks for; one node capturing it twice (a restart, two sources, two
    processes) is not. A key is set once (`NX`) with the window as expiry, so
    it expires by itself and a repeat does not extend it, as in `RecentIds`.

    Its value says how far the request got: this process's `instance` token
    while it is being served, then `served`. A request claimed by a process
    that died before serving it (killed mid-capture: the stream or SQS
    delivers it again) is taken over, not refused; one that was served is a
    duplicate (or a replay) for the rest of the window.

    Every value is recorded in memory too, and a value counts as seen if
    either says so: while Redis is away (an error, or within
    `REDIS_RETRY_AFTER` of one) the node keeps its in-memory window, saying so
    once in the log, and what it saw meanwhile stays a duplicate after Redis
    returns. What it does not know then is what it saw before a restart.
    Memory: as `RecentIds` (`max_ids`); Redis: one key per value, for `window`.
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str,
        kind: str,
        node: str,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_ids: int = DEFAULT_MAX_IDS,
        later: Callable[[Commands], None] | None = None,
    ) -> None:
        """`later`: queues a write for the results' pipeline (`ResultPublisher.later`)."""
        self.local = RecentIds(window_seconds, clock, max_ids)
        self.client = client
        self.prefix, self.kind, self.node = prefix, kind, node
        self._ttl = max(1, math.ceil(window_seconds))
        self.instance = uuid.uuid4().hex  # this process's claims
        self._batcher = ClaimBatcher(client, self.instance, self._ttl, f"dedup-{kind}")
        self._later = later
        self._clock = clock
        self._down_until: float | None = None  # set while Redis is taken as away
        self._causes: set[str] = set()  # errors logged in this outage
        self._lock = threading.Lock()

    @property
    def window(self) -> float:
        return self.local.window

    @property
    def here(self) -> RecentIds:
        return self.local

    def seen(self, key: str) -> bool:
        """Record `key` in memory and claim it in Redis; True if either had it."""
        here = self.local.seen(key)
        return self.claim(key) or here

    def claim(self, key: str) -> bool:
        """Claim `key` in Redis for this process; True if it was served, or is
        being served by this process, already. False while Redis is away.
        Sent from this thread: it waits for the answer anyway."""
        if not self._try_redis():
            return False
        try:
            taken = self._batcher.now(self._key(key))
        except redis.RedisError as exc:
            self._lost(exc)
            return False
        self._back()
        return taken

    def claim_soon(self, key: str) -> Ticket:
        """`claim`, answered later: sent with the other threads' claims."""
        if not self._try_redis():
            return Answered(False)
        return _RedisTicket(self, self._batcher.send(self._key(key)))

    def _answer(self, item: Claim) -> bool:
        """`item`'s answer, waited for; False (memory only) if Redis failed."""
        if not item.done.wait(CLAIM_WAIT):
            self._lost(TimeoutError(f"no answer from Redis to a claim within {CLAIM_WAIT} s"))
            return False
        if item.error is not None:
            self._lost(item.error)
            return False
        if item.batch_error is None:  # a failed claim of its batch wins: not back yet
            self._back()
        return item.taken

    def served(self, key: str) -> None:
        """The request was served (stored, or reported): a duplicate from now on,
        whichever process of this node sees it next. Queued with the results
        when `later` was given (this thread does not wait for Redis)."""
        if not self._try_redis():
            return
        key = self._key(key)
        try:
            if self._later is not None:  # a claim becomes `served`, keeping its expiry
                self._later(Commands(((key, ("SET", key, SERVED, "XX", "KEEPTTL")),)))
                return
            self.client.set(key, SERVED, xx=True, keepttl=True)
        except (redis.RedisError, OSError) as exc:
            self._lost(exc)
            return
        self._back()

    def forget(self, key: str) -> None:
        self.local.forget(key)
        if not self._try_redis():
            return
        try:
            self.client.delete(self._key(key))
        except redis.RedisError as exc:
            self._lost(exc)
            return
        self._back()

    def _key(self, value: str) -> str:
        return seen_key(self.prefix, self.kind, self.node, value)

    def _try_redis(self) -> bool:
        with self._lock:
            return self._down_until is None or self._clock() >= self._down_until

    def _lost(self, exc: Exception) -> None:
        """Memory only for REDIS_RETRY_AFTER s; logged once per outage and
        cause (a primary that stays away fails every batch, each time)."""
        cause = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self._down_until = self._clock() + REDIS_RETRY_AFTER
            new = cause not in self._causes and len(self._causes) < MAX_CAUSES_LOGGED
            if new:
                self._causes.add(cause)
        if new:
            event(
                log, "dedup_redis_unavailable", logging.WARNING, kind=self.kind,
                error=str(exc), fallback=f"memory only, window {self.window:.0f} s",
            )  # fmt: skip

    def _back(self) -> None:
        with self._lock:
            was_down = self._down_until is not None
            self._down_until = None
            self._causes.clear()
        if was_down:
            event(log, "dedup_redis_back", kind=self.kind)


@dataclass(frozen=True, slots=True)
class _RedisTicket:
    seen: RedisSeen
    item: Claim

    def taken_now(self) -> bool:
        item = self.item
        return item.done.is_set() and item.error is None and item.taken

    def wait(self) -> bool:
        return self.seen._answer(self.item)

    def answered(self) -> bool:
        return self.item.done.is_set()


def seen_ids_and_sigs(
    security: SecurityConfig,
    node: str,
    client: Client | None,
    later: Callable[[Commands], None] | None = None,
) -> tuple[SharedSeen, SharedSeen]:
    """The controller's two sets: request ids for `dedup_window`, signatures
    for at least 2 x `max_skew` (a ts that far ahead is accepted, so a
    signature stays replayable that long). In Redis when `client` is given,
    so they hold across restarts; in memory only otherwise. `later` queues
    the `served` marks with the results (`ResultPublisher.later`)."""
    windows = {"id": security.dedup_window,
               "sig": max(security.dedup_window, 2 * security.max_skew)}  # fmt: skip

    def one(kind: str) -> SharedSeen:
        if client is None:
            return RecentIds(windows[kind])
        return RedisSeen(
            client, prefix=security.dedup_prefix, kind=kind, node=node,
            window_seconds=windows[kind], later=later,
        )  # fmt: skip

    return one("id"), one("sig")
