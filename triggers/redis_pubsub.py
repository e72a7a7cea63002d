"""Requests from a Redis pub/sub channel, as pcapdaemon listens for them.

Fire-and-forget: a node that is down when a request is published never sees
it (use the stream or SQS sources for durability). The connection is checked
with PINGs (`health_check_interval`) and re-established with capped backoff.

Redis drops a subscriber whose unread output passes its pub/sub
client-output-buffer-limit (32 MB by default), and everything published
meanwhile is lost. So a reader thread only drains the socket into a queue
bounded by `queue_bytes`, and the consumer parses from there; a message that
does not fit is handed to `refuse` (answered "rejected: overloaded") and
counted, so a flood costs answers, never the subscription. When Redis does
close the connection, the log says what it could tell of why and how long
the node was deaf.

Memory: at most `queue_bytes` of bodies (each counted with
`MESSAGE_OVERHEAD`), plus the one message the reader holds.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import hiredis
import redis

from pcapd.core.backoff import Backoff
from pcapd.core.logs import event
from triggers.base import Delivery

log = logging.getLogger("pcapd.triggers.pubsub")

POLL_INTERVAL = 0.5  # how often the loops look at the stop flag (s)
MESSAGE_OVERHEAD = 256  # bytes counted per queued message besides its body
OVERLOAD_LOG_INTERVAL = 1.0  # s; refusals are logged as one summary line per interval
DEFAULT_QUEUE_BYTES = 16 * 1024 * 1024
READ_SIZE = 1 << 20  # bytes per recv from the subscription's socket
HEALTH_CHECK_DEFAULT = 15.0  # s without traffic before a PING, if the client sets none
PING_GRACE = 10.0  # s a PING may take before the connection counts as dead
PING = b"*1\r\n$4\r\nPING\r\n"


class _Queue:
    """A FIFO of bodies bounded by their bytes; `put` refuses, never blocks.
    Each body keeps when it was read off the socket (monotonic), so trigger
    latency counts its time in the queue."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._items: collections.deque[tuple[bytes, float]] = collections.deque()
        self._ready = threading.Condition()

    def put(self, body: bytes, received: float) -> bool:
        cost = len(body) + MESSAGE_OVERHEAD
        with self._ready:
            if self.nbytes + cost > self.limit:
                return False
            self._items.append((body, received))
            self.nbytes += cost
            self._ready.notify()
        return True

    def get(self, timeout: float) -> tuple[bytes, float] | None:
        with self._ready:
            if not self._items and not self._ready.wait(timeout):
                return None
            if not self._items:
                return None
            body, received = self._items.popleft()
            self.nbytes -= len(body) + MESSAGE_OVERHEAD
            return body, received

    def __len__(self) -> int:
        return len(self._items)


def _refuse_unanswered(delivery: Delivery, reason: str) -> None:
    """Without a controller to answer, an overflowing message is only counted."""


