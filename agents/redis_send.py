"""What the agents' writer (agents/redis_writer.py) sends in one round trip,
and how it counts the replies: one EVALSHA per batch on a plain server, or
calls of one hash slot's entries each, at most `batch_ops` of them, on a
cluster; a missing script is loaded and only those calls are sent again.
Each call is counted once, as written or as refused by Redis (the cause
logged at most once per DROP_LOG_INTERVAL); the calls that got no answer are
handed back to the writer, to be sent again after its backoff.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from agents.store import BATCH_SCRIPT, index_commands
from agents.write_window import Batch
from pcapd.core.logs import event
from pcapd.core.redis_conn import group_by_slot, send_by_slot

log = logging.getLogger("pcapd.agents.store")

DROP_LOG_INTERVAL = 10.0  # s; each cause of dropped writes is logged at most this often

_SHA = hashlib.sha1(BATCH_SCRIPT.encode()).hexdigest()  # what EVALSHA names

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


class BatchSender:
    """The sending half of `agents.redis_writer.RedisWriter`, which sets these
    attributes: its `_run` loop calls `_send_plain` / `_send_slots`."""

    stats: WriterStats
    ttl: int
    index: bool
    batch_ops: int
    _drop_log: dict[str, tuple[float, int]]
    _last_error: str
    unanswered: dict[int, str] | None

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

    def _send_plain(self, client: redis.Redis, batches: list[Batch]) -> list[Batch] | None:
        """`batches` in one round trip, one EVALSHA each: Redis runs each call
        whole but lets other clients in between, so no one call holds it
        longer than `batch_ops` entries take. Counts what each wrote or
        refused. A call Redis lacks the script for (a restart, SCRIPT FLUSH)
        is sent again after SCRIPT LOAD; the ones of those that then got no
        answer are returned, to be sent again (None when all were). A
        connection failure before any reply raises, and all are sent again."""
        replies = self._evalsha(client, batches)
        missing = [b for b, r in zip(batches, replies, strict=True) if _no_script(r)]
        self._count(batches, replies)
        if not missing:
            return None
        try:
            client.script_load(BATCH_SCRIPT)
            replies = self._evalsha(client, missing)
        except redis.ResponseError as exc:  # refused (an ACL): those calls only
            for batch in missing:
                self._refused(_cause(str(exc), exc), batch.ops, str(exc))
            return None
        except redis.RedisError as exc:
            self._last_error = str(exc) or type(exc).__name__
            return missing
        self._count(missing, replies)
        return None

    def _evalsha(self, client: redis.Redis, batches: list[Batch]) -> list[object]:
        """EVALSHA straight on the pipeline: redis-py's Script object would
        first ask SCRIPT EXISTS, a round trip more per send."""
        pipe = client.pipeline(transaction=False)
        for batch in batches:
            pipe.evalsha(_SHA, len(batch.keys), *batch.keys, self.ttl, int(self.index), *batch.args)
        return list(pipe.execute(raise_on_error=False))

    def _count(self, batches: list[Batch], replies: list[object]) -> None:
        """What each call wrote, or refused (Redis refused a whole call: a
        read-only replica, an ACL; retrying would only wedge the queue)."""
        for batch, reply in zip(batches, replies, strict=True):
            if _no_script(reply):
                continue
            if isinstance(reply, redis.ResponseError):
                self._refused(_cause(str(reply), reply), batch.ops, str(reply))
                continue
            assert isinstance(reply, list)
            self._count_answer(batch, reply)

    def _count_answer(self, batch: Batch, reply: list[Any]) -> None:
        """The script's answer for `batch`: {refused entries' indexes, the
        first refusal's message, ...}; each entry counts the writes it merged."""
        refused = sum(batch.weights[i - 1] for i in reply[0])
        if refused:
            self._refused(_cause(_text(reply[1])), refused, _text(reply[1]))
        self.stats.written_ops += batch.ops - refused

    def _send_slots(self, client: RedisCluster, batch: Batch) -> list[Batch] | None:
        """Script calls of one hash slot's entries each, at most `batch_ops`
        of them (a slot's share of up to PIPELINE_CALLS joined batches can be
        more), pipelined per node (`redis_conn.send_by_slot`, which follows
        MOVED and ASK); counts what each call wrote or refused. Returns the
        entries of the calls that got no answer (node down, failover, the
        script not loaded), to be sent again, or None when every call was
        answered; once a call's reply is counted it does not raise, so a
        written call is never sent again."""
        step = max(1, self.batch_ops)
        calls = [
            (slot, batch.part(at[i : i + step]))
            for slot, at in group_by_slot(batch.keys).items()
            for i in range(0, len(at), step)
        ]
        mode = 2 if self.index else 0
        retry: list[Batch] = []
        created: list[str] = []
        unanswered: dict[int, str] = {}
        for attempt in range(2):  # a second only to load the script where it is missing
            commands = [
                (slot, ("EVALSHA", _SHA, len(part.keys), *part.keys, self.ttl, mode, *part.args))
                for slot, part in calls
            ]
            missing: list[tuple[int, Batch]] = []
            for (slot, part), reply in zip(calls, send_by_slot(client, commands), strict=True):
                if _no_script(reply) and attempt == 0:
                    missing.append((slot, part))
                elif isinstance(reply, redis.ResponseError) and not isinstance(reply, _TRANSIENT):
                    self._refused(_cause(str(reply), reply), part.ops, str(reply))
                elif isinstance(reply, Exception):
                    self._last_error = str(reply) or type(reply).__name__
                    unanswered[slot] = _owner(client, slot)
                    retry.append(part)
                else:
                    self._count_answer(part, reply)
                    created.extend(_text(k) for k in reply[2:])
            if not missing:
                break
            try:
                client.script_load(BATCH_SCRIPT)  # every primary: one restarted without it
            except (redis.RedisError, RedisClusterException) as exc:
                # Other slots were written and counted: only these are refused
                # (Redis said no) or sent again (no answer), never the rest.
                for slot, part in missing:
                    if isinstance(exc, redis.ResponseError) and not isinstance(exc, _TRANSIENT):
                        self._refused(_cause(str(exc), exc), part.ops, str(exc))
                    else:
                        self._last_error = str(exc) or type(exc).__name__
                        unanswered[slot] = _owner(client, slot)
                        retry.append(part)
                break
            calls = missing
        self.unanswered = unanswered
        if created:
            with contextlib.suppress(redis.RedisError, RedisClusterException):
                self._index(client, created)  # best effort, and the writes stand
        return [Batch.joined(retry)] if retry else None

    def _index(self, client: RedisCluster, created: list[str]) -> None:
        """SADD new keys to their clients' index sets (best effort: the index
        only speeds the correlator up, which falls back to SCAN without it)."""
        commands = [(key_slot(index.encode()), command)
                    for index, command in index_commands(created, self.ttl)]  # fmt: skip
        send_by_slot(client, commands)


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


def _no_script(reply: object) -> bool:
    return isinstance(reply, redis.exceptions.NoScriptError)


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
