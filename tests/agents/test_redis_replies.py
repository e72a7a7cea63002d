"""What `agents.redis_replies` makes of a reply: a silent server (a
timeout, reading or connecting) told from one that refuses or answers."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from agents.redis_replies import answered, silent
from pcapd.core.redis_conn import not_sent
from tests.helpers import RedisServer, free_port


@pytest.fixture
def mute_listener() -> Iterator[int]:
    """A loopback port that accepts and never answers (a paused server)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def failure(*command: str, **options: object) -> redis.RedisError:
    """What redis-py raises for `command` (PING if none) on a client of `options`."""
    once = Retry(NoBackoff(), 0)  # redis-py's own retries would try it again and again
    client = redis.Redis(retry=once, **options)  # type: ignore[arg-type]
    with pytest.raises(redis.RedisError) as caught, client:
        client.execute_command(*(command or ("PING",)))  # type: ignore[no-untyped-call]
    return caught.value


def test_a_server_that_never_answers_is_silent(mute_listener: int) -> None:
    error = failure(port=mute_listener, socket_timeout=0.2)
    assert isinstance(error, redis.TimeoutError)
    assert silent(error) and not answered(error)


def test_a_connection_that_timed_out_is_silent_as_never_sent(mute_listener: int) -> None:
    """What could not be written for a connect timeout: NotSent, its cause
    kept, so still silent; a connection refused is not."""
    # A listener whose backlog is full drops the SYNs past it: connect times out.
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        queued = []
        while True:  # connected until the backlog is full: then one times out
            conn = socket.socket()
            conn.settimeout(0.3)
            queued.append(conn)
            try:
                conn.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        try:
            error = failure(port=port, socket_connect_timeout=0.3, socket_timeout=0.3)
        finally:
            for conn in queued:
                conn.close()
    assert isinstance(error, redis.TimeoutError), error
    assert silent(not_sent(error))
    refused = failure(port=free_port(), socket_connect_timeout=0.3)
    assert isinstance(refused, redis.ConnectionError)
    assert not silent(refused) and not silent(not_sent(refused))


def test_an_error_reply_is_an_answer_not_silence(redis_srv: RedisServer) -> None:
    error = failure("NOSUCHCOMMAND", port=redis_srv.port)
    assert isinstance(error, redis.ResponseError)
    assert answered(error) and not silent(error)
