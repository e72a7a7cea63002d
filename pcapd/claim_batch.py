"""Claims of many threads in one round trip: `ClaimBatcher` sends each claim
(the `CLAIM` script) of every waiting thread in one pipeline, from one
thread per seen set (`pcapd.dedup.RedisSeen`), so a storm of captures shares
its Redis round trips.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from pcapd.core.redis_conn import Client
from pcapd.core.redis_scripts import evalsha_by_slot
from pcapd.core.redis_wire import UNANSWERED, evalsha_exchange, pack_command

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
            except UNANSWERED as exc:  # one server, not reached: each claim's error
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
        """Each claim's answer, or its error (NOSCRIPT: loaded and sent again
        where Redis lost the script, `evalsha_by_slot` / `evalsha_exchange`)."""
        client = self._client
        commands = [("EVALSHA", self._script.sha, 1, item.key, *self._args) for item in batch]
        if isinstance(client, RedisCluster):
            slots = [key_slot(item.key.encode()) for item in batch]
            replies = evalsha_by_slot(client, list(zip(slots, commands, strict=True)), CLAIM)
        else:
            packed = b"".join([pack_command(c) for c in commands])
            replies = evalsha_exchange(client, packed, len(commands), dict(enumerate(commands)),
                                       CLAIM)  # fmt: skip
        return [reply if isinstance(reply, Exception) else reply == 1 for reply in replies]
