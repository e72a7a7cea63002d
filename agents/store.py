"""The ShoDoHFlo Redis key schema, and the batched writer every agent uses.

This is the one module that spells a key. Every write refreshes
`EXPIRE key ttl` (ShoDoHFlo's TTL_GRACE, 900 s). Values written by `append`
are `;member;` strings concatenated, each member present once.

Readers (agents/reader.py) take their patterns and key parsing from here too.
With `index=True` the writer also keeps, per client, a set `<client>;index`
of the keys it created for that client (SADD only when a key is new, so the
cost is one command per new key, not per write). ShoDoHFlo's app ignores the
suffix; ShoDoHFlo's own agents do not write it, so readers must work without.

The writer holds at most `max_queue_ops` operations between the agents and
Redis (worst case memory ~ max_queue_ops x (key + member) bytes); past that
new operations are dropped and counted, never blocking the producer. While
Redis is unreachable it retries the oldest batch with capped backoff.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from pcapd.core.backoff import Backoff
from pcapd.core.logs import event

log = logging.getLogger("pcapd.agents.store")

# Each agent's config reads these with the bounds beside them.
DEFAULT_TTL_GRACE = 900
MAX_TTL_GRACE = 2**31 - 1  # Redis EXPIRE seconds
DEFAULT_MAX_QUEUE_OPS = 200_000
MAX_QUEUE_OPS = 100_000_000
DEFAULT_BATCH_OPS = 1_000
MAX_BATCH_OPS = 100_000
DEFAULT_FLUSH_INTERVAL = 0.05
MIN_FLUSH_INTERVAL = 0.001
MAX_FLUSH_INTERVAL = 10.0
DROP_LOG_INTERVAL = 10.0  # s; each cause of dropped writes is logged at most this often

INCR = ""  # op marker: INCR the key; anything else is a member to append
INCRBY = "\0"  # op marker prefix: INCRBY the key by the decimal number after it

CLIENT = "client"
DNS, CNAME, NX, FLOW, PEER, RST, ICMP = "dns", "cname", "nx", "flow", "peer", "rst", "icmp"
INDEX = "index"
# Fields between the client and the kind, per kind.
_ARITY = {DNS: 1, CNAME: 1, NX: 1, FLOW: 2, PEER: 1, RST: 2, ICMP: 3, INDEX: 0}
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def client_key(client: str) -> str:
    return f"client;{client}"


def dns_key(client: str, address: str) -> str:
    return f"{client};{address};dns"


def cname_key(client: str, target: str) -> str:
    return f"{client};{target};cname"


def nx_key(client: str, qname: str) -> str:
    return f"{client};{qname};nx"


def flow_key(client: str, service: str, port: int) -> str:
    return f"{client};{service};{port};flow"


def peer_key(a: str, b: str) -> str:
    return f"{a};{b};peer"


def rst_key(dst: str, src: str, client_port: int, remote_port: int) -> str:
    return f"{dst};{src};{client_port}:{remote_port};rst"


def icmp_key(dst: str, bounce_dst: str, sport: int, dport: int, code: int) -> str:
    return f"{dst};{bounce_dst};{sport}:{dport};{code};icmp"


def index_key(client: str) -> str:
    return f"{client};{INDEX}"


def glob_escape(text: str) -> str:
    """`text` matched literally by SCAN MATCH (names may hold `*`, `?`, `[`)."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


def clients_pattern() -> str:
    return client_key("*")


def client_keys_pattern(client: str) -> str:
    return f"{glob_escape(client)};*"


def kind_pattern(kind: str, *fields: str) -> str:
    """Keys of `kind` whose fields after the client start with `fields`."""
    middle = "".join(f";{glob_escape(f)}" for f in fields)
    rest = ";*" * (_ARITY[kind] - len(fields))
    return f"*{middle}{rest};{kind}"


def split_fields(text: str) -> list[str]:
    """Split on `;`, keeping `\\;` (an escaped `;` inside a DNS name) whole."""
    if "\\" not in text:
        return text.split(";")
    fields, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ";":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


@dataclass(frozen=True, slots=True)
class Key:
    """A parsed key: `kind`, the client it belongs to, and the fields between."""

    kind: str
    client: str
    fields: tuple[str, ...] = ()


def parse_key(text: str) -> Key | None:
    """None for keys outside the schema (other applications share the Redis)."""
    parts = split_fields(text)
    if len(parts) == 2 and parts[0] == CLIENT:
        return Key(CLIENT, parts[1])
    kind = parts[-1]
    if kind == NX and len(parts) > 3 and parts[0]:
        # record_nxdomain stores `;` in the name unescaped, as ShoDoHFlo does.
        return Key(kind, parts[0], (";".join(parts[1:-1]),))
    if _ARITY.get(kind) != len(parts) - 2 or not parts[0]:
        return None
    return Key(kind, parts[0], tuple(parts[1:-1]))


