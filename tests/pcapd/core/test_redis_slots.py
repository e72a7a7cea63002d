"""`ping_alone`: one node PINGed on a connection outside its pool's count,
its answer or the error of its silence returned, never raised."""

from __future__ import annotations

import socket

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agents.redis_replies import answered, silent
from pcapd.core.redis_slots import ping_alone
from tests.helpers import RedisServer, free_port


def pool(port: int) -> redis.ConnectionPool:
    return redis.ConnectionPool(port=port, socket_timeout=0.3, socket_connect_timeout=0.3,
                                retry=Retry(NoBackoff(), 0))  # fmt: skip


def test_a_server_s_pong_and_the_pool_untouched(redis_srv: RedisServer) -> None:
    nodes = pool(redis_srv.port)
    assert ping_alone(nodes) in (b"PONG", "PONG")
    assert nodes._created_connections == 0


def test_silence_and_refusal_are_returned_not_raised() -> None:
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        reply = ping_alone(pool(mute.getsockname()[1]))
    assert isinstance(reply, redis.TimeoutError) and silent(reply) and not answered(reply)
    refused = ping_alone(pool(free_port()))
    assert isinstance(refused, redis.ConnectionError) and not silent(refused)
