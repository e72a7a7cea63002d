"""One way to open a Redis connection from `[redis]`, shared by daemon and agents.

`connect()` builds a `redis.Redis` for one server, or a
`redis.cluster.RedisCluster` when the config names a cluster; the helpers
below are the few places where the two differ for a caller: which node a
subscription lives on, publishing on a sharded channel, and walking every
primary for SCAN.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import random
import select
from collections.abc import Container, Iterator, Sequence
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisClusterException

from pcapd.core.config import CLUSTER_SCHEMES, RedisConfig

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0

Client: TypeAlias = "redis.Redis | RedisCluster"


def connect(config: RedisConfig, **overrides: Any) -> Client:
    """A client for `config`; `url` wins over host/port/auth when set.

    Timeouts are always set: a silent network partition must surface as an
    error the caller retries, never as a thread blocked for ever. On a
    cluster, redis-py follows MOVED and ASK and re-reads the slot map after a
    failover; `retry` then bounds its attempts at a command.
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": config.health_check_interval,
        "client_name": "pcapd",
    }
    options.update(overrides)
    if config.clustered:
        return _cluster(config, options)
    if config.url is not None:
        url = config.url.reveal()
        if url.startswith("unix://"):
            options.pop("socket_connect_timeout", None)
        if config.tls_ca and url.startswith("rediss://"):
            options["ssl_ca_certs"] = config.tls_ca
        return redis.Redis.from_url(url, **options)
    if config.tls:
        options["ssl"] = True
        if config.tls_ca:
            options["ssl_ca_certs"] = config.tls_ca
    return redis.Redis(
        host=config.host,
        port=config.port,
        db=config.db,
        username=config.username,
        password=config.auth.reveal() if config.auth else None,
        **options,
    )


def _cluster(config: RedisConfig, options: dict[str, Any]) -> RedisCluster:
    """Seeds from `nodes`, else the URL, else host/port; auth and TLS as for
    one server. The URL's credentials and TLS apply to every node."""
    url = config.url.reveal() if config.url is not None else None
    if url is not None:
        parts = urlsplit(url)
        scheme = CLUSTER_SCHEMES.get(parts.scheme, parts.scheme)
        url = urlunsplit((scheme, parts.netloc, "", parts.query, ""))
        if config.tls_ca and scheme == "rediss":
            options["ssl_ca_certs"] = config.tls_ca
    else:
        options["username"] = config.username
        options["password"] = config.auth.reveal() if config.auth else None
        if config.tls:
            options["ssl"] = True
            if config.tls_ca:
                options["ssl_ca_certs"] = config.tls_ca
    seeds = [ClusterNode(*_host_port(node)) for node in config.nodes]  # type: ignore[no-untyped-call]
    if url is not None:  # its host is a seed too; its credentials and TLS serve every node
        return RedisCluster(url=url, startup_nodes=seeds, **options)
    if seeds:
        return RedisCluster(startup_nodes=seeds, **options)
    return RedisCluster(host=config.host, port=config.port, **options)


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    return host.strip("[]"), int(port)


def is_cluster(client: Client) -> TypeGuard[RedisCluster]:
    return isinstance(client, RedisCluster)


def node_for_channel(client: Client, channel: str, *, sharded: bool) -> redis.Redis:
    """The server a subscription to `channel` must be made on: on a cluster,
    the primary owning the channel's slot for a sharded channel (SSUBSCRIBE),
    any primary for a plain one (PUBLISH reaches every node)."""
    if not isinstance(client, RedisCluster):
        return client
    nodes = (
        [client.get_node_from_key(channel)]  # type: ignore[no-untyped-call]
        if sharded
        else client.get_primaries()  # type: ignore[no-untyped-call]
    )
    node = random.choice(nodes)
    connection: redis.Redis | None = node.redis_connection if node is not None else None
    if connection is None:
        raise redis.ConnectionError(f"no cluster node serves channel {channel!r}")
    return connection


def publish(client: Any, channel: str, body: bytes | str, *, sharded: bool) -> Any:
    """PUBLISH, or SPUBLISH to the shard that owns `channel`, on a client or a
    pipeline: the receivers, or the pipeline to execute."""
    return client.spublish(channel, body) if sharded else client.publish(channel, body)


READ_SIZE = 1 << 16  # bytes per recv of a node's replies


class NotSent(redis.ConnectionError):
    """The reply of a command never written (no connection to be had, its
    script not loaded): Redis did not run it, unlike a command whose reply
    was lost after it was written, which it may have."""


