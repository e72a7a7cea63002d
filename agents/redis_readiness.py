"""What a round trip's outcome makes of the agents' writer: its readiness
(`connected`, `not_now`, on a cluster `heard_nodes` and `unanswered`), the
counts and line of a failed round trip, and its backoff: one server's as a
whole, a cluster's per primary (a failed primary rests alone, its slots'
entries held at the queue's head, while the others' are written on). The
readiness half of `agents.redis_writer.RedisWriter`, which sets these
attributes and runs the round trips.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import time
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS as SLOTS
from redis.exceptions import RedisClusterException

from agents.redis_follow_up import DROP_LOG_INTERVAL
from agents.redis_replies import answered
from agents.write_queue import WriteQueue
from agents.write_window import Batch
from pcapd.core.backoff import Backoff, BackoffTracker
from pcapd.core.logs import event
from pcapd.core.redis_conn import connecting
from pcapd.core.redis_slots import (
    NO_PRIMARY,
    group_by_slot,
    ping_alone,
    ping_primaries,
    slot_owners,
)

log = logging.getLogger("pcapd.agents.store")

# On a cluster, the share of max_queue_ops that what waits for primaries not
# answering may hold while others answer: past it the rest are given up,
# so a dead primary's slots never fill the queue and stop the others' writes.
HELD_SHARE = 0.5


class Readiness(WriteQueue):
    """The readiness half of `agents.redis_writer.RedisWriter` (see there
    what each attribute means)."""

    connected: bool
    failed_pings: int
    not_now: str | None
    heard_nodes: set[str]
    _backoff: Backoff
    _stop: threading.Event
    # Cluster only: what the last round trip left to send again (its
    # primaries resting), and when the first of those may be tried.
    _held: Batch | None
    _held_until: float
    # Cluster only: each primary's last word on writes (`_write_states`).
    _node_states: dict[str, bool | None]
    # Writes given up as held past HELD_SHARE since the last line saying so,
    # and the primaries they waited for.
    _given_up: int
    _given_up_logged: float
    _given_up_from: set[str]
    _wake: threading.Event
    # Silent primaries PINGed now, each on a thread of its own, and the
    # answers those threads leave (`_tend_silent`).
    _pinging: set[str]
    _pinged: queue.SimpleQueue[tuple[str, object]]

    def _failed(self, backoff: BackoffTracker | None) -> None:
        """A round trip that left something to send again (calls, their
        follow-up, or an idle one's follow-up): one count in `redis_errors`
        (and in `redis_not_now` if Redis answered some of it "not now") and
        one line naming its first error, however much of it failed. With
        `backoff` (one server, or no connection to be had), readiness set
        from it (`_heard`), then the backoff waited out; on a cluster
        (None), `_nodes_settled` set readiness and each primary that failed
        rests alone, the others' slots sent on. Counted after readiness is
        set: a reader who sees the count sees the readiness that goes with it."""
        if backoff is not None:
            self._heard()
            wait = backoff.failed()
        else:  # until the first primary that failed may be tried again
            rests = self._node_backoff
            wait = min((rests[n][1] for n in self._round_failed if n in rests), default=0.0)
            wait = max(0.0, wait - time.monotonic())
        self.stats.redis_not_now += self._heard_not_now
        self.stats.redis_errors += 1
        event(
            log, "redis_write_failed", logging.WARNING, error=self._last_error,
            queued_ops=self.queue_depth, retry_in=round(wait, 2),
        )  # fmt: skip
        if backoff is not None:
            self._stop.wait(wait)

    def _heard(self) -> None:
        """After a failed round trip on one server: `connected` while Redis
        answered every command of it, and `not_now` its first error then (a
        "not now")."""
        self.connected = not self._no_answer
        self.not_now = None if self._no_answer else self._last_error

    def _nodes_settled(self, client: RedisCluster, left: Batch | None) -> None:
        """After a round trip on a cluster: `heard_nodes` from the primaries
        it went to (the others keep what they last said), `connected` while
        one answered (its slots still take writes; readiness names the
        others) and not once none did; each primary that failed rests its
        own backoff, one that answered whole no more; `unanswered` the slots
        of `left` and every slot of a primary resting; `left` is held until
        the first of its primaries may be tried."""
        now = time.monotonic()
        self.heard_nodes = (self.heard_nodes - self._round_tried) | self._round_heard
        self._node_states = self._write_states()
        rests = self._node_backoff
        for node in self._round_tried:
            if node in self._round_failed:
                tracker = rests[node][0] if node in rests else self._backoff.tracker()
                rests[node] = (tracker, now + tracker.failed())
                if node in self._round_silent:
                    self._silent.add(node)
            else:
                rests.pop(node, None)
        owners = slot_owners(client)
        primaries = set(owners.values())
        if len(owners) == SLOTS:  # every slot has a primary again
            rests.pop(NO_PRIMARY, None)
        for node in [n for n in rests if n not in primaries and n != NO_PRIMARY]:
            del rests[node]  # no primary now (a failover): nothing waits for it
        self._silent &= primaries
        self._redirected = {s: n for s, n in self._redirected.items() if n in primaries}
        routes = self._routed(owners)
        for node in [n for n in self._node_states if n not in primaries]:
            del self._node_states[node]
        # A new dict, whole at once: readiness reads it from another thread.
        self.unanswered = self._left_slots | {s: n for s, n in routes.items() if n in rests}
        self.connected, self.not_now = bool(self.heard_nodes), None
        self._held = left
        held = set(self._left_slots.values()) if left else set()  # `left`'s primaries
        self._held_until = min((self._rest_end(n) for n in held if n in rests), default=-math.inf)

    def _replaced(self, client: RedisCluster, node: str) -> bool:
        """After a PING `node` did not answer: the slot map read again (from
        the other nodes first), and whether `node` owns no slot in it now (a
        replica took over): then its held writes go to their new owners. A
        silent primary is sent no writes, so nothing else would read the map."""
        with contextlib.suppress(redis.RedisError, RedisClusterException), connecting():
            client.nodes_manager.initialize(last_failed_node_name=node)
        if node in slot_owners(client).values():
            return False
        self._no_longer_silent(node)
        return True

    def _no_longer_silent(self, node: str) -> None:
        """`node` waits for no PING: what it held is sent (to its slots'
        owners now) in the next round trip."""
        self._silent.discard(node)
        self._node_backoff.pop(node, None)
        self._held_until = -math.inf

    def _rest_end(self, node: str) -> float:
        """When resting `node` may be sent writes: never while it is silent
        (its PING's answer sends what it holds)."""
        return math.inf if node in self._silent else self._node_backoff[node][1]

    def _tend_silent(self, client: RedisCluster) -> None:
        """The answers of the PINGs sent to silent primaries taken, and each
        silent primary whose rest is over PINGed on a thread of its own: one
        that answers (PONG, or a "not now": it is there) may be sent writes
        again, one still silent rests again. So a primary that accepts and
        never answers costs the others' round trips its first socket timeout
        alone, not one per retry."""
        now = time.monotonic()
        rests = self._node_backoff
        while not self._pinged.empty():
            node, reply = self._pinged.get()
            self._pinging.discard(node)
            if node not in self._silent:
                continue
            tracker = rests[node][0] if node in rests else self._backoff.tracker()
            if answered(reply):
                self._no_longer_silent(node)
                rests[node] = (tracker, now)  # the answer to its writes ends the rest
                event(log, "redis_primary_answers", node=node)
            elif self._replaced(client, node):
                event(log, "redis_primary_replaced", logging.WARNING, node=node)
            else:
                wait = tracker.failed()
                rests[node] = (tracker, now + wait)
                self.stats.redis_errors += 1
                event(
                    log, "redis_probe_failed", logging.WARNING, node=node, error=str(reply),
                    retry_in=round(wait, 2),
                )  # fmt: skip
        for node in self._silent - self._pinging:
            if node in rests and rests[node][1] > now:
                continue
            found = client.get_node(node_name=node)  # type: ignore[no-untyped-call]
            if found is None:  # gone from the slot map: nothing waits for it
                self._no_longer_silent(node)
                continue
            pool = client.get_redis_connection(found).connection_pool
            self._pinging.add(node)
            threading.Thread(
                target=self._ping_silent, args=(node, pool), name=f"redis-ping-{node}",
                daemon=True,
            ).start()  # fmt: skip

    def _ping_silent(self, node: str, pool: Any) -> None:
        """On its own thread: `node`'s PING answer (`ping_alone`) left for
        `_tend_silent`, and the writer woken. It touches nothing else."""
        self._pinged.put((node, ping_alone(pool)))
        self._wake.set()

    def _write_states(self) -> dict[str, bool | None]:
        """Each primary's last word on writes, this round trip's over the
        earlier ones': True it took them, False it answered "not now"
        (CLUSTERDOWN, TRYAGAIN, LOADING ...), None it did not answer."""
        states = dict(self._node_states)
        for node in self._round_tried:
            states[node] = node not in self._round_failed if node in self._round_heard else None
        return states

    def _capped(self, left: list[Batch] | None) -> list[Batch] | None:
        """`left` (a cluster round trip's: one batch, the entries it could
        not write) with what waits for primaries that did not answer (down,
        silent) or have none within HELD_SHARE of the queue while some
        primary takes writes: past that, those entries are given up, the
        first ones first, counted and logged. What a primary answered "not
        now" is kept, and is no part of the share: it goes once the cluster
        settles, and a cluster that refuses every slot (CLUSTERDOWN) takes
        no writes, so nothing is given up for it."""
        if not left:
            return left
        [batch] = left
        cap = int(self.max_queue_ops * HELD_SHARE)
        if len(batch.keys) <= cap:
            return left
        states = self._write_states()
        owners = self._left_slots
        silent = {node for node in set(owners.values()) if states.get(node) is None}
        if not silent or True not in states.values():
            return left
        waiting: dict[int, str] = {}  # entry -> its primary, a silent one
        for slot, at in group_by_slot(batch.keys).items():
            if (node := owners.get(slot, NO_PRIMARY)) in silent:
                waiting.update(dict.fromkeys(at, node))
        excess = len(waiting) - cap
        if excess <= 0:
            return left
        gone = sorted(waiting)[:excess]  # the first ones first
        dropped = batch.part(gone)
        given_up = set(gone)
        kept = batch.part([i for i in range(len(batch.keys)) if i not in given_up])
        still = set(kept.keys)  # a key with an entry kept keeps its marks
        for key in dropped.keys:  # no resend comes for them now
            if key not in still:
                self._made.pop(key, None)
                self._lost_counters.pop(key, None)
                self._lost_replies.pop(key, None)
        # Counted at once, logged at most once per DROP_LOG_INTERVAL: an
        # outage trims on every round trip.
        self.stats.dropped_ops += dropped.ops
        self._given_up += dropped.ops
        self._given_up_from.update(waiting[i] for i in gone)
        now = time.monotonic()
        if now - self._given_up_logged >= DROP_LOG_INTERVAL:
            self._log_given_up()
            self._given_up_logged = now
        return [kept]

    def _log_given_up(self) -> None:
        """The line for the writes `_capped` gave up since the last one."""
        event(
            log, "redis_writes_lost", logging.ERROR, ops=self._given_up,
            reason=f"more than {HELD_SHARE:.0%} of max_queue_ops waiting for "
            f"{', '.join(sorted(self._given_up_from))}, which did not answer; given up so "
            "that the primaries that answer keep getting writes",
        )  # fmt: skip
        self._given_up, self._given_up_from = 0, set()

    def _resting_only(self) -> bool:
        """Whether all that is queued is what the last round trip left for
        primaries that rest still (cluster): nothing to send until one may
        be tried, or new writes are sealed."""
        with self._lock:
            only_held = len(self._batches) == 1 and self._batches[0] is self._held
        return only_held and time.monotonic() < self._held_until

    def _unreachable(self, error: object) -> None:
        """An idle PING no primary answered."""
        if self.connected:
            event(log, "redis_unreachable", logging.WARNING, error=str(error))
        self.connected = False
        self.failed_pings += 1

    def _ping_primaries(self, client: RedisCluster) -> None:
        """An idle round trip on a cluster: PING each primary not resting,
        then the follow-up a failed round trip left for those. A primary
        silent or answering "not now" (BUSY, LOADING) rests, and readiness
        names its slots (`_nodes_settled`); one that answers is heard."""
        now = time.monotonic()
        self._begin_round()
        replies = ping_primaries(client, [n for n in self._node_backoff if self._resting(n, now)])
        self._node_replies(list(replies), list(replies.values()))
        if self._follow_up_left and not self._round_failed:  # not to a primary just silent
            self._follow_up(client, [], [])
        self._nodes_settled(client, None)  # idle: no write waits; what rests is named
        if replies and not self.heard_nodes:
            self._unreachable(next(iter(replies.values())))
        if self._last_error is not None:
            self._failed(None)
