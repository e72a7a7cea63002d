"""A Redis Cluster's commands sent by hash slot, one pipeline per primary
(`send_by_slot`, `ping_primaries`), and its slot map read (`slot_owners`,
`slot_owner`, `group_by_slot`, `same_slot_prefix`): what the agents' writer,
the results and the scripts share on a cluster. Connections and replies
are `pcapd.core.redis_conn`'s."""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Container, Sequence
from typing import Any

import hiredis
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from pcapd.core.redis_conn import connecting, get_connection, not_sent, read_replies

REDIRECT_ROUNDS = 3  # MOVED/ASK followed this many times per command, then its error stands


def send_by_slot(
    client: RedisCluster,
    commands: Sequence[tuple[int, tuple[Any, ...]]],
    nodes: list[str] | None = None,
) -> list[Any]:
    """Send each `(slot, command)` to the primary owning the slot: one pipeline
    per node, written to every node before any is read; the replies, or the
    exception of each, in order.

    redis-py's cluster pipeline asks the server for each command's keys
    (COMMAND GETKEYS, a round trip per command: measured 0.6 ms per EVALSHA
    here); callers that know their slots go this way instead. MOVED refreshes
    the slot map and sends the command to the new owner; ASK sends it to the
    importing node after ASKING, as redis-py does; a node that does not
    answer leaves ConnectionError as the reply, for the caller to send again
    later (and the slot map is read afresh then), as does a slot no primary
    is known for: the replies read are returned, never lost to a raise.
    With `nodes`, each command's node is added to it: the one it went to
    last (an ASK's target, a MOVED's new owner), whose reply or silence it
    has; NO_PRIMARY for a slot no primary is known for.
    """
    replies: list[Any] = [None] * len(commands)  # None: not answered yet
    went = [NO_PRIMARY] * len(commands)
    pending = list(range(len(commands)))
    asking: dict[int, ClusterNode] = {}
    for _ in range(REDIRECT_ROUNDS):
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        owners: dict[int, ClusterNode] = {}  # per round: redis-py's lookup costs ~10 us a call
        for i in pending:
            replies[i] = None  # (re)sent: an old MOVED must not stand for this send's reply
            slot = commands[i][0]
            try:
                node = asking.get(i) or owners.get(slot)
                if node is None:
                    node = owners[slot] = client.nodes_manager.get_node_from_slot(slot)
            except (redis.RedisError, RedisClusterException) as exc:
                # No primary known for the slot (a map read mid-failover):
                # its error stands, and the replies already read are kept.
                replies[i], went[i] = exc, NO_PRIMARY
                continue
            by_node.setdefault(node.name, (node, []))[1].append(i)
            went[i] = node.name
        sent = []
        for node, indices in by_node.values():
            packed = b"".join(
                hiredis.pack_command(("ASKING",)) + hiredis.pack_command(commands[i][1])
                if i in asking
                else hiredis.pack_command(commands[i][1])
                for i in indices
            )
            sent.append((node, indices, _send_packed(client, node, packed)))
        asked = set(asking)
        asking, pending, stale = {}, [], False
        failed: str | None = None  # a node that did not answer: asked last for the map
        for node, indices, conn in sent:
            pool = client.get_redis_connection(node).connection_pool
            answers: list[Any] = []  # what was read, kept if the rest is not
            failure: Exception | None = None
            try:
                if isinstance(conn, Exception):
                    raise conn
                read_replies(conn, len(indices) + len(asked & set(indices)), answers)
            except (
                redis.ConnectionError,
                redis.TimeoutError,
                OSError,
                hiredis.ProtocolError,
            ) as exc:
                # A garbled reply stream too: the replies read so far stand
                # (Redis ran those commands); the others get the error.
                stale, failure = True, exc
                failed = failed or node.name
                if not isinstance(conn, Exception):
                    conn.disconnect()
            finally:
                if not isinstance(conn, Exception):
                    pool.release(conn)
            read = iter(answers)
            for i in indices:
                if i in asked:
                    next(read, None)  # ASKING's OK
                replies[i] = next(read, failure)
            for i in indices:
                reply = replies[i]
                if isinstance(reply, redis.exceptions.MovedError):
                    stale = True
                    pending.append(i)
                elif isinstance(reply, redis.exceptions.AskError):
                    known = client.nodes_manager.get_node(reply.host, reply.port)
                    asking[i] = known or ClusterNode(reply.host, reply.port)  # type: ignore[no-untyped-call]
                    pending.append(i)
        if stale:  # reading the slot map opens connections (`connecting`)
            # Not from the node that just failed first: the map is read from
            # a random node, and a silent one would cost a second timeout.
            with contextlib.suppress(redis.RedisError, RedisClusterException), connecting():
                client.nodes_manager.initialize(last_failed_node_name=failed)
        if not pending:
            break
    if nodes is not None:
        nodes += went
    return replies


