"""Claims of many threads in one round trip: `ClaimBatcher` sends each claim
(the `CLAIM` script) of every waiting thread in one pipeline, from one
thread per seen set (`pcapd.dedup.RedisSeen`), so a storm of captures shares
its Redis round trips.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from pcapd.core.redis_conn import Client, is_cluster, send_by_slot, slot_owner

CLAIM_BATCH = 64  # claims sent in one pipeline at most

SERVED = "served"  # a claim's value once its request was served
# Claim KEYS[1] for instance ARGV[1] with expiry ARGV[2] s; 1 if already taken
# (served, or claimed by this instance), 0 if new or left by a dead instance.
CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 0
end
if v == ARGV[3] or v == ARGV[1] then return 1 end
redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
return 0
"""


@dataclass(slots=True)
class Claim:
    key: str
    done: threading.Event = field(default_factory=threading.Event)
    taken: bool = False
    error: Exception | None = None
    # The first error of any claim in the same batch: with one primary of a
    # cluster away, its neighbours' answers do not mean Redis is back.
    batch_error: Exception | None = None


class ClaimBatcher:
    """Sends the claims of every waiting thread in one pipeline, from one thread
    (`send`); or one claim from the caller's thread, which waits anyway (`now`).

    A claim is the `CLAIM` script (EVALSHA; loaded again if Redis lost it),
    as it was before claims were batched, so any Redis that served them still
    does. On a cluster the claims go by hash slot (`send_by_slot`: one
    pipeline per primary), and each gets its own reply or error.
    Memory: one small object per waiting claim, and each waiting thread has
    one (at most the capture threads)."""

    def __init__(self, client: Client, instance: str, ttl: int, name: str) -> None:
        self._client, self._script = client, client.register_script(CLAIM)
        self._args = (instance, ttl, SERVED)
        self._name = name
        self._pending: list[Claim] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def now(self, key: str) -> bool:
        """One claim from the calling thread (a round trip, no hand-off)."""
        return bool(self._script(keys=[key], args=list(self._args)) == 1)

    def send(self, key: str) -> Claim:
        """Queue a claim of `key`: answered (`done`) once its batch is."""
        item = Claim(key)
        with self._wake:
            self._pending.append(item)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()
        return item

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                batch = self._pending[:CLAIM_BATCH]
                del self._pending[:CLAIM_BATCH]
            try:
                for item, answer in zip(batch, self._send(batch), strict=True):
                    if isinstance(answer, Exception):
                        item.error = answer
                    else:
                        item.taken = answer
            except redis.RedisError as exc:
                for item in batch:
                    item.error = exc
            except Exception as exc:  # a bug must not leave threads waiting
                for item in batch:
                    item.error = redis.RedisError(f"claim failed: {exc!r}")
            failed = next((item.error for item in batch if item.error is not None), None)
            for item in batch:
                item.batch_error = failed
                item.done.set()

    def _send(self, batch: list[Claim]) -> list[bool | Exception]:
        if is_cluster(self._client):
            return self._send_by_slot(self._client, batch)
        for attempt in (1, 2):
            pipe = self._client.pipeline(transaction=False)
            for item in batch:
                pipe.evalsha(self._script.sha, 1, item.key, *self._args)
            try:
                return [answer == 1 for answer in pipe.execute()]
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self._client.script_load(CLAIM)  # a restarted or flushed Redis
        raise AssertionError("unreachable")

    def _send_by_slot(self, client: RedisCluster, batch: list[Claim]) -> list[bool | Exception]:
        """Each claim to its slot's primary, pipelined per primary; the claims a
        primary answered NOSCRIPT sent again once the script is loaded there
        (there only, and each node on its own: a primary that is down, or
        dies before the load, fails its own claims alone). A claim that got
        no answer has its error. A claim NOSCRIPT again came from an ASK
        target (a slot being migrated: the map names its old owner): the
        script is loaded on the other primaries then, and it goes once more."""
        commands = [
            (key_slot(item.key.encode()), ("EVALSHA", self._script.sha, 1, item.key, *self._args))
            for item in batch
        ]
        replies: list[Any] = send_by_slot(client, commands)
        lost: dict[str | None, list[int]] = {}  # node -> the claims it answered NOSCRIPT
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.NoScriptError):
                lost.setdefault(slot_owner(client, commands[i][0]), []).append(i)
        primaries = {node.name: node for node in client.get_primaries()}  # type: ignore[no-untyped-call]
        again: list[int] = []
        for name, claims in lost.items():
            error = _load(client, primaries.get(name or ""), name)  # lost by a restart or FLUSH
            for i in claims:
                replies[i] = error or replies[i]
            again.extend(claims if error is None else ())
        self._resend(client, commands, replies, again)
        asked = [i for i in again if isinstance(replies[i], redis.exceptions.NoScriptError)]
        if asked:
            for name, node in primaries.items():
                if name not in lost:
                    _load(client, node, name)  # a node that fails keeps its claims' NOSCRIPT
            self._resend(client, commands, replies, asked)
        return [reply if isinstance(reply, Exception) else reply == 1 for reply in replies]

    @staticmethod
    def _resend(
        client: RedisCluster, commands: list[tuple[int, tuple[Any, ...]]], replies: list[Any],
        which: list[int],
    ) -> None:  # fmt: skip
        for i, reply in zip(which, send_by_slot(client, [commands[i] for i in which]),
                            strict=True):  # fmt: skip
            replies[i] = reply


def _load(client: RedisCluster, node: Any, name: str | None) -> Exception | None:
    """SCRIPT LOAD of CLAIM on `node` (None: `name` is no primary now); the error, if any."""
    try:
        if node is None:
            raise redis.ConnectionError(f"{name or 'no node'}: not a primary now")
        client.execute_command("SCRIPT LOAD", CLAIM, target_nodes=[node])  # type: ignore[no-untyped-call]
    except (redis.RedisError, RedisClusterException, OSError) as exc:
        return exc
    return None
