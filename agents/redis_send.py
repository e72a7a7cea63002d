"""What the agents' writer (agents/redis_writer.py) sends in one round trip,
and how it counts the replies.

Counters (INCR, INCRBY) go as `SET key 0 NX EX ttl` then `INCRBY key n`
(a new key has its TTL from the start, so a crash before the next round
trip leaves nothing that never expires; the SET is a no-op on a key that
exists, another application's included; one it made whose INCRBY was
refused is deleted in the follow-up if it still holds "0", a value
ShoDoHFlo never writes), appends through
`store.APPEND_SCRIPT` in calls of at most `batch_ops` entries, pipelined
over one connection on a plain server, per hash slot (`send_by_slot`) on a
cluster. Once the counters are answered, a second, small round trip sends
EXPIRE for the counters Redis took that existed before (not earlier: an
EXPIRE beside a refused INCRBY would put a TTL on another application's
key) and, with the client index, SADDs the keys created to their clients'
index sets; what of it gets no answer is kept (bounded) and sent again. A
missing script is loaded and only those calls are sent again. Each write is
counted once, as written or as refused by Redis (the cause logged at most
once per DROP_LOG_INTERVAL); what got no answer, or a "not now" (TRYAGAIN,
CLUSTERDOWN, LOADING, READONLY, OOM), is handed back to the writer, to be sent again after
its backoff: only that, never what Redis already ran. Commands are packed and replies read here
(hiredis), not through redis-py's pipeline, whose wrappers cost more per
reply than Redis spends on the command; and nothing is retried unseen.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from agents.store import APPEND_SCRIPT, UNSET_ZERO_SCRIPT, client_key, index_commands
from agents.write_window import Batch
from pcapd.core.logs import event
from pcapd.core.redis_conn import group_by_slot, read_replies, send_by_slot, slot_owner

log = logging.getLogger("pcapd.agents.store")

DROP_LOG_INTERVAL = 10.0  # s; each cause of dropped writes is logged at most this often

_SHA = hashlib.sha1(APPEND_SCRIPT.encode()).hexdigest()  # what EVALSHA names
# hiredis's stub takes one-element tuples only; it packs any command.
_pack_command = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)
_CLIENT = client_key("")  # counters that go in no client's index

# What a call is: (slot, kind, its entries).
COUNTERS = "counters"  # one INCRBY per entry
APPENDS = "appends"  # one script call
Call = tuple[int, str, Batch]

# Replies that say "not now" rather than "no": sent again after backoff, as
# pcapd/core/results.py does. LOADING (BusyLoadingError) is no ResponseError:
# sent again too.
_TRANSIENT = (
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN, MASTERDOWN: a primary is away
    redis.exceptions.TryAgainError,  # a slot migrating
    redis.exceptions.AskError,  # and MOVED, once redis-py's own redirections ran out
    redis.exceptions.ReadOnlyError,  # a primary demoted mid-failover, reached by address
    redis.exceptions.OutOfMemoryError,  # maxmemory reached: room may come back
)
# Said of a MOVED or ASK on a plain connection: no redirection is followed there.
CLUSTER_HINT = "a cluster node: use redis+cluster://"
_OK = b"OK"  # SET NX's reply when it made the key


@dataclass(slots=True)
class WriterStats:
    queued_ops: int = 0
    written_ops: int = 0
    # Never written: queue full, still queued when the writer stopped, or
    # refused by Redis (the agents' keys_dropped).
    dropped_ops: int = 0
    rejected_ops: int = 0  # of dropped_ops, refused by Redis (WRONGTYPE, NOPERM, ...)
    redis_errors: int = 0
    # Counters written whose EXPIRE was refused or given up (Redis away
    # past the bound): they stand without their TTL.
    expires_lost: int = 0
    # Keys created whose SADD to their client's index was refused or given
    # up: the correlator, reading the index, does not see them.
    index_lost: int = 0


class BatchSender:
    """The sending half of `agents.redis_writer.RedisWriter`, which sets these
    attributes: its `_run` loop calls `_send_plain` / `_send_slots`."""

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
    # take away again (UNSET_ZERO_SCRIPT), in the follow-up round trip.
    _zeroes: dict[str, None]
    _lost_logged: dict[str, float]  # event name -> when it was last logged
    _drop_log: dict[str, tuple[float, int]]
    _last_error: str
    unanswered: dict[int, str] | None

    def _refused(self, cause: str, ops: int, error: str) -> None:
        """Count `ops` writes Redis refused; log each cause (the error's code,
        e.g. WRONGTYPE, NOPERM, CROSSSLOT) once per DROP_LOG_INTERVAL,
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

    def _send_plain(self, client: redis.Redis, batches: list[Batch]) -> list[Batch] | None:
        """`batches` in one round trip: Redis runs each script call whole but
        lets other clients in between, so no one call holds it longer than
        `batch_ops` entries take. Counts what each wrote or refused. A call
        Redis lacks the script for (a restart, SCRIPT FLUSH) is sent again
        after SCRIPT LOAD. What got no answer or a "not now" is returned, to
        be sent again (None when all were answered); a MOVED or ASK (a
        cluster node reached through redis://) is refused. A connection
        failure before the replies are read raises, and all are sent again;
        once a reply is counted nothing raises."""
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
        replies = _exchange(client, *self._pack(calls))  # raises: nothing counted yet
        written: list[str] = []
        created: list[str] = []
        retry: list[tuple[int, Batch]] = []
        try:
            missing = self._count_calls(calls, replies, written, created, retry, cluster=False)
            if missing:
                self._resend_missing(client, missing, written, created, retry)
            self._follow_up(client, written, created)
        except Exception:  # a bug: what was counted must not go again (counted twice)
            self._count_failed()
        return [Batch.joined([part for _slot, part in retry])] if retry else None

    def _resend_missing(
        self,
        client: redis.Redis,
        missing: list[Call],
        written: list[str],
        created: list[str],
        retry: list[tuple[int, Batch]],
    ) -> None:
        """The script calls that met NOSCRIPT, after SCRIPT LOAD: counted,
        refused (an ACL) or handed back to be sent again."""
        try:
            client.script_load(APPEND_SCRIPT)
            replies = _exchange(client, *self._pack(missing))
        except redis.ResponseError as exc:
            if _refusal(exc, cluster=False) is None:  # "not now" (READONLY, OOM)
                self._last_error = str(exc)
                retry += [(slot, part) for slot, _kind, part in missing]
            else:  # refused (an ACL): those calls only
                for _slot, _kind, part in missing:
                    self._refused(_cause(str(exc), exc), part.ops, str(exc))
        except Exception as exc:  # no answer (or a garbled one): nothing of these counted
            self._last_error = str(exc) or type(exc).__name__
            retry += [(slot, part) for slot, _kind, part in missing]
        else:
            self._again(
                self._count_calls(missing, replies, written, created, retry, cluster=False),
                retry,
            )

    def _count_failed(self) -> None:
        """Logged, with the traceback, when counting answered replies raised
        (a bug): those calls are not sent again, as Redis ran them."""
        event(log, "redis_count_failed", logging.ERROR, exc_info=True)

    def _again(self, missing: list[Call], retry: list[tuple[int, Batch]]) -> None:
        """Script calls that met NOSCRIPT right after SCRIPT LOAD (a flush in
        between, a failover): sent again after the backoff, never lost."""
        if missing:
            self._last_error = "NOSCRIPT again after SCRIPT LOAD"
            retry += [(slot, part) for slot, _kind, part in missing]

    def _pack(self, calls: list[Call]) -> tuple[bytes, int]:
        """The calls' commands packed for one pipeline, and how many: a
        counter part is SET NX EX and INCRBY per entry, an append part one
        EVALSHA."""
        ttl, mode = self.ttl, int(self.index)
        packed = [_pack_counters(part, ttl) if kind == COUNTERS else _pack_command(
                      ("EVALSHA", _SHA, len(part.keys), *part.keys, ttl, mode, *part.args))
                  for _slot, kind, part in calls]  # fmt: skip
        count = sum(2 * len(part.keys) if kind == COUNTERS else 1 for _slot, kind, part in calls)
        return b"".join(packed), count

    def _commands(self, calls: list[Call]) -> list[tuple[int, tuple[Any, ...]]]:
        """The calls' commands with their slots, for `send_by_slot`."""
        ttl, mode = self.ttl, int(self.index)
        commands: list[tuple[int, tuple[Any, ...]]] = []
        for slot, kind, part in calls:
            if kind == COUNTERS:
                for k, n in zip(part.keys, part.args, strict=True):
                    commands += [(slot, ("SET", k, 0, "NX", "EX", ttl)), (slot, ("INCRBY", k, n))]
            else:
                commands.append(
                    (slot, ("EVALSHA", _SHA, len(part.keys), *part.keys, ttl, mode, *part.args))
                )
        return commands

    def _count_calls(
        self,
        calls: list[Call],
        replies: list[Any],
        written: list[str],
        created: list[str],
        unanswered: list[tuple[int, Batch]],
        *,
        cluster: bool,
    ) -> list[Call]:
        """Count each call's replies (in `replies`, a counter part's two per
        entry: SET NX's, INCRBY's); adds the counters Redis took that existed
        before (their TTL to refresh) to `written` and the keys made to
        `created`, and each call that got no answer or a "not now" to
        `unanswered`. Never raises: what Redis ran is counted once. Returns
        the script calls that met NOSCRIPT."""
        missing: list[Call] = []
        at = 0
        index = self.index
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
                        if index and reply == args[i] and not keys[i].startswith(_CLIENT):
                            created.append(keys[i])
                    elif (refusal := _refusal(reply, cluster)) is not None:
                        self._refused(_cause(str(reply), reply), weights[i], refusal)
                        if replies[at + 2 * i] == _OK:  # made at "0": take it away
                            self._zeroes[keys[i]] = None
                    else:
                        self._unanswered(reply, slot, part.part([i]), unanswered)
                self.stats.written_ops += took
                at += 2 * len(keys)
                continue
            reply = replies[at]
            at += 1
            if _no_script(reply):
                missing.append(call)
            elif (refusal := _refusal(reply, cluster)) is not None:
                self._refused(_cause(str(reply), reply), part.ops, refusal)
            elif isinstance(reply, list):
                self._count_answer(part, reply)
                created.extend(_text(k) for k in reply[2:])
            else:
                self._unanswered(reply, slot, part, unanswered)
        return missing

    def _unanswered(
        self, reply: object, slot: int, part: Batch, unanswered: list[tuple[int, Batch]]
    ) -> None:
        self._last_error = str(reply) or type(reply).__name__
        unanswered.append((slot, part))

    def _count_answer(self, batch: Batch, reply: list[Any]) -> None:
        """The script's answer for `batch`: {refused entries' indexes, the
        first refusal's message, ...}; each entry counts the writes it merged."""
        refused = sum(batch.weights[i - 1] for i in reply[0])
        if refused:
            self._refused(_cause(_text(reply[1])), refused, _text(reply[1]))
        self.stats.written_ops += batch.ops - refused

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
        commands += [(key, ("EVAL", UNSET_ZERO_SCRIPT, 1, key)) for key in self._zeroes]
        return commands

    def _send_expires(self, client: redis.Redis | RedisCluster) -> bool:
        """The EXPIREs, SADDs and zeroes a failed round trip left; True once
        all are answered."""
        if isinstance(client, RedisCluster):
            self._follow_up_slots(client, [], [])
        else:
            self._follow_up(client, [], [])
        return not (self._expires or self._indexes or self._zeroes)

    def _follow_up(self, client: redis.Redis, written: list[str], created: list[str]) -> None:
        """The counters' EXPIREs and the index, in a second round trip. If it
        gets no answer it counts as a failed round trip (`redis_errors`) and
        both are kept for the next one: the correlator reads only the index
        once it exists, so a key left out of it is not seen."""
        commands = self._follow_up_commands(written, created)
        if not commands:
            return
        expire = self._expires
        packed = _pack_pairs("EXPIRE", list(expire), [str(self.ttl)] * len(expire))
        packed += b"".join([_pack_command(command) for _key, command in commands[len(expire) :]])
        try:
            replies = _exchange(client, packed, len(commands))
        except Exception as exc:  # no answer, or a garbled one: all kept
            self.stats.redis_errors += 1
            self._last_error = str(exc) or type(exc).__name__
            self._bound_pending()
            return
        self._follow_up_replies(commands, replies, cluster=False)

    def _expires_refused(self, errors: list[Exception]) -> None:
        """EXPIREs Redis answered with an error (an ACL, a read-only
        replica): the counters stand without their TTL; counted in
        `expires_lost`, logged at most once per DROP_LOG_INTERVAL."""
        if not errors:
            return
        self.stats.expires_lost += len(errors)
        self._log_lost("redis_expires_refused", errors, expires_lost=self.stats.expires_lost)

    def _index_refused(self, errors: list[Exception]) -> None:
        """Index SADDs Redis answered with an error (an ACL, a read-only
        replica): counted in `index_lost`, logged like refused EXPIREs."""
        if not errors:
            return
        self.stats.index_lost += len(errors)
        self._log_lost("redis_index_refused", errors, index_lost=self.stats.index_lost)

    def _log_lost(self, name: str, errors: list[Exception], **counts: Any) -> None:
        now = time.monotonic()
        if now - self._lost_logged.get(name, -math.inf) >= DROP_LOG_INTERVAL:
            self._lost_logged[name] = now
            event(log, name, logging.ERROR, keys=len(errors),
                  cause=_cause(str(errors[0]), errors[0]), error=str(errors[0]),
                  **counts)  # fmt: skip

    def _bound_pending(self) -> None:
        """At most `max_queue_ops` EXPIREs, and as many index SADDs, wait
        (Redis away for long): past that the oldest are given up, counted in
        `expires_lost` / `index_lost`."""
        if (over := len(self._zeroes) - self.max_queue_ops) > 0:  # left to their TTL
            self._zeroes = dict.fromkeys(itertools.islice(self._zeroes, over, None))
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

    def _send_slots(self, client: RedisCluster, batch: Batch) -> list[Batch] | None:
        """Per hash slot, its counters as SET NX EX + INCRBY commands and its
        appends in script calls of at most `batch_ops` entries (a slot's
        share of up to PIPELINE_CALLS joined batches can be more), in the
        order they came, pipelined per node (`redis_conn.send_by_slot`,
        which follows MOVED and ASK); counts what each wrote or refused.
        Returns the entries that got no answer (node down, failover, the
        script not loaded), to be sent again, or None when every one was
        answered; once a reply is counted it does not raise, so a written
        entry is never sent again."""
        calls = [
            (slot, kind, part)
            for slot, at in group_by_slot(batch.keys).items()
            for kind, part in _calls(batch, at, self.batch_ops)
        ]
        retry: list[tuple[int, Batch]] = []
        written: list[str] = []
        created: list[str] = []
        replies = send_by_slot(client, self._commands(calls))  # raises: nothing counted yet
        try:
            missing = self._count_calls(calls, replies, written, created, retry, cluster=True)
            if missing:
                self._resend_missing_slots(client, missing, written, created, retry)
            self.unanswered = {
                slot: slot_owner(client, slot) or "no primary known" for slot, _part in retry
            }
            self._follow_up_slots(client, written, created)
        except Exception:  # a bug: what was counted must not go again (counted twice)
            self._count_failed()
        return [Batch.joined([part for _slot, part in retry])] if retry else None

    def _resend_missing_slots(
        self,
        client: RedisCluster,
        missing: list[Call],
        written: list[str],
        created: list[str],
        retry: list[tuple[int, Batch]],
    ) -> None:
        """`_resend_missing` on a cluster: SCRIPT LOAD on every primary."""
        try:
            client.script_load(APPEND_SCRIPT)  # every primary: one restarted without it
        except (redis.RedisError, RedisClusterException) as exc:
            # Other slots were written and counted: only these are refused
            # (Redis said no) or sent again (no answer), never the rest.
            for slot, _kind, part in missing:
                if _refusal(exc, cluster=True) is not None:
                    self._refused(_cause(str(exc), exc), part.ops, str(exc))
                else:
                    self._last_error = str(exc) or type(exc).__name__
                    retry.append((slot, part))
        else:
            again = self._count_calls(missing, send_by_slot(client, self._commands(missing)),
                                      written, created, retry, cluster=True)  # fmt: skip
            self._again(again, retry)

    def _follow_up_slots(
        self, client: RedisCluster, written: list[str], created: list[str]
    ) -> None:
        """`_follow_up` on a cluster: each command to its key's slot; the
        EXPIREs and SADDs that got no answer are kept for the next round
        trip (and count as a failed one)."""
        commands = self._follow_up_commands(written, created)
        if not commands:
            return
        try:
            replies = send_by_slot(client, [(key_slot(k.encode()), c) for k, c in commands])
        except (redis.RedisError, RedisClusterException) as exc:
            self.stats.redis_errors += 1
            self._last_error = str(exc) or type(exc).__name__
            self._bound_pending()
            return
        self._follow_up_replies(commands, replies, cluster=True)

    def _follow_up_replies(
        self,
        commands: list[tuple[str, tuple[str | int, ...]]],
        replies: list[Any],
        *,
        cluster: bool,
    ) -> None:
        """What the follow-up's replies settle: each answered command leaves
        its pending set (a refusal counted and logged); one that got no
        answer or a "not now" stays for the next round trip, which counts
        as a failed one (`redis_errors`). An index set's own EXPIRE is its
        SADD's: unanswered, the SADD is kept with it."""
        refused: list[Exception] = []
        unindexed: list[Exception] = []
        failed = False
        member = ""
        for (key, command), reply in zip(commands, replies, strict=True):
            verb = command[0]
            if verb == "SADD":
                pending, lost, member = self._indexes, unindexed, str(command[2])
            elif verb == "EXPIRE" and key in self._expires:
                pending, lost, member = self._expires, refused, key
            elif verb == "EXPIRE":  # the index set's own, after its SADD (`member`)
                pending, lost = self._indexes, refused
            else:  # EVAL: a counter's "0" taken away; refused, it expires with its TTL
                pending, lost, member = self._zeroes, [], key
            if isinstance(reply, Exception) and _refusal(reply, cluster) is None:
                failed = True  # no answer: kept for the next round trip
                self._last_error = str(reply) or type(reply).__name__
                pending[member] = None
                continue
            if isinstance(reply, Exception):
                lost.append(reply)
            if verb != "EXPIRE" or pending is not self._indexes:
                pending.pop(member, None)
        if failed:
            self.stats.redis_errors += 1
        self._expires_refused(refused)
        self._index_refused(unindexed)
        self._bound_pending()


