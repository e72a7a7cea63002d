"""What one batch of results sends, and what it makes of Redis's replies.

A result's commands (`add_commands`): PUBLISH to the results channel, the
add-once stream script and PUBLISH to its reply_to. The stream entry is added
only if the event id's marker (`event_mark_key`, set once the entry is in, for
`[redis] results_dedup_window` s) was not there, so a resend is in the stream
once. From the replies (`settle`): what Redis refused for good (NOPERM,
WRONGTYPE: `redis_conn.refused_for_good`) is not resent; after a round Redis
took in part (OOM or READONLY on the stream's script, its PUBLISH through),
only the rest goes again (`Rest`). `pcapd.core.results` queues and resends.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.redis_conn import publish, refused_for_good, same_slot_prefix

log = logging.getLogger("pcapd.core.results")  # the publisher's: one logger for results

# Commands for the same pipeline, in order with the results (dedup marks):
# called with the pipeline (or, on a cluster, the client) to add them.
Commands = Callable[[Any], None]
CHANNEL, STREAM, REPLY = "channel", "stream", "reply_to"  # a result's commands


@dataclass(frozen=True, slots=True)
class Rest:
    """What of a result is left to send after a round Redis failed in part
    (its PUBLISH went, its stream script met OOM or READONLY): only that goes
    again, so a long OOM does not repeat the event on the channel each round."""

    result: ResultEvent
    parts: frozenset[str]  # of CHANNEL, STREAM, REPLY


Item = ResultEvent | Rest | Commands
Pending = tuple[Item, str | None]

# XADD the event ARGV[3] (its id ARGV[1]) to the stream KEYS[1], capped at
# ~ARGV[2] entries, unless the id's marker KEYS[2] is there; the marker is
# set for ARGV[4] s once the entry is in (an XADD Redis refuses aborts the
# script before it, so a resend is not taken for done). 1 if added, 0 if it
# was already.
ADD_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'event_id', ARGV[1], 'event', ARGV[3])
redis.call('SET', KEYS[2], '1', 'EX', ARGV[4])
return 1
"""


def event_mark_key(stream: str, event_id: str) -> str:
    """The one spelling of a result's marker: in the stream's hash slot, so
    one script touches both on a cluster."""
    return f"{same_slot_prefix(stream)}:event:{event_id}"


def with_event_id(result: ResultEvent) -> ResultEvent:
    """`result` as one new event: a fresh id, whatever it carried (events are
    derived from others with `replace`, which would copy it)."""
    return replace(result, event_id=uuid.uuid4().hex)


def add_commands(
    pipe: Any, item: Item, reply_to: str | None, config: RedisConfig
) -> list[str] | None:
    """`item`'s commands onto `pipe` (a pipeline, or a cluster client):
    for a result, what each command is (CHANNEL, STREAM, REPLY)."""
    parts = item.parts if isinstance(item, Rest) else None
    result = result_of(item)
    if result is None:
        item(pipe)  # type: ignore[operator]  # not a result: commands
        return None
    sharded, stream = config.sharded_pubsub, config.results_stream
    if result.event_id is None:  # publish() and submit() give it; else its own, never shared
        result = with_event_id(result)
    body, event_id = result.to_json(), str(result.event_id)
    added = []
    if parts is None or CHANNEL in parts:
        publish(pipe, config.results_channel, body, sharded=sharded)
        added.append(CHANNEL)
    if stream and (parts is None or STREAM in parts):
        pipe.eval(
            ADD_ONCE, 2, stream, event_mark_key(stream, event_id), event_id,
            config.results_stream_maxlen, body, config.results_dedup_window,
        )  # fmt: skip
        added.append(STREAM)
    if reply_to and (parts is None or REPLY in parts):
        publish(pipe, reply_to, body, sharded=sharded)
        added.append(REPLY)
    return added


def send_each(client: Any, batch: list[Pending], config: RedisConfig) -> list[Outcome]:
    """A cluster's way: one command at a time, each error reply noted and
    the item's other commands still sent; the items up to the first that
    met a transient reply (those after it go again whole). Other errors
    raise (all goes again)."""
    outcomes = []
    for item, reply_to in batch:
        noting = Replies(client)
        outcomes.append((add_commands(noting, item, reply_to, config), noting.replies))
        if any(
            isinstance(r, redis.ResponseError) and not refused_for_good(r, cluster=True)
            for r in noting.replies
        ):
            break
    return outcomes


class Replies:
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
Outcome = tuple[list[str] | None, list[Any]]


def settle(
    batch: list[Pending], outcomes: list[Outcome], *, cluster: bool
) -> tuple[dict[int, str], dict[int, Pending | None], redis.ResponseError | None]:
    """From each item's replies: (by position, the refused for good; what
    needs no resend (None) or only in part (`Rest`); the first transient
    error reply). An item without an outcome goes again whole."""
    refused: dict[int, str] = {}
    done: dict[int, Pending | None] = {}
    transient = None
    for at, (parts, mine) in enumerate(outcomes):
        errors = [r for r in mine if isinstance(r, redis.ResponseError)]
        firm = [e for e in errors if refused_for_good(e, cluster=cluster)]
        if firm:
            refused[at] = describe(firm[0])
        if firm or not errors:
            done[at] = None
            continue
        transient = transient or errors[0]  # READONLY after a failover, BUSY, OOM
        result = result_of(batch[at][0])
        if parts and result is not None:
            failed = frozenset(
                part for part, reply in zip(parts, mine, strict=True)
                if isinstance(reply, redis.ResponseError)
            )  # fmt: skip
            if failed != frozenset(parts):
                done[at] = (Rest(result, failed), batch[at][1])
    return refused, done, transient


# What `_send_all` takes for Redis unreachable (all goes again): redis-py's
# errors, the socket's, a cluster's that are not RedisError (a slot no node
# serves), and redis-py 8's AttributeError inside connect().
TRANSIENT = (redis.RedisError, RedisClusterException, OSError, AttributeError)


def describe(exc: Exception) -> str:
    """The error as logged, with the code redis-py cut off its message (NOPERM)."""
    text = str(exc) or type(exc).__name__
    code = getattr(exc, "status_code", None)
    return f"{code} {text}" if isinstance(code, str) and not text.startswith(code) else text


def result_of(item: Item) -> ResultEvent | None:
    """The result `item` is (or is what is left of); None for commands."""
    if isinstance(item, Rest):
        return item.result
    return item if isinstance(item, ResultEvent) else None


def log_lost(item: Item, reason: str) -> None:
    result = result_of(item)
    if result is not None:
        event(
            log, "result_lost", logging.ERROR, id=result.id, result=result.to_json(), reason=reason
        )
    else:
        event(log, "redis_write_lost", logging.WARNING, what=repr(item), reason=reason)
