"""The RESP side of the agents' writer (agents/redis_send.py): a batch cut
into calls, the calls packed as Redis commands (built as text, hiredis for
keys that are not ASCII), one pipelined exchange over a connection, and
what a reply says (written, refused, "not now")."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, cast

import hiredis
import redis

from agents.store import APPEND_SCRIPT, client_key
from agents.write_window import Batch
from pcapd.core.redis_conn import read_replies

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
