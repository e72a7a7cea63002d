"""The follow-up round trip of the agents' writer (agents/redis_send.py):
once the counters are answered, EXPIRE for the counters Redis took that
existed before, the index's SADDs and the "0"s to take away; what gets no
answer is kept (at most max_queue_ops each) for the next round trip."""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from agents.redis_replies import HEARD_ERRORS, answered, silent, to_resend
from agents.store import UNSET_ZERO_SCRIPT, index_commands
from pcapd.core.backoff import BackoffTracker
from pcapd.core.logs import event
from pcapd.core.redis_errors import error_code, error_text
from pcapd.core.redis_slots import NO_PRIMARY, send_by_slot, slot_owners
from pcapd.core.redis_wire import UNANSWERED, exchange, pack_command, pack_pairs

log = logging.getLogger("pcapd.agents.store")

DROP_LOG_INTERVAL = 10.0  # s; each cause of dropped writes is logged at most this often
NOT_PERMITTED = "NOPERM"  # Redis's code for what the user's ACL denies


@dataclass(slots=True)
class WriterStats:
    queued_ops: int = 0
    written_ops: int = 0
    # Never written: queue full, still queued when the writer stopped, or
    # refused by Redis (the agents' keys_dropped).
    dropped_ops: int = 0
    rejected_ops: int = 0  # of dropped_ops, refused by Redis (WRONGTYPE, NOPERM, ...)
    # Round trips (calls and their follow-up, or an idle one's follow-up)
    # that left something to send again, each counted once; and on a
    # cluster each PING a silent primary left unanswered.
    redis_errors: int = 0
    # Of those, the ones in which Redis answered some command "not now"
    # (OOM, READONLY, LOADING, BUSY, CLUSTERDOWN ...), not only silence.
    redis_not_now: int = 0
    # Keys written whose EXPIRE was refused or given up (Redis away
    # past the bound): they stand without their TTL.
    expires_lost: int = 0
    # Keys created whose SADD to their client's index was refused or given
    # up: the correlator, reading the index, does not see them.
    index_lost: int = 0