REDIRECT_ROUNDS = 3  # MOVED/ASK followed this many times per command, then its error stands


def send_by_slot(
    client: RedisCluster, commands: Sequence[tuple[int, tuple[Any, ...]]]
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
    """
    replies: list[Any] = [None] * len(commands)  # None: not answered yet
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
                replies[i] = exc
                continue
            by_node.setdefault(node.name, (node, []))[1].append(i)
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
            with contextlib.suppress(redis.RedisError, RedisClusterException), connecting():
                client.nodes_manager.initialize()
        if not pending:
            break
    return replies


@contextlib.contextmanager
def connecting() -> Iterator[None]:
    """Around what opens connections (a pool's `get_connection`, a cluster
    client reading its slot map). redis-py 8 was seen to crash with
    AttributeError inside connect() (two threads opening pooled connections
    at once): taken here for what it is, Redis not reached, so callers catch
    connection errors alone and an AttributeError anywhere else stays a bug."""
    try:
        yield
    except AttributeError as exc:
        raise redis.ConnectionError(f"connect failed: {exc!r}") from exc


def close_client(client: Client | None) -> None:
    """A client given up (broken, replaced, or its user done): every socket
    it holds closed now, not when the garbage collector comes (a cluster
    client's nodes have pools their close() leaves open). Closing a broken
    connection may raise, and is moot."""
    if client is None:
        return
    with contextlib.suppress(Exception):
        if isinstance(client, RedisCluster):
            for node in list(client.nodes_manager.nodes_cache.values()):
                if node.redis_connection is not None:
                    node.redis_connection.connection_pool.disconnect()
        client.close()


def get_connection(pool: Any) -> Any:
    """A connection from `pool`, opened if need be (`connecting`)."""
    with connecting():
        return pool.get_connection()


def _send_packed(client: RedisCluster, node: ClusterNode, packed: bytes) -> Any:
    """A connection of `node` with `packed` written to it, or the exception."""
    pool = client.get_redis_connection(node).connection_pool
    try:
        conn = get_connection(pool)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        return NotSent(str(exc))
    try:
        conn.send_packed_command([packed], check_health=False)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        conn.disconnect()
        pool.release(conn)
        return exc
    return conn


def read_replies(conn: Any, count: int, found: list[Any] | None = None) -> list[Any]:
    """`count` replies straight off the socket into a hiredis reader (redis-py
    costs ~25 us a reply in its wrappers), appended to `found` (which holds
    those read when this raises: a caller keeps what Redis answered); error
    replies become redis-py's exceptions (MovedError, NoScriptError, ...),
    returned, not raised. A connection with bytes left after them is closed."""
    found = [] if found is None else found
    sock = conn._sock
    if sock is None:
        raise redis.ConnectionError("no socket after sending")
    reader = hiredis.Reader()
    buffer = bytearray(READ_SIZE)
    wanted = len(found) + count
    while len(found) < wanted:
        try:
            size = sock.recv_into(buffer)
        except TimeoutError:
            raise redis.TimeoutError("no answer from Redis") from None
        if size == 0:
            raise redis.ConnectionError("connection closed by Redis")
        reader.feed(buffer, 0, size)  # type: ignore[arg-type]  # hiredis reads any buffer
        while len(found) < wanted and (reply := reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError):
                reply = conn._parser.parse_error(str(reply))
            found.append(reply)
    if reader.has_data() or _readable(sock):
        # Bytes past the last reply asked for (a count out of step): the
        # next user of the connection would read them as its own. The
        # replies read stand (Redis ran those commands); the connection
        # does not. What arrives later than this look is not seen.
        conn.disconnect()
    return found


def _readable(sock: Any) -> bool:
    """Whether `sock` holds bytes not read yet (decrypted ones in TLS's buffer too)."""
    pending = getattr(sock, "pending", None)
    if pending is not None and pending():
        return True
    return bool(select.select([sock], [], [], 0)[0])


def primaries(client: Client) -> Iterator[redis.Redis]:
    """Each primary's own client (the one server, for a `redis.Redis`): SCAN
    walks one keyspace at a time, and a cluster has one per primary."""
    if not isinstance(client, RedisCluster):
        yield client
        return
    for node in client.get_primaries():  # type: ignore[no-untyped-call]
        if node.redis_connection is not None:
            yield node.redis_connection


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
