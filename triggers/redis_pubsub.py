"""Requests from a Redis pub/sub channel, as pcapdaemon listens for them.

Fire-and-forget: a node that is down when a request is published never sees
it (use the stream or SQS sources for durability). The connection is checked
with PINGs (`health_check_interval`) and re-established with capped backoff.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator

import redis

from pcapd.core.logs import event
from triggers.base import Delivery

log = logging.getLogger("pcapd.triggers.pubsub")

BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 10.0
POLL_INTERVAL = 0.5  # how often the loop looks at the stop flag (s)


class RedisPubSubSource:
    def __init__(self, connect: Callable[[], redis.Redis], channel: str, where: str) -> None:
        self._connect = connect
        self.channel = channel
        self.where = where
        self.name = f"redis-pubsub:{channel}"
        self.subscribed = threading.Event()  # set while subscribed; for tests and health

    def deliveries(self, stop: threading.Event) -> Iterator[Delivery]:
        backoff = BACKOFF_INITIAL
        while not stop.is_set():
            pubsub = None
            try:
                client = self._connect()
                pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                event(log, "subscribed", channel=self.channel, redis=self.where)
                backoff = BACKOFF_INITIAL
                while not stop.is_set():
                    message = pubsub.get_message(timeout=POLL_INTERVAL)
                    if message is None or message.get("type") != "message":
                        continue
                    data = message["data"]
                    body = data if isinstance(data, bytes) else str(data).encode()
                    yield Delivery(body=body, source=self.name)
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                event(
                    log, "redis_unavailable", logging.WARNING,
                    channel=self.channel, redis=self.where, error=str(exc),
                    retry_in=round(backoff, 2),
                )  # fmt: skip
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(redis.RedisError, OSError):
                        pubsub.close()
        self.subscribed.clear()
