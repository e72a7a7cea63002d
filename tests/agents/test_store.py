"""The key schema and the batched writer against a real redis-server."""

from __future__ import annotations

from typing import Any

import redis

from agents.store import (
    RedisWriter,
    client_key,
    cname_key,
    dns_key,
    flow_key,
    icmp_key,
    nx_key,
    peer_key,
    rst_key,
)
from tests.helpers import RedisServer, free_port, wait_for


def writer_for(url: str, **options: Any) -> RedisWriter:
    writer = RedisWriter(lambda: redis.Redis.from_url(url, socket_timeout=2), ttl=900, **options)
    writer.start()
    return writer


def test_keys_are_spelled_as_shodohflo_reads_them() -> None:
    assert client_key("10.0.0.1") == "client;10.0.0.1"
    assert dns_key("10.0.0.1", "1.2.3.4") == "10.0.0.1;1.2.3.4;dns"
    assert cname_key("10.0.0.1", "b.example.") == "10.0.0.1;b.example.;cname"
    assert nx_key("10.0.0.1", "nope.example.") == "10.0.0.1;nope.example.;nx"
    assert flow_key("10.0.0.1", "1.2.3.4", 443) == "10.0.0.1;1.2.3.4;443;flow"
    assert peer_key("a", "b") == "a;b;peer"
    assert rst_key("10.0.0.1", "1.2.3.4", 5555, 80) == "10.0.0.1;1.2.3.4;5555:80;rst"
    assert icmp_key("10.0.0.1", "1.2.3.4", 5555, 53, 3) == "10.0.0.1;1.2.3.4;5555:53;3;icmp"


def test_incr_and_append_once_with_ttl(redis_srv: RedisServer) -> None:
    writer = writer_for(redis_srv.url)
    for _ in range(3):
        writer.incr("client;c")
        writer.append("c;1.2.3.4;dns", "a.example.")
    writer.append("c;1.2.3.4;dns", "b.example.")
    writer.stop()
    client = redis_srv.client()
    assert client.get("client;c") == b"3"
    assert client.get("c;1.2.3.4;dns") == b";a.example.;;b.example.;"
    assert 890 <= client.ttl("client;c") <= 900 and 890 <= client.ttl("c;1.2.3.4;dns") <= 900
    assert (writer.stats.written_ops, writer.stats.dropped_ops) == (7, 0)


def test_a_key_of_another_type_costs_that_key_not_the_batch(redis_srv: RedisServer) -> None:
    client = redis_srv.client()
    client.rpush("c;9.9.9.9;dns", "a list, not a string")
    client.set("client;x", "not a number")
    writer = writer_for(redis_srv.url)
    writer.append("c;9.9.9.9;dns", "a.example.")
    writer.incr("client;x")
    writer.incr("client;c")
    writer.stop()
    assert client.get("client;c") == b"1"
    assert (writer.stats.rejected_ops, writer.stats.written_ops) == (2, 1)
    again = writer_for(redis_srv.url)  # the queue is not wedged behind them
    again.incr("client;c")
    again.stop()
    assert client.get("client;c") == b"2"


def test_full_queue_drops_and_counts_never_blocks() -> None:
    writer = RedisWriter(
        lambda: redis.Redis(port=free_port(), socket_timeout=0.2),
        max_queue_ops=10, batch_ops=5,
    )  # fmt: skip
    for index in range(40):
        writer.incr(f"k{index}")
    writer.flush()
    assert writer.stats.dropped_ops == 30
    assert writer.queue_depth == 10


def test_what_is_queued_when_stopping_with_redis_down_is_counted_as_lost() -> None:
    writer = writer_for(f"redis://127.0.0.1:{free_port()}/0")
    for index in range(7):
        writer.incr(f"k{index}")
    writer.stop(timeout=0.5)
    assert writer.stats.dropped_ops == 7 and writer.queue_depth == 0
    assert writer.stats.redis_errors >= 1


def test_writes_resume_after_redis_comes_back(redis_srv: RedisServer) -> None:
    writer = writer_for(redis_srv.url)
    redis_srv.stop()
    writer.incr("client;late")
    writer.flush()
    wait_for(lambda: writer.stats.redis_errors >= 1)
    redis_srv.start()
    wait_for(lambda: writer.stats.written_ops == 1, timeout=15)
    writer.stop()
    assert redis_srv.client().get("client;late") == b"1"