def _calls(batch: Batch, at: Sequence[int], step: int) -> list[tuple[str, Batch]]:
    """The entries of `batch` at `at` (ascending) as calls: (COUNTERS, the
    counters, one INCRBY each) and (APPENDS, at most `step` members, one
    script call). A key may be counted and appended to among them
    (unmerged writes; joined batches): the calls keep each key's order,
    cutting where a key comes as the other kind."""
    keys, args = batch.keys, batch.args
    groups: list[tuple[list[int], list[int]]] = []
    counters: list[int] = []
    appends: list[int] = []
    counted: set[str] = set()
    appended: set[str] = set()
    for i in at:
        key = keys[i]
        if isinstance(args[i], int):
            if key in appended:
                groups.append((counters, appends))
                counters, appends, counted, appended = [], [], set(), set()
            counters.append(i)
            counted.add(key)
        else:
            if key in counted:
                groups.append((counters, appends))
                counters, appends, counted, appended = [], [], set(), set()
            appends.append(i)
            appended.add(key)
    groups.append((counters, appends))
    calls: list[tuple[str, Batch]] = []
    step = max(1, step)
    for counters, appends in groups:
        if counters:
            calls.append((COUNTERS, batch if len(counters) == len(keys) else batch.part(counters)))
        calls += [
            (APPENDS, batch.part(appends[a : a + step])) for a in range(0, len(appends), step)
        ]
    return calls


