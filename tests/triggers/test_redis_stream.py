"""RedisStreamSource against a private redis-server."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time

import pytest
import redis

from pcapd.core.config import RedisConfig
from tests.helpers import RedisServer, stop_process, wait_for
from tests.triggers.consumer import Consumer
from triggers.base import TriggerSource
from triggers.redis_stream import RedisStreamSource, publish_stream

STREAM = "capture-requests"


def stream_config(server: RedisServer) -> RedisConfig:
    return RedisConfig(port=server.port, stream_listen=True, stream=STREAM)


def pending(client: redis.Redis, group: str) -> int:
    return int(client.xpending(STREAM, group)["pending"])


def group_ready(client: redis.Redis, group: str) -> bool:
    try:
        return any(g["name"].decode() == group for g in client.xinfo_groups(STREAM))
    except redis.ResponseError:  # no such key yet
        return False


def start(server: RedisServer, node: str, backoff: float = 0.05) -> Consumer[RedisStreamSource]:
    source = RedisStreamSource(
        stream_config(server), node, block_ms=100, backoff_initial=backoff, backoff_max=4 * backoff
    )
    consumer = Consumer(source)
    client = server.client()
    wait_for(lambda: group_ready(client, node))
    return consumer


def test_every_node_gets_every_entry_and_ack_is_xack(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    nodes = [start(redis_srv, "web1"), start(redis_srv, "web2")]
    try:
        ids = [publish_stream(client, STREAM, f'{{"id": "r{n}"}}'.encode(), 1000) for n in range(3)]
        for consumer in nodes:
            got = [consumer.take() for _ in ids]
            assert [d.body for d in got] == [f'{{"id": "r{n}"}}'.encode() for n in range(3)]
            assert [d.message_id for d in got] == ids
            assert {d.source for d in got} == {"redis-stream"}
            group = consumer.source.group
            assert pending(client, group) == 3, "read but not acked: pending"
            for delivery in got:
                delivery.ack()
            assert pending(client, group) == 0
            got[0].ack()  # a second ack is a no-op
        assert all(c.got.empty() for c in nodes)
    finally:
        for consumer in nodes:
            consumer.close()


def test_pending_entry_of_a_dead_consumer_comes_back(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    first = RedisStreamSource(stream_config(redis_srv), "web1", block_ms=100)
    deliveries = first.deliveries(threading.Event())
    entry = publish_stream(client, STREAM, b'{"id": "late"}', 1000)
    # The group is created `NEW_GROUP_LOOKBACK` seconds back: an entry published
    # just before this node's group existed is still taken.
    delivery = next(deliveries)
    assert delivery.message_id == entry
    deliveries.close()  # died mid-capture, never acked
    assert pending(client, "web1") == 1
    publish_stream(client, STREAM, b'{"id": "next"}', 1000)
    again = start(redis_srv, "web1")
    try:
        redelivered = again.take()
        assert (redelivered.message_id, redelivered.body) == (entry, b'{"id": "late"}')
        assert again.take().body == b'{"id": "next"}'
        redelivered.ack()
        assert pending(client, "web1") == 1
    finally:
        again.close()


def test_entry_pending_for_another_consumer_name_is_claimed(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    client.xgroup_create(STREAM, "web1", id="0", mkstream=True)
    entry = publish_stream(client, STREAM, b'{"id": "old"}', 1000)
    client.xreadgroup("web1", "web1-old-pid", {STREAM: ">"}, count=1)
    consumer = start(redis_srv, "web1")
    try:
        delivery = consumer.take()
        assert delivery.message_id == entry
        delivery.ack()
        assert pending(client, "web1") == 0
    finally:
        consumer.close()


def test_reconnects_after_redis_restart(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    consumer = start(private_redis, "web1")
    try:
        with caplog.at_level(logging.INFO, logger="triggers.redis_stream"):
            private_redis.stop()  # no persistence: stream and group are gone
            wait_for(lambda: consumer.source.read_errors >= 2)
            private_redis.start()
            # Published possibly before the group exists again: still taken.
            publish_stream(private_redis.client(), STREAM, b'{"id": "after"}', 1000)
            delivery = consumer.take()
        assert delivery.body == b'{"id": "after"}'
        delivery.ack()
        assert pending(private_redis.client(), "web1") == 0
        assert "event=stream_read_failed" in caplog.text and "retry_in=" in caplog.text
    finally:
        consumer.close()


def test_ack_while_redis_is_away_is_sent_after_reconnect(private_redis: RedisServer) -> None:
    consumer = start(private_redis, "web1")
    try:
        publish_stream(private_redis.client(), STREAM, b'{"id": "a"}', 1000)
        delivery = consumer.take()
        private_redis.stop()
        delivery.ack()  # fails now; kept and sent again
        assert consumer.source.in_flight() == 1
        private_redis.start()
        wait_for(lambda: consumer.source.in_flight() == 0, timeout=10)
    finally:
        consumer.close()


def test_entry_without_body_is_logged_acked_and_skipped(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis_srv.client()
    consumer = start(redis_srv, "web1")
    try:
        with caplog.at_level(logging.WARNING, logger="triggers.redis_stream"):
            added = client.xadd(STREAM, {"node": "any", "interface": "lo"})
            bad = added.decode() if isinstance(added, bytes) else added
            publish_stream(client, STREAM, b'{"id": "good"}', 1000)
            assert consumer.take().body == b'{"id": "good"}'
        assert (
            f"event=stream_entry_malformed id={bad} stream={STREAM} missing=body "
            'fields="interface, node"'
        ) in caplog.text
        assert consumer.source.malformed == 1
        assert pending(client, "web1") == 1  # only the good one, not yet acked
    finally:
        consumer.close()


def test_reads_only_as_many_as_free_slots(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    slots = [0]
    source = RedisStreamSource(
        stream_config(redis_srv), "web1", free_slots=lambda: slots[0] - source.in_flight(),
        block_ms=100,
    )  # fmt: skip
    consumer = Consumer(source)
    wait_for(lambda: group_ready(client, "web1"))
    try:
        for n in range(4):
            publish_stream(client, STREAM, f'{{"id": "m{n}"}}'.encode(), 1000)
        time.sleep(0.3)
        assert consumer.got.empty() and pending(client, "web1") == 0, "no slot: nothing read"
        slots[0] = 2
        first = [consumer.take(), consumer.take()]
        time.sleep(0.3)
        assert consumer.got.empty() and pending(client, "web1") == 2
        first[0].ack()
        assert consumer.take().body == b'{"id": "m2"}'
    finally:
        consumer.close()


def test_release_leaves_entry_pending_for_the_next_start(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    consumer = start(redis_srv, "web1")
    publish_stream(client, STREAM, b'{"id": "r"}', 1000)
    delivery = consumer.take()
    delivery.release()
    consumer.close()
    assert pending(client, "web1") == 1
    again = start(redis_srv, "web1")
    try:
        assert again.take().message_id == delivery.message_id
    finally:
        again.close()


def test_stop_returns_promptly(redis_srv: RedisServer) -> None:
    source = RedisStreamSource(stream_config(redis_srv), "web1")  # default block
    consumer = Consumer(source)
    wait_for(lambda: group_ready(redis_srv.client(), "web1"))
    started = time.monotonic()
    consumer.close()
    assert time.monotonic() - started < 1.0


def test_publish_stream_trims_to_about_maxlen(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    for n in range(500):
        publish_stream(client, STREAM, f"{n}".encode(), 50)
    assert 50 <= client.xlen(STREAM) < 500
    last = publish_stream(client, STREAM, b"x", None)
    entries = client.xrange(STREAM, last, last)
    assert entries and entries[0][1] == {b"body": b"x"}


def test_is_a_trigger_source(redis_srv: RedisServer) -> None:
    source: TriggerSource = RedisStreamSource(stream_config(redis_srv), "web1")
    assert source.name == "redis-stream"


def test_killed_consumer_process_entry_is_taken_after_restart(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    script = (
        "import sys, threading\n"
        "from pcapd.core.config import RedisConfig\n"
        "from triggers.redis_stream import RedisStreamSource\n"
        "config = RedisConfig(port=int(sys.argv[1]), stream=sys.argv[2])\n"
        "for d in RedisStreamSource(config, 'web1').deliveries(threading.Event()):\n"
        "    print(d.message_id, flush=True)\n"
        "    threading.Event().wait()\n"  # mid-capture, never acks
    )
    entry = publish_stream(client, STREAM, b'{"id": "k"}', 1000)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(redis_srv.port), STREAM],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == entry
        proc.kill()
        proc.wait()
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
    assert pending(client, "web1") == 1
    restarted = start(redis_srv, "web1")
    try:
        delivery = restarted.take()
        assert (delivery.message_id, delivery.body) == (entry, b'{"id": "k"}')
        delivery.ack()
        assert pending(client, "web1") == 0
    finally:
        restarted.close()