def members(value: str) -> list[str]:
    """The members of an append-if-absent value `;a;;b;`."""
    return [m for m in split_fields(value) if m]


def record_answer(
    writer: RedisWriter, client: str, chain: Sequence[str], addresses: Sequence[str]
) -> int:
    """ShoDoHFlo's writes for one NOERROR answer; returns the addresses recorded.

    `chain` starts at the question name and follows the CNAMEs; `addresses`
    are the A/AAAA texts owned by its end. As in ShoDoHFlo (dnstap_agent's
    `MyMapper.map_fields` sends one datagram per final address, dns_agent's
    `answer_to_redis_` writes each): `client;<c>` gains 1 per distinct
    address, and an answer without an address (NODATA, a CNAME chain that
    ends nowhere) writes nothing at all, no `cname` key either. Shared by
    every agent that turns DNS answers into keys.
    """
    count = len(addresses)
    if not count:
        return 0
    if count > 1:  # dnspython's rrsets hold each address once
        count = len(set(addresses))
    for i in range(1, len(chain)):
        writer.append(cname_key(client, chain[i]), chain[i - 1])
    owner = chain[-1]
    for address in addresses:  # a repeated address appends nothing
        writer.append(dns_key(client, address), owner)
    writer.incr(client_key(client), count)  # one INCRBY, the same value as ShoDoHFlo's INCRs
    return count


def record_nxdomain(writer: RedisWriter, client: str, qname: str) -> None:
    """`client;<c>` and `<c>;<qname>;nx` INCR, for every NXDOMAIN (no dedup).

    The name is dnspython's text form with `\\;` unescaped to `;`, the key
    ShoDoHFlo's dns_agent `nx_to_redis` writes: a reader must take the client
    from the left and `nx` from the right, as the name may hold `;`.
    """
    writer.incr(client_key(client))
    writer.incr(nx_key(client, qname.replace("\\;", ";")))


# One call per batch: KEYS[i] with ARGV[i+2] = "" (INCR), NUL + a number
# (INCRBY) or the member to append if absent; ARGV[1] is the TTL, ARGV[2] "1"
# to keep the client index. Done server-side so append-if-absent is atomic and
# a batch costs one round trip. pcall: a key holding another type (WRONGTYPE)
# costs that key, counted, never the rest of the batch. Returns {keys refused,
# the first refusal's message}.
_BATCH_SCRIPT = """
local ttl = tonumber(ARGV[1])
local indexed = ARGV[2] == '1'
local failed = 0
local first = ''
for i, key in ipairs(KEYS) do
  local member = ARGV[i + 2]
  local reply
  local created = false
  if member == '' then
    reply = redis.pcall('INCR', key)
    created = reply == 1
  elseif string.byte(member, 1) == 0 then
    local by = tonumber(string.sub(member, 2))
    reply = redis.pcall('INCRBY', key, by)
    created = reply == by
  else
    local item = ';' .. member .. ';'
    reply = redis.pcall('GET', key)
    if type(reply) ~= 'table' and (not reply or not string.find(reply, item, 1, true)) then
      created = not reply
      reply = redis.pcall('APPEND', key, item)
    end
  end
  if type(reply) == 'table' and reply.err then
    if failed == 0 then first = reply.err end
    failed = failed + 1
  else
    redis.pcall('EXPIRE', key, ttl)
    if indexed and created and string.sub(key, 1, 7) ~= 'client;' then
      local index = string.match(key, '^([^;]+);') .. ';index'
      redis.pcall('SADD', index, key)
      redis.pcall('EXPIRE', index, ttl)
    end
  end
end
return {failed, first}
"""


@dataclass(slots=True)
class WriterStats:
    queued_ops: int = 0
    written_ops: int = 0
    # Never written: queue full, still queued when the writer stopped, or
    # refused by Redis (the agents' keys_dropped).
    dropped_ops: int = 0
    rejected_ops: int = 0  # of dropped_ops, refused by Redis (WRONGTYPE, READONLY, NOPERM, ...)
    redis_errors: int = 0


