"""Result events reach the channel, the capped stream and reply_to, and wait
(bounded) for Redis instead of holding up the threads that report them."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

from pcapd.core import results as results_module
from pcapd.core.config import RedisConfig
from pcapd.core.events import ResultEvent
from pcapd.core.redis_conn import connect
from pcapd.core.results import ResultPublisher
from tests.helpers import RedisServer, wait_for
from tests.pcapd.daemon_fixture import Results


def publisher(server: RedisServer, **fields: Any) -> ResultPublisher:
    config = RedisConfig(port=server.port, results_stream_maxlen=50, **fields)
    return ResultPublisher(lambda: connect(config, socket_timeout=1, socket_connect_timeout=1),
                           config)  # fmt: skip


def result(n: int) -> ResultEvent:
    return ResultEvent(id=f"r{n}", node="n1", status="empty", interface="lo")


def test_channel_stream_and_reply_to(redis_srv: RedisServer) -> None:
    channel, reply = Results(redis_srv), Results(redis_srv, channel="mine")
    try:
        assert publisher(redis_srv).publish(result(1), reply_to="mine")
        assert channel.next()["id"] == reply.next()["id"] == "r1"
    finally:
        channel.close()
        reply.close()
    stream: Any = redis_srv.client().xrange("capture-results")
    assert [json.loads(fields[b"event"])["id"] for _, fields in stream] == ["r1"]


def test_stream_is_capped(redis_srv: RedisServer) -> None:
    pub = publisher(redis_srv)
    for n in range(500):
        pub.publish(result(n))
    # MAXLEN ~ trims by whole macro-nodes: about the cap (50), never below it
    # and never unbounded.
    assert 50 <= redis_srv.client().xlen("capture-results") < 250


def test_queued_results_wait_for_redis_without_blocking(private_redis: RedisServer) -> None:
    pub = publisher(private_redis)
    pub.start()
    private_redis.stop()
    began = time.monotonic()
    for n in range(20):
        pub.submit(result(n))
    assert time.monotonic() - began < 0.5  # the caller never waits on Redis
    time.sleep(0.5)
    private_redis.start()
    wait_for(lambda: private_redis.client().xlen("capture-results") == 20, timeout=20)
    assert pub.stop(5) == 0 and pub.dropped == 0


def test_queue_is_bounded_and_losses_are_counted(
    private_redis: RedisServer, monkeypatch: Any
) -> None:
    monkeypatch.setattr(results_module, "MAX_PENDING", 5)
    pub = publisher(private_redis)
    pub.start()
    private_redis.stop()
    for n in range(12):
        pub.submit(result(n))
    assert pub.stop(0.5) == 5  # the newest MAX_PENDING were kept until the end
    assert pub.dropped == 12


def push(value: str, pipe: Any) -> None:
    pipe.rpush("order", value)


def test_later_commands_go_in_order_with_the_results(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    pub = publisher(redis_srv)
    pub.later(functools.partial(push, "unthreaded"))  # no thread: sent now
    assert client.lrange("order", 0, -1) == [b"unthreaded"]
    pub.start()
    try:
        channel = Results(redis_srv)
        try:
            for n in range(3):
                pub.submit(result(n))
                pub.later(functools.partial(push, f"after r{n}"))
            wait_for(lambda: client.llen("order") == 4, timeout=10)
            assert [channel.next()["id"] for _ in range(3)] == ["r0", "r1", "r2"]
        finally:
            channel.close()
    finally:
        assert pub.stop(5) == 0
    assert client.lrange("order", 1, -1) == [b"after r0", b"after r1", b"after r2"]
    stream: Any = client.xrange("capture-results")
    assert [json.loads(fields[b"event"])["id"] for _, fields in stream] == ["r0", "r1", "r2"]