class RedisPubSubSource:
    def __init__(
        self,
        connect: Callable[[], redis.Redis],
        channel: str,
        where: str,
        *,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        refuse: Callable[[Delivery, str], None] = _refuse_unanswered,
        sharded: bool = False,
    ) -> None:
        # `connect` gives the server to subscribe on: on a cluster, the shard
        # owning the channel when `sharded` (SSUBSCRIBE), else any node.
        self._connect = connect
        self.sharded = sharded
        self.channel = channel
        self.where = where
        self.name = f"redis-pubsub:{channel}"
        self.queue_bytes = queue_bytes
        self._refuse = refuse
        self.subscribed = threading.Event()  # set while subscribed; for tests and health
        self.received = 0  # messages read off the socket
        self.overloaded = 0  # of them refused because the queue was full
        self.drops = 0  # times Redis closed the subscription while it was up
        self.reconnects = 0  # connections lost or refused, each retried after a backoff
        self._last_read = time.monotonic()  # when the subscription last gave bytes

    @property
    def connected(self) -> bool:
        return self.subscribed.is_set()

    def deliveries(self, stop: threading.Event) -> Iterator[Delivery]:
        queue = _Queue(self.queue_bytes)
        done = threading.Event()  # the consumer went away: the reader ends too
        reader = threading.Thread(
            target=self._read, args=(stop, done, queue), name=f"{self.name}-reader", daemon=True
        )
        reader.start()
        try:
            while not stop.is_set():
                item = queue.get(POLL_INTERVAL)
                if item is not None:
                    yield Delivery(body=item[0], source=self.name, received=item[1])
        finally:
            done.set()
            reader.join(POLL_INTERVAL * 4)

    # -- the reader thread ---------------------------------------------------
    def _read(self, stop: threading.Event, done: threading.Event, queue: _Queue) -> None:
        backoff = Backoff().tracker()
        deaf_since: float | None = None  # when the last subscription was lost
        run_id: str | None = None  # the server's, to tell a drop from a restart
        while not (stop.is_set() or done.is_set()):
            client = None
            try:
                client = self._connect()
                run_id = _run_id(client)
                self._listen(client, stop, done, queue, deaf_since)
                backoff.succeeded()
            except (redis.RedisError, OSError) as exc:
                if self.subscribed.is_set():
                    # Deaf from the last bytes read, a lower bound: Redis may
                    # have closed the connection before the kernel's buffer ran dry.
                    deaf_since = self._last_read
                self.subscribed.clear()
                self.reconnects += 1
                why = self._why_lost(client, run_id)
                wait = backoff.failed()
                event(
                    log, "redis_unavailable", logging.WARNING,
                    channel=self.channel, redis=self.where, error=str(exc) or type(exc).__name__,
                    cause=why, queued=len(queue), retry_in=round(wait, 2),
                )  # fmt: skip
                stop.wait(wait)
            finally:
                if client is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        client.close()
        self.subscribed.clear()

    def _listen(
        self,
        client: redis.Redis,
        stop: threading.Event,
        done: threading.Event,
        queue: _Queue,
        deaf_since: float | None,
    ) -> None:
        """Subscribe on one of `client`'s connections, then read its socket.

        redis-py's connection does the handshake (AUTH, TLS, SELECT); the
        socket is then read here in `READ_SIZE` chunks straight into a hiredis
        reader. redis-py's PubSub was measured reading 1 MB messages at under
        20/s, and Redis dropped it; each recv here releases the GIL and takes
        whatever the kernel holds."""
        conn = client.connection_pool.get_connection()
        refused, logged_at = 0, time.monotonic()
        try:
            command = "SSUBSCRIBE" if self.sharded else "SUBSCRIBE"
            conn.send_command(command, self.channel)  # type: ignore[no-untyped-call]
            sock = conn._sock
            if sock is None:
                raise redis.ConnectionError("no socket after connecting")
            sock.settimeout(POLL_INTERVAL)
            reader = hiredis.Reader()
            buffer = bytearray(READ_SIZE)
            interval = max(1.0, float(conn.health_check_interval or HEALTH_CHECK_DEFAULT))
            heard = pinged = time.monotonic()
            while not (stop.is_set() or done.is_set()):
                try:
                    size = sock.recv_into(buffer)
                except TimeoutError:
                    size = -1
                now = time.monotonic()
                if refused and now - logged_at >= OVERLOAD_LOG_INTERVAL:
                    self._log_overload(refused, queue)
                    refused, logged_at = 0, now
                if size == 0:
                    raise redis.ConnectionError("Connection closed by server.")
                if size < 0:
                    if now - heard > interval + PING_GRACE:
                        raise redis.TimeoutError(f"no answer to PING within {PING_GRACE} s")
                    if now - pinged > interval:
                        sock.sendall(PING)
                        pinged = now
                    continue
                heard = self._last_read = now
                reader.feed(buffer, 0, size)
                while (reply := reader.gets()) is not False:
                    if isinstance(reply, redis.ResponseError | hiredis.ReplyError):
                        raise redis.ResponseError(str(reply))
                    kind = reply[0] if isinstance(reply, list) and len(reply) == 3 else None
                    if kind in (b"subscribe", b"ssubscribe"):
                        self.subscribed.set()
                        deaf = None if deaf_since is None else round(now - deaf_since, 3)
                        event(log, "subscribed", channel=self.channel, redis=self.where,
                              deaf_seconds=deaf)  # fmt: skip
                    elif kind in (b"message", b"smessage"):
                        refused += self._take(reply[2], queue, now)
                    elif kind == b"sunsubscribe":  # the channel's slot moved to another shard
                        raise redis.ConnectionError("the shard gave up the channel's slot")
        finally:
            if refused:
                self._log_overload(refused, queue)
            conn.disconnect()  # type: ignore[no-untyped-call]
            client.connection_pool.release(conn)

    def _take(self, data: Any, queue: _Queue, received: float) -> int:
        """Queue one message body, read off the socket at `received`
        (monotonic: a ring capture starts there), or refuse it; 1 if refused."""
        body = data if isinstance(data, bytes) else str(data).encode()
        self.received += 1
        if queue.put(body, received):
            return 0
        self.overloaded += 1
        self._refuse(
            Delivery(body=body, source=self.name),
            f"overloaded: {len(queue)} requests ({queue.nbytes} bytes) are waiting to be "
            f"handled; redis.pubsub_queue_bytes={queue.limit}",
        )
        return 1

    def _log_overload(self, refused: int, queue: _Queue) -> None:
        event(
            log, "requests_overloaded", logging.WARNING, channel=self.channel, refused=refused,
            refused_total=self.overloaded, queued=len(queue), queued_bytes=queue.nbytes,
            pubsub_queue_bytes=queue.limit,
        )  # fmt: skip

    def _why_lost(self, client: redis.Redis | None, run_id: str | None) -> str:
        """What a fresh connection tells of why the last one ended.

        Redis 7.0 keeps no count of clients it dropped for their output
        buffer, so it is inferred: the server answers at once and has not
        restarted (same run_id), so it closed the connection itself, and for
        a subscriber that is its pub/sub client-output-buffer-limit.
        """
        if client is None:
            return "redis unreachable"
        try:  # on a new connection of the same client: no extra connect attempt
            now_id = _run_id(client)
            limit = _pubsub_limit(client)
        except (redis.RedisError, OSError) as exc:
            return f"cannot talk to redis: {exc or type(exc).__name__}"
        if run_id is None:
            return "redis answers, but the subscription could not be set up"
        if now_id != run_id:
            return "redis restarted (new run_id)"
        self.drops += 1
        up = (
            "redis is up and did not restart, so it closed the subscription itself"
            if run_id
            else "redis is up (INFO is not allowed, so a restart cannot be ruled out)"
        )
        return (
            f"{up}: most likely its pub/sub client-output-buffer-limit ({limit}) was "
            "passed because requests arrived faster than this node read them"
        )


def _run_id(client: redis.Redis) -> str:
    """The server's run_id; "" when the ACL refuses INFO (subscribing still works)."""
    try:
        info = client.info("server")
    except redis.ConnectionError:
        raise
    except redis.ResponseError:
        return ""
    return str(info.get("run_id", "")) if isinstance(info, dict) else ""


def _pubsub_limit(client: redis.Redis) -> str:
    """`pubsub <hard> <soft> <seconds>` from CONFIG GET, when the ACL allows it."""
    try:
        reply = client.config_get("client-output-buffer-limit")
    except redis.RedisError:
        return "limit not readable"
    text = str(reply.get("client-output-buffer-limit", "")) if isinstance(reply, dict) else ""
    words = text.split()
    if "pubsub" in words and len(words) >= words.index("pubsub") + 4:
        i = words.index("pubsub")
        hard, soft, seconds = words[i + 1 : i + 4]
        return f"hard {hard} bytes, soft {soft} bytes for {seconds} s"
    return "limit not readable"
