"""Publishing result events: results channel, capped results stream, reply_to."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import redis

from pcapd.config import RedisConfig
from pcapd.events import ResultEvent
from pcapd.logs import event

log = logging.getLogger("pcapd.results")

PUBLISH_ATTEMPTS = 3


class ResultPublisher:
    """Sends each event to every place it belongs; Redis trouble costs a log line.

    Publishing is serialised: it costs a fraction of a millisecond, and
    redis-py 8 was seen to crash with AttributeError inside `connect()` when
    two threads opened pooled connections at once.
    """

    def __init__(self, connect: Callable[[], redis.Redis], config: RedisConfig) -> None:
        self._connect = connect
        self._client: redis.Redis | None = None
        self._lock = threading.Lock()
        self.config = config

    def publish(self, result: ResultEvent, reply_to: str | None = None) -> bool:
        with self._lock:
            return self._publish(result, reply_to)

    def _publish(self, result: ResultEvent, reply_to: str | None) -> bool:
        body = result.to_json()
        for attempt in range(1, PUBLISH_ATTEMPTS + 1):
            try:
                if self._client is None:
                    self._client = self._connect()
                pipe = self._client.pipeline(transaction=False)
                pipe.publish(self.config.results_channel, body)
                if self.config.results_stream:
                    pipe.xadd(
                        self.config.results_stream,
                        {"event": body},
                        maxlen=self.config.results_stream_maxlen,
                        approximate=True,
                    )
                if reply_to:
                    pipe.publish(reply_to, body)
                pipe.execute()
                return True
            except (redis.RedisError, OSError, AttributeError) as exc:
                self._client = None
                event(
                    log, "result_publish_failed", logging.WARNING,
                    id=result.id, attempt=attempt, error=str(exc),
                )  # fmt: skip
        event(log, "result_lost", logging.ERROR, id=result.id, result=body)
        return False
