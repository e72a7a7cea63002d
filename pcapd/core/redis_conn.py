"""One way to open a Redis connection from `[redis]`, shared by daemon and agents.

`connect()` builds a `redis.Redis` for one server, or a
`redis.cluster.RedisCluster` when the config names a cluster; the helpers
below are the few places where the two differ for a caller: which node a
subscription lives on, publishing on a sharded channel, and walking every
primary for SCAN.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any, TypeAlias, TypeGuard
from urllib.parse import urlsplit, urlunsplit

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


def primaries(client: Client) -> Iterator[redis.Redis]:
    """Each primary's own client (the one server, for a `redis.Redis`): SCAN
    walks one keyspace at a time, and a cluster has one per primary."""
    if not isinstance(client, RedisCluster):
        yield client
        return
    for node in client.get_primaries():  # type: ignore[no-untyped-call]
        if node.redis_connection is not None:
            yield node.redis_connection
