"""What the agents' writer (agents/redis_writer.py) sends in one round trip,
and how it counts the replies.

Counters (INCR, INCRBY) go as `SET key 0 NX EX ttl` then `INCRBY key n`
(a new key has its TTL from the start, so a crash before the next round
trip leaves nothing that never expires; the SET is a no-op on a key that
exists, another application's included; one it made whose INCRBY was
refused, at once or when sent again after its reply was lost, is deleted
in the follow-up if it still holds "0", a value ShoDoHFlo never writes,
and while its TTL surely runs), appends through
`store.APPEND_SCRIPT` in calls of at most `batch_ops` entries, pipelined
over one connection on a plain server, per hash slot (`send_by_slot`) on a
cluster. Once the counters are answered, a second, small round trip sends
EXPIRE for the counters Redis took that existed before (not earlier: an
EXPIRE beside a refused INCRBY would put a TTL on another application's
key) and, with the client index, SADDs the keys created to their clients'
index sets; what of it gets no answer is kept (bounded) and sent again.
A script call whose reply was lost (Redis may have run it, and the reply
named the keys it made) is sent again asking the script also for the keys
it finds as such a call left them, so they are indexed as in a clean run.
A round trip that leaves anything to send again counts once in
`redis_errors`. A missing script is loaded where Redis said NOSCRIPT (on
a cluster, on those primaries only) and only those calls are sent again. Each write is
counted once, as written or as refused by Redis (the cause logged at most
once per DROP_LOG_INTERVAL); what got no answer, or a "not now" (TRYAGAIN,
CLUSTERDOWN, LOADING, READONLY, OOM, BUSY ...: `redis_errors.refusal`, the
daemon's results' classifier too), is handed back to the writer, to be sent again after
its backoff: only that, never what Redis already ran. Commands are packed and replies read here
(hiredis), not through redis-py's pipeline, whose wrappers cost more per
reply than Redis spends on the command; and nothing is retried unseen.

The packing is in agents/redis_wire.py, the exchange in
pcapd/core/redis_wire.py; the follow-up round trip and its pending sets in
agents/redis_follow_up.py.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from redis.cluster import RedisCluster

from agents.redis_follow_up import FollowUp, WriterStats
from agents.redis_replies import lost_in_flight
from agents.redis_wire import (
    _CLIENT,
    _OK,
    _SHA,
    APPENDS,
    COUNTERS,
    Call,
    _calls,
    _pack_counters,
    _text,
)
from agents.store import APPEND_SCRIPT
from agents.write_window import Batch
from pcapd.core.logs import event
from pcapd.core.redis_errors import error_code, refusal
from pcapd.core.redis_scripts import evalsha_by_slot
from pcapd.core.redis_slots import NO_PRIMARY, group_by_slot, slot_owners
from pcapd.core.redis_wire import evalsha_exchange, pack_command

log = logging.getLogger("pcapd.agents.store")

# Said of an error the script's EXPIRE met: Redis 7.0's text does not name it.
_SCRIPT_EXPIRE = "the append script's EXPIRE"

__all__ = ["BatchSender", "WriterStats"]  # WriterStats: the writer imports it from here


class BatchSender(FollowUp):
    """The sending half of `agents.redis_writer.RedisWriter`, which sets the
    attributes `FollowUp` declares and these: its `_run` loop calls
    `_send_plain` / `_send_slots`."""

    # Counters SET NX made here whose INCRBY is not taken yet (its reply
    # lost, or a "not now"): key -> until when its TTL surely runs. Refused
    # when sent again, the "0" made here is taken away (`_zeroes`). Each is
    # a key queued to go again, so max_queue_ops bounds them. Only a SET
    # NX whose OK was read counts as made here: a round with nothing read
    # leaves a "0" it may have made to its TTL, deliberately, as it may as
    # well be another writer's.
    _made: dict[str, float]
    # With the index: append keys whose script call got no answer (Redis may
    # have run it), until one of their calls is answered; bounded likewise.
    _lost_replies: dict[str, None]
    # With the index: counters whose SET NX and INCRBY both went unheard
    # (Redis may have run them, making the key): key -> the amounts sent so.
    # Sent again, the key holds more than the resend's amount, and at most
    # that much more, if lost sends made it (one that ran, another that
    # never reached Redis), and is indexed as made here; bounded likewise.
    _lost_counters: dict[str, int]

    def _send_plain(self, client: redis.Redis, batches: list[Batch]) -> list[Batch] | None:
        """`batches` in one round trip: Redis runs each script call whole but
        lets other clients in between, so no one call holds it longer than
        `batch_ops` entries take. Counts what each wrote or refused. A call
        Redis lacks the script for (a restart, SCRIPT FLUSH) is sent again
        after SCRIPT LOAD. What got no answer or a "not now" is returned, to
        be sent again (None when all were answered); a MOVED or ASK (a
        cluster node reached through redis://) is refused. No connection to
        be had raises (nothing was sent), and all are sent again; a failure
        once they were written counts the replies read and sends the rest
        again (Redis ran the first ones, and may have run the others); once
        a reply is counted nothing raises."""
        step = max(1, self.batch_ops)
        calls: list[Call] = []
        for batch in batches:
            counted, n = batch.counters, len(batch.keys)
            if counted < 0:  # unmerged: cut by kind, in order
                calls += [(0, kind, part) for kind, part in _calls(batch, range(n), step)]
                continue
            if counted:
                calls.append((0, COUNTERS, batch if counted == n else batch.slice(0, counted)))
            calls += [(0, APPENDS, batch.slice(a, a + step)) for a in range(counted, n, step)]
        sent = time.monotonic()
        # Raises before anything is sent: nothing counted yet.
        replies = evalsha_exchange(client, *self._pack(calls), APPEND_SCRIPT, keep_read=True)
        self._begin_round()  # this round's first error is the one logged
        return self._settle_calls(client, calls, replies, sent)

    def _settle_calls(
        self,
        client: redis.Redis | RedisCluster,
        calls: list[Call],
        replies: list[Any],
        sent: float,
        owners: dict[int, str] | None = None,
        held: list[Call] | None = None,
    ) -> list[Batch] | None:
        """What one round trip's replies settle, on one server or a cluster
        (`sent`: when it was sent; on a cluster, `owners`: each slot's
        primary it went to, and `held`: the calls not sent, their primary
        resting): each call counted (written or refused), the follow-up
        sent; what got no answer, a "not now" or NOSCRIPT twice, and what
        was held, returned as one batch to send again (None when all were
        answered), and the round's first error in `_last_error` (None: the
        round, follow-up too, was answered whole). Never raises: a bug in
        counting is logged, and what was counted is not sent again."""
        written: list[str] = []
        created: list[str] = []
        retry: list[tuple[int, Batch]] = []
        cluster = isinstance(client, RedisCluster)
        try:
            missing = self._count_calls(calls, replies, written, created, retry,
                                        cluster=cluster, until=sent + self.ttl)  # fmt: skip
            self._again(missing, retry)
            if owners is not None:
                self._round_failed.update(owners.get(slot, NO_PRIMARY) for slot, _part in retry)
                retry += [(slot, part) for slot, _kind, part in held or ()]
                self._left_slots = {slot: owners.get(slot, NO_PRIMARY) for slot, _part in retry}
            self._follow_up(client, written, created)
        except Exception:  # a bug: what was counted must not go again (counted twice)
            self._count_failed()
        return [Batch.joined([part for _slot, part in retry])] if retry else None

    def _count_failed(self) -> None:
        """Logged, with the traceback, when counting answered replies raised
        (a bug): those calls are not sent again, as Redis ran them."""
        event(log, "redis_count_failed", logging.ERROR, exc_info=True)

    def _again(self, missing: list[Call], retry: list[tuple[int, Batch]]) -> None:
        """Script calls that met NOSCRIPT after SCRIPT LOAD too (a flush in
        between, a failover): sent again after the backoff, never lost."""
        if missing:
            self._note_error("NOSCRIPT again after SCRIPT LOAD")
            retry += [(slot, part) for slot, _kind, part in missing]

    def _pack(self, calls: list[Call]) -> tuple[bytes, int, dict[int, tuple[Any, ...]]]:
        """The calls' commands packed for one pipeline, how many, and by
        reply index the script calls (to send again after a NOSCRIPT): a
        counter part is SET NX EX and INCRBY per entry, an append part one
        EVALSHA."""
        ttl = self.ttl
        packed: list[bytes] = []
        scripted: dict[int, tuple[Any, ...]] = {}
        count = 0
        for _slot, kind, part in calls:
            if kind == COUNTERS:
                packed.append(_pack_counters(part, ttl))
                count += 2 * len(part.keys)
                continue
            command = self._script_call(part)
            packed.append(pack_command(command))
            scripted[count] = command
            count += 1
        return b"".join(packed), count, scripted

    def _commands(self, calls: list[Call]) -> list[tuple[int, tuple[Any, ...]]]:
        """The calls' commands with their slots, for `send_by_slot`."""
        ttl = self.ttl
        commands: list[tuple[int, tuple[Any, ...]]] = []
        for slot, kind, part in calls:
            if kind == COUNTERS:
                for k, n in zip(part.keys, part.args, strict=True):
                    commands += [(slot, ("SET", k, 0, "NX", "EX", ttl)), (slot, ("INCRBY", k, n))]
            else:
                commands.append((slot, self._script_call(part)))
        return commands

    def _script_call(self, part: Batch) -> tuple[Any, ...]:
        """An append part's one call of `store.APPEND_SCRIPT`: with the
        index, asking for the keys it made ("1"), and for those it finds as
        a call that made them left them ("2") when a call of one of its keys
        got no answer."""
        report = int(self.index)
        if report and self._lost_replies and not self._lost_replies.keys().isdisjoint(part.keys):
            report = 2
        return ("EVALSHA", _SHA, len(part.keys), *part.keys, self.ttl, report, *part.args)

    def _replies_lost(self, part: Batch) -> None:
        """With the index: the keys of a script call written and not
        answered (`lost_in_flight`) into `_lost_replies` (their next call
        asks for what the lost one may have made). Never for a call not
        sent or answered "not now": the script's "2" finds any key whose
        value begins with the call's members, so a key another writer made
        with the same first member(s) is reported, and indexed, as made
        here; that case stays, narrowed to replies really lost."""
        if self.index:
            self._lost_replies.update(dict.fromkeys(part.keys))

    def _count_calls(
        self,
        calls: list[Call],
        replies: list[Any],
        written: list[str],
        created: list[str],
        unanswered: list[tuple[int, Batch]],
        *,
        cluster: bool,
        until: float,
    ) -> list[Call]:
        """Count each call's replies (in `replies`, a counter part's two per
        entry: SET NX's, INCRBY's); adds the counters Redis took that existed
        before (their TTL to refresh) to `written` and the keys made to
        `created`, and each call that got no answer or a "not now" to
        `unanswered`; `until`: when the TTL of a key this round made surely
        still runs. Never raises: what Redis ran is counted once. Returns
        the script calls that met NOSCRIPT."""
        missing: list[Call] = []
        at = 0
        index = self.index
        made, lost, lost_counters = self._made, self._lost_replies, self._lost_counters
        for call in calls:
            slot, kind, part = call
            if kind == COUNTERS:
                keys, args, weights = part.keys, part.args, part.weights
                took = 0
                for i in range(len(keys)):
                    reply = replies[at + 2 * i + 1]
                    if isinstance(reply, int):
                        took += weights[i]
                        if replies[at + 2 * i] != _OK:  # it existed: refresh its TTL
                            written.append(keys[i])
                        # Beside the resend's amount, the key holds what
                        # lost sends of it left: up to all of them (each
                        # may or may not have run), none if it made it now.
                        earlier = lost_counters.pop(keys[i], 0) if lost_counters else 0
                        if (index and 0 <= reply - int(args[i]) <= earlier
                                and not keys[i].startswith(_CLIENT)):  # fmt: skip
                            created.append(keys[i])
                        if made:
                            made.pop(keys[i], None)
                    elif (refused := refusal(reply, cluster=cluster)) is not None:
                        self._refused(error_code(reply), weights[i], refused)
                        # Made at "0", now or by a send whose INCRBY went unheard: take it away.
                        mine = made.pop(keys[i], None) if made else None
                        if lost_counters:
                            lost_counters.pop(keys[i], None)
                        if replies[at + 2 * i] == _OK:
                            self._zeroes[keys[i]] = until
                        elif mine is not None:
                            self._zeroes[keys[i]] = mine
                    else:
                        self._unanswered(reply, slot, part.part([i]), unanswered)
                        if index and lost_in_flight(replies[at + 2 * i]):
                            lost_counters[keys[i]] = lost_counters.get(keys[i], 0) + int(args[i])
                        if replies[at + 2 * i] == _OK:
                            made[keys[i]] = until  # at "0" until its INCRBY is heard
                            if index and not keys[i].startswith(_CLIENT):
                                # Made here: the resend finds it existing,
                                # so it is indexed now.
                                created.append(keys[i])
                self.stats.written_ops += took
                at += 2 * len(keys)
                continue
            reply = replies[at]
            at += 1
            if isinstance(reply, redis.exceptions.NoScriptError):
                missing.append(call)
                continue
            answered = part.keys
            if (refused := refusal(reply, cluster=cluster)) is not None:
                self._refused(error_code(reply), part.ops, refused)
            elif isinstance(reply, list):
                created.extend(_text(k) for k in reply[3:])
                if reply[2]:  # appended, but left without a TTL
                    self._expires_refused([redis.ResponseError(f"{_text(e)} ({_SCRIPT_EXPIRE})")
                                           for e in reply[2]])  # fmt: skip
                if again := self._count_answer(part, reply, cluster=cluster):
                    resent, error = again  # a "not now" (OOM, READONLY): sent again
                    self._unanswered(error, slot, resent, unanswered)
                    kept = set(resent.keys)  # a lost call's keys among them: still to find
                    answered = [k for k in answered if k not in kept]
            else:
                self._unanswered(reply, slot, part, unanswered)
                if lost_in_flight(reply):
                    self._replies_lost(part)
                continue
            if lost:  # answered: what a lost call of its keys made is in this reply
                for key in answered:
                    lost.pop(key, None)
        return missing

    def _unanswered(
        self, reply: object, slot: int, part: Batch, unanswered: list[tuple[int, Batch]]
    ) -> None:
        self._note_error(reply)
        unanswered.append((slot, part))

    def _count_answer(
        self, batch: Batch, reply: list[Any], *, cluster: bool
    ) -> tuple[Batch, str] | None:
        """The script's answer for `batch`: {failed entries' indexes, each
        one's error, ...}; each entry counts the writes it merged. An error
        `refusal` calls "not now" (OOM, READONLY: the APPEND did not run) is
        no refusal: those entries and the first such error are returned, to
        be sent again, as a counter's would be."""
        weights = batch.weights
        refused: dict[str, tuple[int, str]] = {}  # code -> (ops, first error)
        again: list[int] = []
        first = ""
        for i, text in zip(reply[0], reply[1], strict=True):
            error = redis.ResponseError(_text(text))
            if (why := refusal(error, cluster=cluster)) is None:
                again.append(i - 1)
                first = first or str(error)
                continue
            code = error_code(error)
            ops, why = refused.get(code, (0, why))
            refused[code] = (ops + weights[i - 1], why)
        for code, (ops, why) in refused.items():
            self._refused(code, ops, why)
        resent = batch.part(again) if again else None
        not_written = sum(ops for ops, _why in refused.values())
        self.stats.written_ops += batch.ops - not_written - (resent.ops if resent else 0)
        return (resent, first) if resent else None

    def _send_slots(self, client: RedisCluster, batch: Batch) -> list[Batch] | None:
        """Per hash slot, its counters as SET NX EX + INCRBY commands and its
        appends in script calls of at most `batch_ops` entries (a slot's
        share of up to PIPELINE_CALLS joined batches can be more), in the
        order they came, pipelined per node (`redis_slots.send_by_slot`,
        which follows MOVED and ASK); counts what each wrote or refused.
        A resting primary's slots (its backoff after a failure) are held,
        not sent, and so are those last redirected to it (`_redirected`).
        Returns the entries that got no answer (node down, failover, the
        script not loaded) and those held, to be sent again, or None when
        every one was answered; once a reply is counted it does not raise,
        so a written entry is never sent again."""
        calls: list[Call] = []
        held: list[Call] = []  # a resting primary's: not sent, kept
        owners, sent = slot_owners(client), time.monotonic()
        routes = self._routed(owners)
        for slot, at in group_by_slot(batch.keys).items():
            going = held if self._resting(routes.get(slot, NO_PRIMARY), sent) else calls
            going += [(slot, kind, part) for kind, part in _calls(batch, at, self.batch_ops)]
        commands = self._commands(calls)
        self._begin_round()  # this round's first error is the one logged
        nodes: list[str] = []  # where each command went: its reply's (or silence's) node
        replies = evalsha_by_slot(client, commands, APPEND_SCRIPT, nodes) if commands else []
        self._node_replies(nodes, replies)
        self._note_redirects(owners, [slot for slot, _c in commands], nodes)
        return self._settle_calls(client, calls, replies, sent, self._routed(owners), held)
