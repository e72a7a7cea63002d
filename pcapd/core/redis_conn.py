"""One way to open a Redis connection from `[redis]`, shared by daemon and agents.

`connect()` builds a `redis.Redis` for one server, or a
`redis.cluster.RedisCluster` when the config names a cluster; the helpers
below are the few places where the two differ for a caller: which node a
subscription lives on, publishing on a sharded channel, and walking every
primary for SCAN; and the plumbing under the commands sent by hand
(`read_replies`, `close_client`). A cluster's commands by hash slot are
`pcapd/core/redis_slots.py`'s.
"""

from __future__ import annotations

import contextlib
import random
import select
from collections.abc import Iterator
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
from redis.cluster import ClusterNode, RedisCluster

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


def not_sent(cause: BaseException) -> NotSent:
    """The NotSent of a command `cause` kept from being written; the cause
    kept, so a timeout (a server that is silent) is told from a refusal."""
    error = NotSent(str(cause))
    error.__cause__ = cause
    return error


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