class FollowUp:
    """The follow-up half of `BatchSender` (agents/redis_send.py), whose
    owner, `agents.redis_writer.RedisWriter`, sets these attributes."""

    stats: WriterStats
    ttl: int
    index: bool
    batch_ops: int
    max_queue_ops: int
    combine: bool
    # Counters written whose EXPIRE got no answer yet, and keys created
    # whose index SADD got none, sent with the next round trip (at most
    # max_queue_ops each).
    _expires: dict[str, None]
    _indexes: dict[str, None]
    # Counters SET NX made at "0" whose INCRBY Redis refused: the "0" to
    # take away again (UNSET_ZERO_SCRIPT), in the follow-up round trip;
    # key -> until when (monotonic) its TTL surely runs, after which the "0"
    # has expired and the key may be another writer's.
    _zeroes: dict[str, float]
    _lost_logged: dict[str, float]  # event name -> when it was last logged
    _drop_log: dict[str, tuple[float, int]]
    # The round trip's first error (None while nothing in it failed), and
    # whether some command of it got no answer and some got a "not now".
    _last_error: str | None
    _no_answer: bool
    _heard_not_now: bool
    unanswered: dict[int, str] | None
    # Cluster only: the primaries (host:port) this round trip sent to, those
    # that answered something, and those that left something to send again
    # (no answer, a "not now").
    _round_tried: set[str]
    _round_heard: set[str]
    _round_failed: set[str]
    # Cluster only: the slots of what the round trip left to send again, and
    # their primaries (`unanswered` is made of these, once the round is settled).
    _left_slots: dict[int, str]
    # Cluster only: primary -> its backoff and when it may be tried again;
    # held for each primary whose last contact failed, until one succeeds.
    _node_backoff: dict[str, tuple[BackoffTracker, float]]
    # Cluster only: slot -> the primary a command of it last went to that
    # the slot map does not give it to (an ASK: the slot is being migrated
    # there), until its commands all go to the map's owner again. A slot
    # is held, sent and named as that primary's: one silent, its ASKs are
    # not sent into its silence again, nor is the owner, which answered,
    # taken for silent.
    _redirected: dict[int, str]
    # Cluster only: the primaries whose last contact timed out; they rest
    # until a PING of their own is answered (agents.redis_readiness).
    _silent: set[str]
    _round_silent: set[str]
    # The last write, EXPIRE or index SADD Redis refused as not permitted
    # (NOPERM: the user's ACL): when (monotonic) and Redis's error. One
    # tuple, replaced whole: readiness reads it from another thread.
    access_refused: tuple[float, str] | None

    def _refused(self, cause: str, ops: int, error: str) -> None:
        """Count `ops` writes Redis refused; log each cause (the error's code,
        e.g. WRONGTYPE, NOPERM, CROSSSLOT) once per DROP_LOG_INTERVAL,
        with the ops refused since the last line."""
        self.stats.rejected_ops += ops
        self.stats.dropped_ops += ops
        now = time.monotonic()
        if cause == NOT_PERMITTED:
            self.access_refused = (now, error)
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

    def _follow_up_commands(
        self, written: list[str], created: list[str]
    ) -> list[tuple[str, tuple[str | int, ...]]]:
        """(key, command): EXPIRE for each counter written (once per key),
        and those left from a round trip that failed; the index's SADDs,
        with those left likewise."""
        expire = self._expires
        expire.update(dict.fromkeys(written))
        self._indexes.update(dict.fromkeys(created))
        ttl = self.ttl
        commands: list[tuple[str, tuple[str | int, ...]]] = [
            (key, ("EXPIRE", key, ttl)) for key in expire
        ]
        if self._indexes:
            commands += index_commands(list(self._indexes), ttl)
        if self._zeroes:
            now = time.monotonic()
            self._zeroes = {k: until for k, until in self._zeroes.items() if until > now}
            commands += [(key, ("EVAL", UNSET_ZERO_SCRIPT, 1, key)) for key in self._zeroes]
        return commands

    def _begin_round(self) -> None:
        """A round trip starts: nothing in it failed yet."""
        self._last_error = None
        self._no_answer = False
        self._heard_not_now = False
        self._round_tried, self._round_heard, self._round_failed = set(), set(), set()
        self._round_silent = set()
        self._left_slots = {}

    def _resting(self, node: str, now: float) -> bool:
        """Whether `node` waits out its backoff (a cluster primary that
        failed), or, silent, for its PING to be answered."""
        rest = self._node_backoff.get(node)
        return node in self._silent or (rest is not None and rest[1] > now)

    def _held_back(self, node: str, now: float) -> bool:
        """Whether the follow-up holds `node`'s commands: resting, or silent
        to this round's writes."""
        return node in self._round_silent or self._resting(node, now)

    def _routed(self, owners: dict[int, str]) -> dict[int, str]:
        """`owners` (slot -> primary), `_redirected` over it: where each
        slot's commands go (not copied without redirects: 16384 slots)."""
        return owners | self._redirected if self._redirected else owners

    def _note_redirects(self, owners: dict[int, str], slots: list[int], nodes: list[str]) -> None:
        """`_redirected` after a round trip: `nodes[i]`, where a command of
        slot `slots[i]` went, for each slot one went elsewhere than its
        owner in the map read before (`owners`)."""
        redirected = self._redirected
        expected = [owners.get(slot, NO_PRIMARY) for slot in slots]
        if redirected:
            sent = set(slots)
            for slot in [s for s in redirected if s in sent]:
                del redirected[slot]
        if nodes != expected:  # some went elsewhere: rare, so only then looked for
            for slot, node, owner in zip(slots, nodes, expected, strict=True):
                if node != owner and node != NO_PRIMARY:
                    redirected[slot] = node

    def _node_replies(self, nodes: list[str], replies: list[Any]) -> None:
        """Which primaries this round trip sent to (`nodes[i]` got the command
        `replies[i]` answers), answered, and left something to send again."""
        self._round_tried.update(nodes)
        for node, reply in zip(nodes, replies, strict=True):
            if answered(reply):
                self._round_heard.add(node)
            if to_resend(reply, cluster=True):
                self._round_failed.add(node)
            if silent(reply):
                self._round_silent.add(node)

    @property
    def _follow_up_left(self) -> bool:
        """Whether a failed follow-up left EXPIREs, index SADDs or "0"s to send."""
        return bool(self._expires or self._indexes or self._zeroes)

    def _note_error(self, error: object, *, heard: bool | None = None) -> None:
        """Keep the round's first error (its code too, as Redis spelled it):
        what the writer's retry line names, not a later one's consequence;
        that the round failed; and whether Redis was heard (an error reply,
        or a script's error text; `heard` says so where the error alone
        does not) or not (a connection error, a timeout)."""
        # An error Redis answered that fails the round is a "not now": a
        # refusal is counted by `_refused`, never noted here.
        if heard is None:
            heard = isinstance(error, (str, *HEARD_ERRORS))
        self._no_answer = self._no_answer or not heard
        self._heard_not_now = self._heard_not_now or heard
        if self._last_error is not None:
            return
        if isinstance(error, BaseException):
            self._last_error = error_text(error)
        else:
            self._last_error = error if isinstance(error, str) else f"unexpected reply {error!r}"

    def _send_expires(self, client: redis.Redis | RedisCluster) -> bool:
        """The EXPIREs, SADDs and zeroes a failed round trip left, in a round
        trip of their own; False when it failed (the writer counts it)."""
        self._begin_round()
        self._follow_up(client, [], [])
        return self._last_error is None

    def _follow_up(
        self, client: redis.Redis | RedisCluster, written: list[str], created: list[str]
    ) -> None:
        """The counters' EXPIREs and the index, in a second round trip: packed
        on one server, each command to its key's slot on a cluster. What
        gets no answer fails the round trip (`_note_error`; the caller counts
        it) and is kept for the next one: the correlator reads only the
        index once it exists, so a key left out of it is not seen."""
        commands = self._follow_up_commands(written, created)
        if not commands:
            return
        cluster = isinstance(client, RedisCluster)
        try:
            if isinstance(client, RedisCluster):
                # A resting primary's commands stay pending, unsent; so do
                # those of one this round's writes found silent: sent now,
                # they would wait out a second socket timeout in one round.
                owners, now = self._routed(slot_owners(client)), time.monotonic()
                slotted = [(key_slot(key.encode()), key, c) for key, c in commands]
                slotted = [
                    s for s in slotted if not self._held_back(owners.get(s[0], NO_PRIMARY), now)
                ]
                commands = [(key, c) for _slot, key, c in slotted]
                nodes: list[str] = []
                replies = send_by_slot(client, [(slot, c) for slot, _key, c in slotted], nodes)
                self._node_replies(nodes, replies)
            else:
                expire = self._expires
                packed = pack_pairs("EXPIRE", list(expire), [str(self.ttl)] * len(expire))
                packed += b"".join([pack_command(c) for _key, c in commands[len(expire) :]])
                replies = exchange(client, packed, len(commands))
        except UNANSWERED as exc:  # no answer, or a garbled one: all kept
            self._note_error(exc)
            self._bound_pending()
            return
        self._follow_up_replies(commands, replies, cluster=cluster)

    def _follow_up_replies(
        self,
        commands: list[tuple[str, tuple[str | int, ...]]],
        replies: list[Any],
        *,
        cluster: bool,
    ) -> None:
        """What the follow-up's replies settle: each answered command leaves
        its pending set (a refusal counted and logged); one that got no
        answer or a "not now" stays for the next round trip and fails this
        one (`_note_error`). An index set's own EXPIRE is its SADD's:
        unanswered, the SADD is kept with it."""
        refused: list[Exception] = []
        unindexed: list[Exception] = []
        member = ""
        for (key, command), reply in zip(commands, replies, strict=True):
            unanswered = to_resend(reply, cluster=cluster)
            if unanswered:
                self._note_error(reply)  # no answer: kept for the next round trip
            verb = command[0]
            if verb == "EVAL":  # a counter's "0" taken away; refused, it expires with its TTL
                if not unanswered:
                    self._zeroes.pop(key, None)
                continue
            if verb == "SADD":
                pending, lost, member = self._indexes, unindexed, str(command[2])
            elif key in self._expires:
                pending, lost, member = self._expires, refused, key
            else:  # the index set's own EXPIRE, after its SADD (`member`)
                pending, lost = self._indexes, refused
            if unanswered:
                pending[member] = None
                continue
            if isinstance(reply, Exception):
                lost.append(reply)
            if verb != "EXPIRE" or pending is not self._indexes:
                pending.pop(member, None)
        self._expires_refused(refused)
        self._index_refused(unindexed)
        self._bound_pending()

    def _expires_refused(self, errors: list[Exception]) -> None:
        """EXPIREs Redis refused for good (an ACL's NOPERM; a "not now" such
        as READONLY is kept and sent again): the counters, or the keys the
        script appended to, stand without their TTL; counted in
        `expires_lost`, logged at most once per DROP_LOG_INTERVAL."""
        if not errors:
            return
        self.stats.expires_lost += len(errors)
        self._log_lost("redis_expires_refused", errors, expires_lost=self.stats.expires_lost)

    def _index_refused(self, errors: list[Exception]) -> None:
        """Index SADDs Redis refused for good (an ACL's NOPERM): counted in
        `index_lost`, logged like refused EXPIREs."""
        if not errors:
            return
        self.stats.index_lost += len(errors)
        self._log_lost("redis_index_refused", errors, index_lost=self.stats.index_lost)

    def _log_lost(self, name: str, errors: list[Exception], **counts: Any) -> None:
        now = time.monotonic()
        # An ACL's NOPERM fails readiness too (agents.metrics.writer_check).
        denied = [e for e in errors if error_code(e) == NOT_PERMITTED]
        if denied:
            self.access_refused = (now, error_text(denied[0]))
        if now - self._lost_logged.get(name, -math.inf) >= DROP_LOG_INTERVAL:
            self._lost_logged[name] = now
            event(log, name, logging.ERROR, keys=len(errors),
                  cause=error_code(errors[0]), error=error_text(errors[0]),
                  **counts)  # fmt: skip

    def _bound_pending(self) -> None:
        """At most `max_queue_ops` EXPIREs, as many index SADDs and as many
        "0"s to take away wait (Redis away for long): past that the oldest
        are given up, counted in `expires_lost` / `index_lost` (a "0" given
        up is left to its TTL, uncounted: nothing was written there)."""
        if (over := len(self._zeroes) - self.max_queue_ops) > 0:  # left to their TTL
            self._zeroes = dict(itertools.islice(self._zeroes.items(), over, None))
        for pending, what in ((self._expires, "EXPIREs"), (self._indexes, "index SADDs")):
            over = len(pending) - self.max_queue_ops
            if over <= 0:
                continue
            for key in list(itertools.islice(pending, over)):
                del pending[key]
            if pending is self._expires:
                self.stats.expires_lost += over
            else:
                self.stats.index_lost += over
            event(log, "redis_expires_lost" if pending is self._expires else "redis_index_lost",
                  logging.ERROR, keys=over,
                  reason=f"more {what} waiting for Redis than max_queue_ops")  # fmt: skip