def _pack_counters(part: Batch, ttl: int) -> bytes:
    """`SET k 0 NX EX ttl` and `INCRBY k n` per counter, built as text like
    `_pack_pairs` (hiredis for keys that are not ASCII)."""
    t = str(ttl)
    keys, amounts = part.keys, [str(n) for n in part.args]
    middle = f"\r\n$1\r\n0\r\n$2\r\nNX\r\n$2\r\nEX\r\n${len(t)}\r\n{t}\r\n*3\r\n$6\r\nINCRBY\r\n$"
    head = "*6\r\n$3\r\nSET\r\n$"
    text = "".join([f"{head}{len(k)}\r\n{k}{middle}{len(k)}\r\n{k}\r\n${len(n)}\r\n{n}\r\n"
                    for k, n in zip(keys, amounts, strict=True)])  # fmt: skip
    if text.isascii():
        return text.encode()
    return b"".join([_pack_command(("SET", k, "0", "NX", "EX", t)) + _pack_command(("INCRBY", k, n))
                     for k, n in zip(keys, amounts, strict=True)])  # fmt: skip


def _pack_pairs(command: str, keys: Sequence[str], values: Sequence[str]) -> bytes:
    """`command key value` per key in RESP, built as text (0.3 us a command
    here, against 0.8 through hiredis.pack_command); keys that are not
    ASCII (where a length in characters is not one in bytes) take hiredis."""
    head = f"*3\r\n${len(command)}\r\n{command}\r\n$"
    text = "".join([f"{head}{len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n"
                    for k, v in zip(keys, values, strict=True)])  # fmt: skip
    if text.isascii():
        return text.encode()
    return b"".join([_pack_command((command, k, v)) for k, v in zip(keys, values, strict=True)])


