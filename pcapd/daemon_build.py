"""What `pcapd serve` is built of, from the config: the deliverer (local
disk, the remote sinks, the spool) and the trigger sources."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pcapd.core import redis_conn
from pcapd.core.config import Config
from triggers.base import Delivery, TriggerSource
from triggers.redis_pubsub import RedisPubSubSource
from uploaders.base import Uploader
from uploaders.deliver import Deliverer
from uploaders.local import LocalUploader
from uploaders.remote import build_remote_uploaders
from uploaders.retry import RetryPolicy
from uploaders.spool import Spool


def build_deliverer(config: Config, stop: threading.Event) -> Deliverer:
    """Local disk first (fast, durable), then S3 and CloudShark in the order
    of their sections in the config file; a spool for the remote ones."""
    uploaders: list[Uploader] = []
    if config.general.writelocal:
        uploaders.append(LocalUploader(config.general.localdir))
    abandon = threading.Event()
    remote = build_remote_uploaders(config, abandon=abandon)
    uploaders.extend(remote)
    spool = Spool(config.delivery.spool_dir, config.delivery.spool_max_bytes) if remote else None
    retry = RetryPolicy.from_config(config.delivery, stop=stop)
    return Deliverer(uploaders, retry, spool, abandon)


def build_sources(
    config: Config, free_slots: Callable[[], int], refuse: Callable[[Delivery, str], None]
) -> list[TriggerSource]:
    sources: list[TriggerSource] = []
    if config.redis.listen:

        def connect_once() -> redis.Redis:
            # No silent retries inside redis-py: the source's own loop logs the
            # outage and backs off, so an operator sees Redis is down. On a
            # cluster: the node the subscription belongs on.
            client = redis_conn.connect(config.redis, retry=Retry(NoBackoff(), 0))
            return redis_conn.node_for_channel(
                client, config.redis.channel, sharded=config.redis.sharded_pubsub
            )

        sources.append(
            RedisPubSubSource(
                connect_once,
                config.redis.channel,
                config.redis.describe(),
                queue_bytes=config.redis.pubsub_queue_bytes,
                refuse=refuse,
                sharded=config.redis.sharded_pubsub,
            )
        )
    if config.redis.stream_listen:
        from triggers.redis_stream import RedisStreamSource

        sources.append(RedisStreamSource(config.redis, config.general.node, free_slots=free_slots))
    if config.sqs.listen:
        from triggers.sqs import SqsSource

        sources.append(
            SqsSource(
                config.sqs,
                free_slots=free_slots,
                max_request_bytes=config.general.max_request_bytes,
            )
        )
    return sources
