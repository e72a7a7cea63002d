"""Where requests come from and how they are admitted: [redis] (pub/sub,
streams, a cluster, the result channel and stream), [sqs] and [security]
(signed requests and their dedup)."""

from __future__ import annotations

from urllib.parse import urlsplit

from pcapd.core.config.sections import *
from pcapd.core.configread import MAX_PORT, Table
from pcapd.core.fields import whole_number


def _redis(s: Table) -> RedisConfig:
    url = s.secret("url")
    if url is not None:
        scheme = urlsplit(url.reveal()).scheme
        if scheme not in REDIS_URL_SCHEMES:
            s.errors.append(f"redis.url: scheme {scheme!r} is not one of {REDIS_URL_SCHEMES_TEXT}")
        try:
            _ = urlsplit(url.reveal()).port  # raises on a bad or out-of-range port
        except ValueError as exc:
            s.errors.append(f"redis.url: {exc}")
    config = RedisConfig(
        listen=s.get_bool("listen", True),
        host=s.get_str("host", DEFAULT_REDIS_HOST),
        port=s.get_int("port", DEFAULT_REDIS_PORT, maximum=MAX_PORT),
        channel=s.get_str("channel", DEFAULT_CHANNEL) or DEFAULT_CHANNEL,
        auth=s.secret("auth"),
        username=s.optional_str("username"),
        db=s.get_int("db", 0, minimum=0, maximum=MAX_REDIS_DB),
        url=url,
        tls=s.get_bool("tls", False),
        tls_ca=s.optional_str("tls_ca"),
        results_channel=s.get_str("results_channel", DEFAULT_RESULTS_CHANNEL),
        results_stream=s.get_str("results_stream", DEFAULT_RESULTS_STREAM),
        results_stream_maxlen=s.get_int(
            "results_stream_maxlen",
            DEFAULT_RESULTS_STREAM_MAXLEN,
            maximum=MAX_RESULTS_STREAM_MAXLEN,
        ),
        results_dedup_window=s.get_int(
            "results_dedup_window",
            DEFAULT_RESULTS_DEDUP_WINDOW,
            maximum=MAX_RESULTS_DEDUP_WINDOW,
        ),
        health_check_interval=s.get_int(
            "health_check_interval",
            DEFAULT_HEALTH_CHECK_INTERVAL,
            maximum=MAX_HEALTH_CHECK_INTERVAL,
        ),
        stream_listen=s.get_bool("stream_listen", False),
        stream=s.get_str("stream", DEFAULT_REQUEST_STREAM),
        pubsub_queue_bytes=s.get_int(
            "pubsub_queue_bytes",
            DEFAULT_PUBSUB_QUEUE_BYTES,
            minimum=MIN_PUBSUB_QUEUE_BYTES,
            maximum=MAX_PUBSUB_QUEUE_BYTES,
        ),
        cluster=s.get_bool("cluster", False),
        nodes=_cluster_nodes(s),
        sharded_pubsub=s.get_bool("sharded_pubsub", False),
    )
    _check_cluster(s, config)
    return config


def _cluster_nodes(s: Table) -> tuple[str, ...]:
    """`HOST:PORT` seeds (`[::1]:7000` for IPv6), each checked."""
    nodes = s.str_list("nodes")
    if len(nodes) > MAX_CLUSTER_NODES:
        s.bad("nodes", f"{len(nodes)} nodes", f"at most {MAX_CLUSTER_NODES} seed nodes")
        return ()
    for node in nodes:
        host, sep, port = node.rpartition(":")
        if not sep or not host.strip("[]") or whole_number(port, 1, MAX_PORT) is None:
            s.bad("nodes", node[:80], f"each node must be HOST:PORT with a port in 1..{MAX_PORT}")
            return ()
    return nodes


def _check_cluster(s: Table, config: RedisConfig) -> None:
    """What a cluster cannot do, named by the field that asks for it."""
    if config.nodes and not config.cluster:
        s.error("nodes", "seed nodes are for a cluster: set cluster = true as well")
    if not config.clustered:
        return
    url = config.url.reveal() if config.url is not None else None
    unix = url is not None and urlsplit(url).scheme == "unix"
    if unix:
        s.error("url", "a cluster is reached over TCP: unix:// cannot be a cluster seed")
    if config.db != 0:
        s.bad("db", config.db, "a Redis Cluster has only database 0")
    if url is not None and not unix and urlsplit(url).path.strip("/") not in ("", "0"):
        s.bad("url", urlsplit(url).path, "a Redis Cluster has only database 0 (path /0 or none)")


def _sqs(s: Table) -> SqsConfig:
    waitseconds = DEFAULT_SQS_WAIT
    if s.table.get("waitseconds") == 0 and s.table["waitseconds"] is not False:
        s.seen.add("waitseconds")
        s.errors.append(
            "sqs.waitseconds: 0 turns long polling off, so every empty reply is followed at "
            f"once by the next billed ReceiveMessage: use {MIN_SQS_WAIT}..{MAX_SQS_WAIT} "
            f"(default {DEFAULT_SQS_WAIT})"
        )
    else:
        waitseconds = s.get_int(
            "waitseconds", DEFAULT_SQS_WAIT, minimum=MIN_SQS_WAIT, maximum=MAX_SQS_WAIT
        )
    config = SqsConfig(
        listen=s.get_bool("listen", False),
        region=s.optional_str("region"),
        accessid=s.optional_str("accessid"),
        accesskey=s.secret("accesskey"),
        url=s.optional_str("url"),
        endpoint=s.optional_str("endpoint"),
        waitseconds=waitseconds,
        chunksize=s.get_int("chunksize", DEFAULT_SQS_CHUNK, maximum=MAX_SQS_CHUNK),
        visibility_timeout=s.get_int(
            "visibility_timeout", DEFAULT_SQS_VISIBILITY, maximum=MAX_SQS_VISIBILITY
        ),
        not_for_me=s.get_str("not_for_me", DEFAULT_NOT_FOR_ME, choices=NOT_FOR_ME),
    )
    if config.listen and not config.url:
        s.errors.append("sqs.url: required when sqs.listen = true")
    if bool(config.accessid) != bool(config.accesskey):
        s.errors.append("sqs.accessid, sqs.accesskey: set both, or neither for boto3's chain")
    return config


def _security(s: Table) -> SecurityConfig:
    config = SecurityConfig(
        keys=s.secret_map("keys"),
        require_signed=s.get_bool("require_signed", False),
        max_skew=s.get_int("max_skew", DEFAULT_MAX_SKEW, maximum=MAX_SKEW),
        dedup_window=s.get_int("dedup_window", DEFAULT_DEDUP_WINDOW, maximum=MAX_SECONDS),
        dedup_prefix=s.get_str("dedup_prefix", DEFAULT_DEDUP_PREFIX),
    )
    if not config.dedup_prefix or len(config.dedup_prefix) > MAX_PREFIX_LEN:
        s.errors.append(f"security.dedup_prefix: must be 1 to {MAX_PREFIX_LEN} characters")
    if config.require_signed and not config.keys:
        s.errors.append("security.keys: required when security.require_signed = true")
    return config
