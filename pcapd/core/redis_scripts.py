"""A script's EVALSHA calls on a cluster, with the script loaded again on
the primaries that answered NOSCRIPT (a restart, SCRIPT FLUSH), or sent as
EVAL where SCRIPT LOAD is refused; one server's counterpart is
`redis_wire.evalsha_exchange`."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import RedisClusterException

from pcapd.core.redis_conn import connecting, not_sent
from pcapd.core.redis_errors import refusal
from pcapd.core.redis_slots import send_by_slot, slot_owner


def script_sha(script: str) -> str:
    """The SHA1 Redis names `script` by (EVALSHA, SCRIPT LOAD's answer)."""
    return hashlib.sha1(script.encode()).hexdigest()


def as_eval(command: tuple[Any, ...], script: str) -> tuple[Any, ...]:
    """`command`, an EVALSHA of `script`, as the EVAL that carries it: where
    SCRIPT LOAD is refused (an ACL, rename-command, a proxy) but EVAL is
    not, the script still runs (and Redis keeps it for the next EVALSHA)."""
    return ("EVAL", script, *command[2:])


def load_refused(error: object) -> bool:
    """Whether a SCRIPT LOAD's `error` says it will never be taken (NOPERM,
    an unknown command), so that only EVAL can bring the script."""
    return isinstance(error, redis.ResponseError) and refusal(error, cluster=True) is not None


def evalsha_by_slot(
    client: RedisCluster,
    commands: Sequence[tuple[int, tuple[Any, ...]]],
    script: str,
    nodes: list[str] | None = None,
) -> list[Any]:
    """`send_by_slot`, where the EVALSHAs of `script` among `commands` that a
    primary answered NOSCRIPT (a restart, SCRIPT FLUSH) are sent again once
    the script is loaded there: on those primaries only, each on its own (a
    primary that is down fails its own commands alone, with the load's
    error as their reply; one that refuses SCRIPT LOAD for good gets them
    as EVAL). A command NOSCRIPT again came from an ASK target (a slot being
    migrated: the map names its old owner): the script is loaded on the
    other primaries then, and it goes once more; a NOSCRIPT after that is
    its reply, for the caller to send again later. With `nodes`, each
    command's node is added to it, as `send_by_slot` does."""
    replies = send_by_slot(client, commands, nodes)
    call = ("EVALSHA", script_sha(script))
    lost: dict[str | None, list[int]] = {}  # node -> its commands answered NOSCRIPT
    for i, reply in enumerate(replies):
        if isinstance(reply, redis.exceptions.NoScriptError) and commands[i][1][:2] == call:
            lost.setdefault(slot_owner(client, commands[i][0]), []).append(i)
    if not lost:
        return replies
    primaries = {node.name: node for node in client.get_primaries()}  # type: ignore[no-untyped-call]
    again: dict[int, tuple[int, tuple[Any, ...]]] = {}
    for name, which in lost.items():
        error = _load(client, primaries.get(name or ""), name, script)
        for i in which:
            if error is None:
                again[i] = commands[i]
            elif load_refused(error):
                again[i] = (commands[i][0], as_eval(commands[i][1], script))
            else:  # not sent again: the load's "not now", or no answer to it
                answered = isinstance(error, redis.ResponseError)
                replies[i] = error if answered else not_sent(error)
    _resend(client, again, replies, list(again), nodes)
    asked = [i for i in again if isinstance(replies[i], redis.exceptions.NoScriptError)]
    if asked:
        for name, node in primaries.items():
            if name not in lost:
                _load(client, node, name, script)  # a node that fails keeps its NOSCRIPT
        _resend(client, commands, replies, asked, nodes)
    return replies


def _resend(
    client: RedisCluster,
    commands: Sequence[tuple[int, tuple[Any, ...]]] | Mapping[int, tuple[int, tuple[Any, ...]]],
    replies: list[Any],
    which: list[int],
    nodes: list[str] | None,
) -> None:
    went: list[str] = []
    again = send_by_slot(client, [commands[i] for i in which], went)
    for i, reply, node in zip(which, again, went, strict=True):
        replies[i] = reply
        if nodes is not None:
            nodes[i] = node


def _load(client: RedisCluster, node: Any, name: str | None, script: str) -> Exception | None:
    """SCRIPT LOAD of `script` on `node` (None: `name` is no primary now); the error, if any."""
    try:
        if node is None:
            raise redis.ConnectionError(f"{name or 'no node'}: not a primary now")
        with connecting():  # may open the node's first connection
            client.execute_command("SCRIPT LOAD", script, target_nodes=[node])  # type: ignore[no-untyped-call]
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        return exc
    return None