class RedisWriter:
    """Buffers INCR / append-if-absent operations and writes them in batches.

    Thread-safe producers call `incr` / `append`; a background thread sends.
    """

    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        *,
        ttl: int = DEFAULT_TTL_GRACE,
        max_queue_ops: int = DEFAULT_MAX_QUEUE_OPS,
        batch_ops: int = DEFAULT_BATCH_OPS,
        flush_interval: float = DEFAULT_FLUSH_INTERVAL,
        index: bool = False,
    ) -> None:
        self._connect = connect
        self.index = index
        self.ttl = ttl
        self.max_queue_ops = max_queue_ops
        self.batch_ops = batch_ops
        self.flush_interval = flush_interval
        self.stats = WriterStats()
        self._lock = threading.Lock()
        self._pending_keys: list[str] = []
        self._pending_args: list[str] = []
        self._batches: collections.deque[tuple[list[str], list[str]]] = collections.deque()
        self._queued = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # cause -> (when last logged, ops dropped since): the writer thread's own.
        self._drop_log: dict[str, tuple[float, int]] = {}

    # -- producers -------------------------------------------------------
    def incr(self, key: str, amount: int = 1) -> None:
        self._add(key, INCR if amount == 1 else f"{INCRBY}{amount}")

    def append(self, key: str, member: str) -> None:
        if not member or member[0] == INCRBY:
            raise ValueError("append needs a non-empty member not starting with NUL")
        self._add(key, member)

    def _add(self, key: str, arg: str) -> None:
        with self._lock:
            # The bound counts the batch being filled too, so what is held never
            # passes max_queue_ops, sealed or not.
            if self._queued + len(self._pending_keys) >= self.max_queue_ops:
                self.stats.dropped_ops += 1
                return
            self._pending_keys.append(key)
            self._pending_args.append(arg)
            if len(self._pending_keys) >= self.batch_ops:
                self._seal_locked()

    def _seal_locked(self) -> None:
        keys, args = self._pending_keys, self._pending_args
        if not keys:
            return
        self._pending_keys, self._pending_args = [], []
        if self._queued + len(keys) > self.max_queue_ops:
            self.stats.dropped_ops += len(keys)
            return
        self._batches.append((keys, args))
        self._queued += len(keys)
        self.stats.queued_ops += len(keys)
        self._wake.set()

    def flush(self) -> None:
        with self._lock:
            self._seal_locked()

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return self._queued + len(self._pending_keys)

    # -- sender ----------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="redis-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Send what is queued (for at most `timeout` s), then stop."""
        self.flush()
        deadline = time.monotonic() + timeout
        while self.queue_depth and time.monotonic() < deadline and self._thread:
            self._wake.set()
            time.sleep(0.01)
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()) + 1.0)
        with self._lock:
            left = self._queued + len(self._pending_keys)
            self._batches.clear()
            self._pending_keys, self._pending_args = [], []
            self._queued = 0
        if left:
            self.stats.dropped_ops += left
            event(
                log, "redis_writes_lost", logging.ERROR, ops=left,
                reason="stopped before Redis took them",
            )  # fmt: skip
        for cause, (_, held) in self._drop_log.items():  # what the rate limit held back
            if held:
                self._log_refused(cause, held, "")
        self._drop_log.clear()

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

    def _run(self) -> None:
        client: redis.Redis | None = None
        script = None
        backoff = Backoff().tracker()
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.flush()
            while self._batches and not self._stop.is_set():
                keys, args = self._batches[0]
                try:
                    if client is None:
                        client = self._connect()
                        script = client.register_script(_BATCH_SCRIPT)
                    assert script is not None
                    rejected, first = script(keys=keys, args=[self.ttl, int(self.index), *args])
                    rejected = int(rejected)
                except redis.ResponseError as exc:
                    # Redis answered and refused the whole batch (a read-only
                    # replica, an ACL, a cluster's CROSSSLOT): retrying would
                    # only wedge the queue behind it.
                    self._refused(_cause(str(exc), exc), len(keys), str(exc))
                    rejected = -1
                except Exception as exc:  # connection trouble, or a bug: back off, retry
                    self.stats.redis_errors += 1
                    wait = backoff.failed()
                    event(
                        log, "redis_write_failed", logging.WARNING, error=str(exc),
                        queued_ops=self.queue_depth, retry_in=round(wait, 2),
                    )  # fmt: skip
                    client = None
                    self._stop.wait(wait)
                    continue
                backoff.succeeded()
                with self._lock:
                    self._batches.popleft()
                    self._queued -= len(keys)
                if rejected > 0:
                    self._refused(_cause(_text(first)), rejected, _text(first))
                if rejected >= 0:
                    self.stats.written_ops += len(keys) - rejected


def dropped_status(writer: RedisWriter, agent: str) -> int:
    """Exit status for an agent that read a file, once `writer` has stopped: 1
    (and a line saying so) if keys never reached Redis, as the file is read
    once and they are lost."""
    if not writer.stats.dropped_ops:
        return 0
    event(log, "keys_dropped", logging.ERROR, agent=agent, keys=writer.stats.dropped_ops)
    return 1


def _cause(error: str, exc: Exception | None = None) -> str:
    """A Redis error's code, its first word (`WRONGTYPE Operation against...`),
    or redis-py's class for it where redis-py cut the code off (NOPERM)."""
    code = error.split(" ", 1)[0]
    if code.isalpha() and code.isupper():
        return code
    return type(exc).__name__ if exc is not None else "unknown"


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
