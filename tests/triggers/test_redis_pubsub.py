"""The pub/sub source against a real redis-server: deliveries, outage, resubscribe."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers import RedisServer, redis_server, wait_for
from triggers.base import Delivery
from triggers.redis_pubsub import MESSAGE_OVERHEAD, RedisPubSubSource


class Collector:
    def __init__(self, source: RedisPubSubSource) -> None:
        self.stop = threading.Event()
        self.got: list[Delivery] = []
        self.thread = threading.Thread(target=self._run, args=(source,), daemon=True)
        self.thread.start()

    def _run(self, source: RedisPubSubSource) -> None:
        for delivery in source.deliveries(self.stop):
            self.got.append(delivery)


@pytest.fixture
def source(redis_srv: RedisServer) -> Iterator[tuple[RedisPubSubSource, Collector]]:
    def connect() -> redis.Redis:
        return redis.Redis.from_url(redis_srv.url, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    src = RedisPubSubSource(connect, "capture", "test")
    collector = Collector(src)
    assert src.subscribed.wait(5)
    yield src, collector
    collector.stop.set()
    collector.thread.join(5)
    assert not collector.thread.is_alive(), "the source must return promptly on stop"


def test_yields_each_message_body_as_bytes(
    source: tuple[RedisPubSubSource, Collector], redis_srv: RedisServer
) -> None:
    _, collector = source
    redis_srv.client().publish("capture", b'{"node":"any"}')
    redis_srv.client().publish("capture", "second")
    wait_for(lambda: len(collector.got) == 2)
    assert [d.body for d in collector.got] == [b'{"node":"any"}', b"second"]
    assert collector.got[0].source == "redis-pubsub:capture"
    collector.got[0].ack()  # no-ops for pub/sub, but callable
    collector.got[0].release()


def test_outage_is_noticed_and_the_source_resubscribes(
    source: tuple[RedisPubSubSource, Collector],
    private_redis: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src, collector = source
    private_redis.stop()
    wait_for(lambda: not src.subscribed.is_set(), timeout=10)
    time.sleep(0.5)
    private_redis.start()
    assert src.subscribed.wait(15)
    private_redis.client().publish("capture", b"after")
    wait_for(lambda: [d.body for d in collector.got] == [b"after"])
    assert any("redis_unavailable" in r.getMessage() for r in caplog.records)


def test_wrong_password_backs_off_instead_of_spinning(tmp_path: Path) -> None:
    attempts = 0
    with redis_server(tmp_path, password="right") as server:

        def connect() -> redis.Redis:
            nonlocal attempts
            attempts += 1
            return redis.Redis(port=server.port, password="wrong", retry=Retry(NoBackoff(), 0))

        src = RedisPubSubSource(connect, "capture", "test")
        collector = Collector(src)
        time.sleep(1.6)
        collector.stop.set()
        collector.thread.join(5)
    # Backoff 0.2, 0.4, 0.8 ...: a handful of attempts, not thousands.
    assert 2 <= attempts <= 6
    assert not src.subscribed.is_set()


def test_a_full_queue_refuses_as_overloaded_and_the_rest_arrives_in_order(
    redis_srv: RedisServer,
) -> None:
    refused: list[tuple[bytes, str]] = []
    gate = threading.Event()  # the consumer is stuck until set, like a busy controller

    def connect() -> redis.Redis:
        return redis.Redis.from_url(redis_srv.url, socket_timeout=5)

    src = RedisPubSubSource(
        connect, "capture", "test", queue_bytes=10 * (1000 + MESSAGE_OVERHEAD),
        refuse=lambda delivery, reason: refused.append((delivery.body, reason)),
    )  # fmt: skip
    stop, got, holding = threading.Event(), [], threading.Event()

    def consume() -> None:
        for delivery in src.deliveries(stop):
            holding.set()
            gate.wait(10)
            got.append(delivery.body)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert src.subscribed.wait(5)
    bodies = [b"%04d" % i + b"x" * 996 for i in range(30)]
    redis_srv.client().publish("capture", bodies[0])
    assert holding.wait(5)
    pipe = redis_srv.client().pipeline(transaction=False)
    for body in bodies[1:]:
        pipe.publish("capture", body)
    pipe.execute()
    # One body is with the consumer, ten fill the queue, the rest are refused.
    wait_for(lambda: src.received == 30)
    assert [body for body, _ in refused] == bodies[11:]
    assert src.overloaded == 19
    assert refused[0][1] == (
        "overloaded: 10 requests (12560 bytes) are waiting to be handled; "
        "redis.pubsub_queue_bytes=12560"
    )
    gate.set()
    wait_for(lambda: len(got) == 11)
    assert got == bodies[:11]
    stop.set()
    thread.join(5)


def test_one_megabyte_messages_are_read_whole_and_fast(
    source: tuple[RedisPubSubSource, Collector], redis_srv: RedisServer
) -> None:
    src, collector = source
    bodies = [bytes([65 + i]) * (1 << 20) for i in range(20)]
    pipe = redis_srv.client().pipeline(transaction=False)
    for body in bodies:
        pipe.publish("capture", body)
    pipe.execute()
    wait_for(lambda: len(collector.got) == 20, timeout=20)
    assert [d.body for d in collector.got] == bodies
    assert src.subscribed.is_set() and src.drops == 0


def test_a_user_allowed_only_to_subscribe_still_subscribes(redis_srv: RedisServer) -> None:
    redis_srv.client().acl_setuser(
        "sub", enabled=True, passwords=["+pw"], channels=["capture"],
        commands=["-@all", "+subscribe", "+ping"],
    )  # fmt: skip

    def connect() -> redis.Redis:
        return redis.Redis(port=redis_srv.port, username="sub", password="pw", socket_timeout=5)

    src = RedisPubSubSource(connect, "capture", "test")
    collector = Collector(src)
    try:
        assert src.subscribed.wait(5)
        redis_srv.client().publish("capture", b"allowed")
        wait_for(lambda: [d.body for d in collector.got] == [b"allowed"])
    finally:
        collector.stop.set()
        collector.thread.join(5)


def test_received_is_stamped_off_the_socket_so_queue_time_counts(redis_srv: RedisServer) -> None:
    """Trigger latency runs from `received`: a body that waited in the queue
    behind a busy consumer carries the time it was read, not dequeued."""
    gate = threading.Event()
    src = RedisPubSubSource(lambda: redis.Redis.from_url(redis_srv.url, socket_timeout=5),
                            "capture", "test")  # fmt: skip
    stop, got, holding = threading.Event(), [], threading.Event()

    def consume() -> None:
        for delivery in src.deliveries(stop):
            holding.set()
            gate.wait(10)
            got.append(delivery)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    assert src.subscribed.wait(5)
    redis_srv.client().publish("capture", b"first")
    assert holding.wait(5)
    redis_srv.client().publish("capture", b"second")
    wait_for(lambda: src.received == 2)
    read_by = time.monotonic()
    time.sleep(1.0)  # "second" waits in the queue
    gate.set()
    wait_for(lambda: len(got) == 2)
    stop.set()
    thread.join(5)
    assert got[1].body == b"second" and got[1].received <= read_by
