"""What one batch of results sends, and what it makes of Redis's replies.

A result's commands (`commands_of`): PUBLISH to the results channel, the
add-once stream script and PUBLISH to its reply_to. The stream entry is added
only if the event id's marker (`event_mark_key`, set once the entry is in, for
`[redis] results_dedup_window` s) was not there, so a resend is in the stream
once. A batch goes as packed RESP in one
exchange on one server (`redis_wire.evalsha_exchange`), per hash slot on a
cluster (`redis_scripts.evalsha_by_slot`), the script as EVALSHA, loaded where
Redis answered NOSCRIPT. From the replies (`settle`): what Redis refused for
good (NOPERM, WRONGTYPE: `redis_errors.refusal`) is not resent; after a round
Redis took in part (OOM or READONLY on the stream's script, its PUBLISH
through; on a cluster, one primary away), only the rest goes again (`Rest`).
`pcapd.core.results` queues and resends.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from redis.cluster import RedisCluster
from redis.crc import key_slot

from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client
from pcapd.core.redis_errors import refusal
from pcapd.core.redis_scripts import evalsha_by_slot, script_sha
from pcapd.core.redis_slots import same_slot_prefix
from pcapd.core.redis_wire import evalsha_exchange, pack_command

log = logging.getLogger("pcapd.core.results")  # the publisher's: one logger for results

CHANNEL, STREAM, REPLY = "channel", "stream", "reply_to"  # a result's commands


@dataclass(frozen=True, slots=True)
class Commands:
    """Writes that go with the results, in order with those queued before
    them (dedup's `served` marks): each `(key, command)`, the key naming
    the hash slot the command goes to on a cluster."""

    writes: tuple[tuple[str, tuple[Any, ...]], ...]


@dataclass(frozen=True, slots=True)
class Rest:
    """What of a result is left to send after a round Redis failed in part
    (its PUBLISH went, its stream script met OOM or READONLY): only that goes
    again, so a long OOM does not repeat the event on the channel each round."""

    result: ResultEvent
    parts: frozenset[str]  # of CHANNEL, STREAM, REPLY
    sent: frozenset[str] = frozenset()  # what earlier rounds sent, for the loss's reason


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
ADD_ONCE_SHA = script_sha(ADD_ONCE)
ADD_ONCE_CALL = ("EVALSHA", ADD_ONCE_SHA)  # how its calls start: picked out by the sha


def event_mark_key(stream: str, event_id: str) -> str:
    """The one spelling of a result's marker: in the stream's hash slot, so
    one script touches both on a cluster."""
    return f"{same_slot_prefix(stream)}:event:{event_id}"


def with_event_id(result: ResultEvent) -> ResultEvent:
    """`result` as one new event: a fresh id, whatever it carried. The
    publisher gives one only to a result without (a result derived with
    `replace` from one that has an id keeps it: clear it there, or it is
    taken for a resend of the first)."""
    return replace(result, event_id=uuid.uuid4().hex)


def _no_slot(key: bytes) -> int:
    return 0  # one server: no slot to find (crc16 in Python, ~0.6 us a key)


def commands_of(
    item: Item, reply_to: str | None, config: RedisConfig, *, cluster: bool = True
) -> tuple[list[str] | None, list[tuple[int, tuple[Any, ...]]]]:
    """`item`'s commands with their hash slots (0 each unless `cluster`);
    for a result, what each is (CHANNEL, STREAM, REPLY), None for `Commands`."""
    slot = key_slot if cluster else _no_slot
    if isinstance(item, Commands):
        return None, [(slot(key.encode()), command) for key, command in item.writes]
    parts = item.parts if isinstance(item, Rest) else None
    result = item.result if isinstance(item, Rest) else item
    stream = config.results_stream
    publish = "SPUBLISH" if config.sharded_pubsub else "PUBLISH"
    if result.event_id is None:  # publish() and submit() give it; else its own, never shared
        result = with_event_id(result)
    body, event_id = result.to_json(), str(result.event_id)
    added: list[str] = []
    commands: list[tuple[int, tuple[Any, ...]]] = []
    if parts is None or CHANNEL in parts:
        channel = config.results_channel
        commands.append((slot(channel.encode()), (publish, channel, body)))
        added.append(CHANNEL)
    if stream and (parts is None or STREAM in parts):
        commands.append((slot(stream.encode()), (
            *ADD_ONCE_CALL, 2, stream, event_mark_key(stream, event_id), event_id,
            config.results_stream_maxlen, body, config.results_dedup_window,
        )))  # fmt: skip
        added.append(STREAM)
    if reply_to and (parts is None or REPLY in parts):
        commands.append((slot(reply_to.encode()), (publish, reply_to, body)))
        added.append(REPLY)
    return added, commands


class CannotEncode(ValueError):
    """An item's commands could not be packed (a `reply_to` that is no
    text: a lone surrogate, a number): given up alone, never sent."""


def _planned(
    item: Item, reply_to: str | None, config: RedisConfig, *, cluster: bool
) -> tuple[list[str] | None, list[tuple[int, tuple[Any, ...]]], bytes]:
    """`commands_of`, and on one server the commands packed; CannotEncode
    when they cannot be (on a cluster the slot's key is encoded already,
    and what encodes packs)."""
    try:
        parts, mine = commands_of(item, reply_to, config, cluster=cluster)
        packed = b"" if cluster else b"".join([pack_command(command) for _slot, command in mine])
    except (UnicodeError, AttributeError, TypeError, ValueError) as exc:
        raise CannotEncode(f"cannot encode its commands: {exc!r}") from exc
    return parts, mine, packed


def send_batch(
    client: Client, batch: list[Pending], config: RedisConfig, *, fresh: bool = False
) -> list[Outcome]:
    """Every item's commands in one round trip: packed RESP in one exchange
    on one server (which raises if Redis was not reached: all goes again),
    per hash slot on a cluster (a primary away leaves its commands'
    ConnectionError as their reply); each item's replies. An item that
    cannot be packed is not sent: its outcome is its CannotEncode alone,
    and the others go. `fresh` (a new client: Redis may have restarted
    without the script) loads the script in the same round trip on one
    server, so a reply lost then is no NOSCRIPT that was never seen."""
    cluster = isinstance(client, RedisCluster)
    planned: list[tuple[list[str] | None, list[tuple[int, tuple[Any, ...]]], bytes]] = []
    unsent: dict[int, CannotEncode] = {}
    for at, (item, reply_to) in enumerate(batch):
        try:
            planned.append(_planned(item, reply_to, config, cluster=cluster))
        except CannotEncode as exc:
            unsent[at] = exc
            planned.append((None, [], b""))
    commands = [command for _parts, mine, _packed in planned for command in mine]
    if isinstance(client, RedisCluster):
        replies = evalsha_by_slot(client, commands, ADD_ONCE)
    else:
        packed = b"".join([packed for _parts, _mine, packed in planned])
        scripted = {i: c for i, (_slot, c) in enumerate(commands) if c[:2] == ADD_ONCE_CALL}
        replies = evalsha_exchange(
            client, packed, len(commands), scripted, ADD_ONCE, load_first=fresh and bool(scripted)
        )
    outcomes: list[Outcome] = []
    at = 0
    for n, (parts, mine, _packed) in enumerate(planned):
        outcomes.append((parts, [unsent[n]] if n in unsent else replies[at : at + len(mine)]))
        at += len(mine)
    return outcomes


# An item's commands (what each is, for a result) and their replies, in order.
Outcome = tuple[list[str] | None, list[Any]]


def settle(
    batch: list[Pending], outcomes: list[Outcome], *, cluster: bool
) -> tuple[dict[int, str], dict[int, Pending | None], Exception | None]:
    """From each item's replies: (by position, why each given up is: refused
    for good, or not encodable; what needs no resend (None) or only in part
    (`Rest`); the first transient error: a "not now" reply, or on a cluster
    a node that did not answer). An item without an outcome goes again whole."""
    refused: dict[int, str] = {}
    done: dict[int, Pending | None] = {}
    transient: Exception | None = None
    for at, (parts, mine) in enumerate(outcomes):
        item = batch[at][0]
        earlier = item.sent if isinstance(item, Rest) else frozenset()
        errors = [r for r in mine if isinstance(r, Exception)]
        firm = [why for e in errors if (why := given_up(e, cluster=cluster)) is not None]
        if firm:
            refused[at] = firm[0] + _where(parts, mine, earlier)
        if firm or not errors:
            done[at] = None
            continue
        transient = transient or errors[0]  # READONLY after a failover, BUSY, OOM, no answer
        result = result_of(item)
        if parts and result is not None:
            failed = frozenset(
                part for part, reply in zip(parts, mine, strict=True)
                if isinstance(reply, Exception)
            )  # fmt: skip
            if failed != frozenset(parts):
                rest = Rest(result, failed, earlier | (frozenset(parts) - failed))
                done[at] = (rest, batch[at][1])
    return refused, done, transient


def _where(parts: list[str] | None, replies: list[Any], earlier: frozenset[str]) -> str:
    """Which of a result's commands were refused and which went, in this
    round or (`earlier`) a round before it: a result whose reply_to alone
    is refused did reach the channel and the stream."""
    if not parts:
        return ""
    now = [part for part, reply in zip(parts, replies, strict=True)
           if not isinstance(reply, Exception)]  # fmt: skip
    went = [part for part in (CHANNEL, STREAM, REPLY) if part in earlier or part in now]
    failed = [part for part in parts if part not in now]
    return f" (not sent: {', '.join(failed)}; sent: {', '.join(went) or 'nothing'})"


def given_up(error: Exception, *, cluster: bool) -> str | None:
    """Why an item whose reply is `error` is not sent again, or None (it goes again)."""
    if isinstance(error, CannotEncode):
        return str(error)
    why = refusal(error, cluster=cluster)
    return None if why is None else f"refused by Redis: {why}"


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