def _exchange(client: redis.Redis, packed: bytes, count: int) -> list[Any]:
    """Write `packed` on one of the client's connections and read `count`
    replies (error replies returned as redis-py's exceptions). Raises on a
    connection failure; nothing is sent twice."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed], check_health=False)  # type: ignore[no-untyped-call]
        return read_replies(conn, count)
    except BaseException:
        conn.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(conn)


def _cause(error: str, exc: Exception | None = None) -> str:
    """A Redis error's code: its first word (`WRONGTYPE Operation against...`),
    or the code redis-py cut off its message and kept beside it (READONLY,
    NOPERM, ERR), else redis-py's class for it."""
    if isinstance(exc, redis.exceptions.AskError):
        return _redirect(exc).split(" ", 1)[0]
    code = getattr(exc, "status_code", None)
    if isinstance(code, str) and code:
        return code
    code = error.split(" ", 1)[0]
    if code.isalpha() and code.isupper():
        return code
    return type(exc).__name__ if exc is not None else "unknown"


def _refusal(reply: object, cluster: bool) -> str | None:
    """What to log when `reply` is a lasting "no" (WRONGTYPE, NOPERM, ...),
    counted as refused; None for a "not now" or no answer, sent again. A
    MOVED or ASK is "not now" on a cluster (redis-py's redirections ran
    out) but "no" on a plain connection, which follows none: a cluster
    node reached through redis://."""
    if not isinstance(reply, redis.ResponseError):
        return None
    if isinstance(reply, redis.exceptions.AskError):
        return None if cluster else f"{_redirect(reply)}: {CLUSTER_HINT}"
    return None if isinstance(reply, _TRANSIENT) else str(reply)


def _redirect(reply: redis.exceptions.AskError) -> str:
    """The redirection as Redis spelled it (redis-py cuts off its code)."""
    return f"{'MOVED' if isinstance(reply, redis.exceptions.MovedError) else 'ASK'} {reply}"


def _no_script(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
