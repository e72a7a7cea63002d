"""The batched writer's round trips on a real redis-server: one call per
attempt (no hidden retries), and no extra command per send."""

from __future__ import annotations

import redis

from agents.redis_writer import RedisWriter
from agents.store import APPEND_SCRIPT
from tests.helpers import RedisServer, wait_for

HUGE = 30_000_000  # bytes: appending to such a value outlasts the socket timeout
TIMEOUT = 0.005  # s, the writer's socket timeout


def calls(admin: redis.Redis, command: str) -> int:
    stats = admin.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


def test_a_timed_out_call_is_sent_once_per_attempt(private_redis: RedisServer) -> None:
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    admin.set("10.0.0.1;192.0.2.1;dns", "x" * HUGE)  # the script's find takes a while
    admin.script_load(APPEND_SCRIPT)
    writer = RedisWriter(
        lambda: redis.Redis(port=private_redis.port, socket_timeout=TIMEOUT), flush_interval=0.02
    )
    writer.start()
    try:
        for _ in range(100):
            writer.incr("client;10.0.0.1")  # one INCRBY 100, in the slow round trip
        writer.append("10.0.0.1;192.0.2.1;dns", "new.example.")
        wait_for(lambda: writer.stats.redis_errors >= 3, timeout=30)
    finally:
        writer.stop(0)
    admin.ping()  # Redis is done with what was sent
    attempts = writer.stats.redis_errors + (1 if writer.stats.written_ops else 0)
    sent = calls(admin, "evalsha")
    # Each of the writer's attempts ran at most once in Redis: redis-py does
    # not resend on its own. At least once: a call whose reply was lost ran.
    assert 1 <= sent <= attempts
    assert int(admin.get("client;10.0.0.1") or 0) == 100 * sent
    admin.close()


def test_a_send_is_evalsha_alone_and_a_missing_script_is_loaded(
    private_redis: RedisServer,
) -> None:
    """No SCRIPT EXISTS before each send (redis-py's Script object asks it):
    one SCRIPT LOAD when Redis lacks the script, at the start and after a
    SCRIPT FLUSH, and the call that met NOSCRIPT sent again."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    writer = RedisWriter(lambda: redis.Redis(port=private_redis.port, socket_timeout=5),
                         flush_interval=0.01)  # fmt: skip
    writer.start()
    try:
        for rounds in (1, 2):
            for send in range(10):
                writer.extend([f"c;{rounds};{send};{i};dns" for i in range(300)], ["m."] * 300)
                writer.flush()
                want = 300 * (10 * rounds - 9 + send)
                wait_for(lambda want=want: writer.stats.written_ops == want)
            assert calls(admin, "script|load") == rounds  # once per load needed
            assert calls(admin, "script|exists") == 0
            admin.script_flush()
    finally:
        writer.stop(5)
    assert writer.stats.written_ops == 6000 and writer.stats.dropped_ops == 0
    assert admin.get("c;2;9;299;dns") == ";m.;"
    admin.close()


def test_stop_during_a_round_trip_counts_each_write_once(private_redis: RedisServer) -> None:
    """stop() returns while Redis holds the round trip (CLIENT PAUSE WRITE,
    longer than stop's timeout, shorter than the socket timeout): the
    sender counts the round trip when its replies come, once, and ends."""
    admin = redis.Redis(port=private_redis.port, decode_responses=True)
    writer = RedisWriter(lambda: redis.Redis(port=private_redis.port, socket_timeout=30),
                         flush_interval=0.01)  # fmt: skip
    writer.start()
    writer.incr("client;10.0.6.0")
    wait_for(lambda: writer.stats.written_ops == 1)
    admin.client_pause(8000, all=False)  # writes wait; this PING and the test's reads do not
    keys = [f"client;10.0.6.{index}" for index in range(1, 51)]
    for key in keys:
        writer.incr(key)
    writer.flush()
    # The round trip is under way: Redis holds the writer's connection.
    wait_for(lambda: int(admin.info("clients")["blocked_clients"]) >= 1)
    writer.stop(0.2)
    thread = writer._thread
    assert thread is not None and thread.is_alive()  # stop() did not wait it out
    wait_for(lambda: not thread.is_alive(), timeout=60)
    assert (writer.stats.written_ops, writer.stats.dropped_ops) == (51, 0)
    assert writer.stats.queued_ops == 51 and writer.queue_depth == 0
    assert admin.mget(keys) == ["1"] * 50
    admin.close()
