"""Commands to one Redis server as packed RESP, one pipelined exchange,
replies read with hiredis: the daemon's results and the agents' writer send
this way, not through redis-py's pipeline, whose wrappers cost more per
reply than Redis spends on the command (measured: docs/performance.md).
A cluster's counterpart, per hash slot, is `redis_slots.send_by_slot`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
import redis
from redis.exceptions import RedisClusterException

from pcapd.core.redis_conn import get_connection, not_sent, read_replies
from pcapd.core.redis_scripts import as_eval, load_refused

# hiredis's stub takes one-element tuples only; it packs any command.
pack_command = cast(Callable[[tuple[Any, ...]], bytes], hiredis.pack_command)


def pack_pairs(command: str, keys: Sequence[str], values: Sequence[str]) -> bytes:
    """`command key value` per key in RESP, built as text (0.3 us a command
    here, against 0.8 through hiredis.pack_command); keys that are not
    ASCII (where a length in characters is not one in bytes) take hiredis."""
    head = f"*3\r\n${len(command)}\r\n{command}\r\n$"
    text = "".join([f"{head}{len(k)}\r\n{k}\r\n${len(v)}\r\n{v}\r\n"
                    for k, v in zip(keys, values, strict=True)])  # fmt: skip
    if text.isascii():
        return text.encode()
    return b"".join([pack_command((command, k, v)) for k, v in zip(keys, values, strict=True)])


# What a send raises when Redis was not reached or its replies not read:
# redis-py's errors (redis-py 8's AttributeError inside connect() made one by
# `redis_conn.connecting`), the socket's, a garbled reply stream, a cluster's
# that are not RedisError (a slot no node serves).
UNANSWERED = (redis.RedisError, RedisClusterException, OSError, hiredis.ProtocolError)


def exchange(
    client: redis.Redis, packed: bytes, count: int, *, keep_read: bool = False
) -> list[Any]:
    """Write `packed` on one of the client's connections and read `count`
    replies (error replies returned as redis-py's exceptions). Raises on a
    connection failure (redis.ConnectionError, TimeoutError, OSError,
    hiredis.ProtocolError); nothing is sent twice. `keep_read`: a failure
    once `packed` was written returns the replies read, and the failure as
    the reply of each command after them (Redis ran the first ones: sent
    again, a counter would count twice; and may have run the others); only
    one before anything was sent (no connection) raises."""
    pool = client.connection_pool
    conn = get_connection(pool)
    found: list[Any] = []
    try:
        conn.send_packed_command([packed], check_health=False)
        return read_replies(conn, count, found)
    except UNANSWERED as exc:
        conn.disconnect()
        if keep_read:
            return found + [exc] * (count - len(found))
        raise
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def evalsha_exchange(
    client: redis.Redis,
    packed: bytes,
    count: int,
    scripted: Mapping[int, tuple[Any, ...]],
    script: str,
    *,
    load_first: bool = False,
    keep_read: bool = False,
) -> list[Any]:
    """`exchange`, where the EVALSHAs of `script` (`scripted`: by reply
    index, the command) that Redis answered NOSCRIPT (a restart, SCRIPT
    FLUSH) are sent again behind SCRIPT LOAD, in one more round trip; where
    the load is refused for good (an ACL, rename-command, a proxy) they go
    as EVAL in one more; a load unanswered or refused for now is their
    reply, and a NOSCRIPT again (a flush in between) stays theirs, for the
    caller to send again later.
    `load_first` (a new connection, where the script is likely missing)
    puts SCRIPT LOAD ahead of the commands, in the same round trip.
    Only the first exchange raises: once replies are read they are returned
    (with `keep_read`, also those of an exchange that failed once written:
    `exchange`; the calls of a reload never sent get `NotSent`)."""
    if load_first:
        packed = pack_command(("SCRIPT", "LOAD", script)) + packed
        replies = exchange(client, packed, count + 1, keep_read=keep_read)[1:]  # refused: NOSCRIPT
    else:
        replies = exchange(client, packed, count, keep_read=keep_read)
    missing = [i for i in scripted if isinstance(replies[i], redis.exceptions.NoScriptError)]
    if not missing:
        return replies
    again = pack_command(("SCRIPT", "LOAD", script))
    again += b"".join([pack_command(scripted[i]) for i in missing])
    try:
        load, *answers = exchange(client, again, 1 + len(missing), keep_read=keep_read)
        if load_refused(load):  # never loaded here: EVAL carries it
            answers = exchange(client, b"".join([pack_command(as_eval(scripted[i], script))
                                                 for i in missing]), len(missing),
                               keep_read=keep_read)  # fmt: skip
            load = None
    except UNANSWERED as exc:  # with keep_read: nothing of it was sent
        load, answers = (not_sent(exc) if keep_read else exc), []
    for n, i in enumerate(missing):
        replies[i] = load if isinstance(load, Exception) else answers[n]
    return replies