def _send_packed(client: RedisCluster, node: ClusterNode, packed: bytes) -> Any:
    """A connection of `node` with `packed` written to it, or the exception."""
    pool = client.get_redis_connection(node).connection_pool
    try:
        conn = get_connection(pool)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return not_sent(exc)
    try:
        conn.send_packed_command([packed], check_health=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        conn.disconnect()
        pool.release(conn)
        return exc
    return conn


def group_by_slot(keys: list[str]) -> dict[int, list[int]]:
    """The indexes into `keys` of each hash slot's keys, in first-seen order:
    what one single-slot command per slot carries on a cluster."""
    slots: dict[int, list[int]] = {}
    for at, key in enumerate(keys):
        slots.setdefault(key_slot(key.encode()), []).append(at)
    return slots


NO_PRIMARY = "no primary known"  # the owner named for a slot the map gives to none


def slot_owners(client: RedisCluster) -> dict[int, str]:
    """Each slot's primary (host:port) in the client's slot map now; a slot
    the map gives to none is left out. Read once per round trip: ~1 ms,
    where a `get_node_from_slot` per slot costs ~10 us each."""
    cache = client.nodes_manager.slots_cache
    return {slot: nodes[0].name for slot, nodes in cache.items() if nodes}


def ping_primaries(client: RedisCluster, skip: Container[str]) -> dict[str, Any]:
    """PING each primary but those named in `skip`, written to all before
    any is read (one slow node costs one socket timeout, not one each):
    by name, each one's reply, an error Redis answered (BUSY, LOADING) or
    the error of its silence."""
    sent = [
        (node, _send_packed(client, node, _PING))
        for node in client.get_primaries()  # type: ignore[no-untyped-call]
        if node.name not in skip
    ]
    replies: dict[str, Any] = {}
    for node, conn in sent:
        if isinstance(conn, Exception):
            replies[node.name] = conn
            continue
        try:
            replies[node.name] = read_replies(conn, 1)[0]
        except (redis.ConnectionError, redis.TimeoutError, OSError, hiredis.ProtocolError) as exc:
            conn.disconnect()
            replies[node.name] = exc
        finally:
            client.get_redis_connection(node).connection_pool.release(conn)
    return replies


def ping_alone(pool: Any) -> Any:
    """PING the node of `pool` on a connection of its own, outside the pool's
    count (made for a thread of its own: it may wait a socket timeout, and
    the pool's user goes on meanwhile): its reply, an error Redis answered
    (BUSY, LOADING), or the error of its silence; never raises."""
    conn = pool.connection_class(**pool.connection_kwargs)
    try:
        with connecting():
            conn.connect()
        conn.send_packed_command([_PING], check_health=False)
        return read_replies(conn, 1)[0]
    except Exception as exc:  # whatever it is, the caller hears of it
        return exc
    finally:
        conn.disconnect()


_PING = hiredis.pack_command(("PING",))


def slot_owner(client: RedisCluster, slot: int) -> str | None:
    """The name (host:port) of the primary the slot map gives `slot` now;
    None when it knows none."""
    try:
        return str(client.nodes_manager.get_node_from_slot(slot).name)
    except (redis.RedisError, RedisClusterException):
        return None


@functools.lru_cache(maxsize=64)  # a few names, each asked once per event
def same_slot_prefix(key: str) -> str:
    """A prefix for keys that must share `key`'s hash slot (one script writes
    both on a cluster): `key` itself when a hash tag (`{...}`) decides its
    slot, else `{key}`; for a name with a stray `}`, the first `{n}` whose
    slot is `key`'s (found among a few thousand numbers, once per name)."""
    start = key.find("{")
    if start >= 0 and key.find("}", start + 1) > start + 1:
        return key
    if "}" not in key:
        return "{" + key + "}"
    slot = key_slot(key.encode())
    return next(f"{{{n}}}" for n in itertools.count() if key_slot(str(n).encode()) == slot)
