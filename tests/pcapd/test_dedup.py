from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
import redis

from pcapd.dedup import DEFAULT_MAX_IDS, REDIS_RETRY_AFTER, RecentIds, RedisSeen
from tests.helpers import RedisCluster, RedisServer, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_second_sighting_within_window_is_a_duplicate() -> None:
    ids = RecentIds(10, Clock())
    assert ids.seen("a") is False
    assert ids.seen("a") is True
    assert ids.seen("b") is False


def test_window_expiry_counts_from_first_sighting() -> None:
    clock = Clock()
    ids = RecentIds(10, clock)
    ids.seen("a")
    clock.now += 9.9
    assert ids.seen("a") is True  # a repeat does not restart the window
    clock.now += 0.2  # 10.1 s after the first sighting
    assert "a" not in ids
    assert ids.seen("a") is False
    clock.now += 9.9
    assert ids.seen("a") is True


def test_expired_entries_are_dropped() -> None:
    clock = Clock()
    ids = RecentIds(5, clock)
    for n in range(100):
        ids.seen(f"id{n}")
    assert len(ids) == 100
    clock.now += 5
    assert len(ids) == 0


def test_contains_peeks_without_recording() -> None:
    ids = RecentIds(10, Clock())
    assert "a" not in ids
    assert ids.seen("a") is False, "the peek recorded nothing"
    assert "a" in ids


def test_size_is_bounded_and_oldest_go_first() -> None:
    ids = RecentIds(3600, Clock(), max_ids=3)
    for name in ("a", "b", "c", "d"):
        assert ids.seen(name) is False
    assert len(ids) == 3
    assert ids.evicted == 1
    assert "a" not in ids, "the oldest was evicted"
    assert ids.seen("d") is True
    assert ids.seen("a") is False  # forgotten early: the price of the bound


def test_default_bound() -> None:
    ids = RecentIds(3600, Clock())
    for n in range(DEFAULT_MAX_IDS + 10):
        ids.seen(str(n))
    assert len(ids) == DEFAULT_MAX_IDS
    assert ids.evicted == 10


def test_concurrent_sightings_record_each_id_once() -> None:
    ids = RecentIds(60)
    fresh: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for n in range(2000):
            first = not ids.seen(f"id{n}")
            with lock:
                fresh.append(first)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(fresh) == 2000, "each id is new exactly once across all threads"


@pytest.mark.parametrize(("window", "max_ids"), [(0, 10), (-1, 10), (10, 0)])
def test_bad_bounds_are_refused(window: float, max_ids: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RecentIds(window, max_ids=max_ids)


def redis_seen(
    server: RedisServer | redis.Redis, kind: str = "id", node: str = "n1", window: float = 60
) -> RedisSeen:
    client = server if isinstance(server, redis.Redis) else server.client()
    return RedisSeen(client, prefix="t:seen:", kind=kind, node=node, window_seconds=window)


def test_a_served_request_is_seen_by_the_next_run(redis_srv: RedisServer) -> None:
    first = redis_seen(redis_srv)
    assert first.seen("r1") is False
    first.served("r1")
    restarted = redis_seen(redis_srv)  # a new process: empty memory, same Redis
    assert restarted.seen("r1") is True
    assert redis_srv.client().get("t:seen:id:n1:r1") == b"served"
    assert 0 < redis_srv.client().ttl("t:seen:id:n1:r1") <= 60


def test_a_request_claimed_by_a_run_that_died_is_taken_over_not_refused(
    redis_srv: RedisServer,
) -> None:
    died = redis_seen(redis_srv)
    assert died.seen("r1") is False  # claimed, then killed mid-capture
    restarted = redis_seen(redis_srv)
    assert restarted.seen("r1") is False  # the source's redelivery is captured
    assert redis_srv.client().get("t:seen:id:n1:r1") == restarted.instance.encode()
    assert restarted.seen("r1") is True and redis_seen(redis_srv).seen("r1") is False
    restarted.served("r1")
    assert redis_seen(redis_srv).seen("r1") is True


def test_redis_seen_is_per_node_and_per_kind(redis_srv: RedisServer) -> None:
    n1, n2 = redis_seen(redis_srv, node="n1"), redis_seen(redis_srv, node="n2")
    sigs = redis_seen(redis_srv, kind="sig", node="n1")
    assert (n1.seen("r1"), n2.seen("r1"), sigs.seen("r1")) == (False, False, False)
    n1.served("r1")
    assert (redis_seen(redis_srv, node="n1").seen("r1"), n2.seen("r1")) == (True, True)
    assert sorted(redis_srv.client().keys("t:seen:*")) == [
        b"t:seen:id:n1:r1", b"t:seen:id:n2:r1", b"t:seen:sig:n1:r1",
    ]  # fmt: skip


def test_redis_seen_forget_lets_it_come_again_after_a_restart(redis_srv: RedisServer) -> None:
    seen = redis_seen(redis_srv)
    seen.seen("r1")
    seen.forget("r1")
    assert redis_seen(redis_srv).seen("r1") is False


def test_redis_away_falls_back_to_memory_says_so_and_comes_back(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    seen = RedisSeen(
        redis.Redis(port=redis_srv.port, socket_timeout=1, socket_connect_timeout=1),
        prefix="t:seen:", kind="id", node="n1", window_seconds=60, clock=clock,
    )  # fmt: skip
    redis_srv.stop()
    with caplog.at_level(logging.WARNING, logger="pcapd.dedup"):
        assert seen.seen("r1") is False
        assert seen.seen("r1") is True  # the in-memory window still holds
    [record] = caplog.records  # once per outage, not once per request
    fields = getattr(record, "pcapd_fields", {})
    assert (record.getMessage(), fields["kind"]) == ("dedup_redis_unavailable", "id")
    assert (
        fields["fallback"] == "memory only, window 60 s" and str(redis_srv.port) in fields["error"]
    )
    redis_srv.start()
    clock.now += REDIS_RETRY_AFTER
    assert seen.seen("r2") is False and seen.seen("r1") is True  # what memory saw still counts
    assert redis_srv.client().exists("t:seen:id:n1:r2") == 1


def test_served_marks_can_wait_for_the_results_pipeline(redis_srv: RedisServer) -> None:
    queued: list[Any] = []
    client = redis_srv.client()
    seen = RedisSeen(client, prefix="t:seen:", kind="id", node="n1", window_seconds=60,
                     later=queued.append)  # fmt: skip
    assert seen.claim("r1") is False
    seen.served("r1")
    assert client.get("t:seen:id:n1:r1") == seen.instance.encode()  # not yet
    [mark] = queued
    [(key, command)] = mark.writes
    assert key == "t:seen:id:n1:r1"
    client.execute_command(*command)  # type: ignore[no-untyped-call]
    assert client.get("t:seen:id:n1:r1") == b"served"
    assert 0 < client.ttl("t:seen:id:n1:r1") <= 60
    assert redis_seen(redis_srv).seen("r1") is True


def test_a_dead_primary_is_logged_once_not_flapping(
    private_cluster: RedisCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """150 claims across a cluster with one primary killed: the claims of the
    live primaries are answered in the same batches as the dead one's
    errors, and do not make the set log Redis back and away by turns; once
    the node is back, one line says so."""
    clock = Clock()
    dead = private_cluster.ports[2]
    with private_cluster.client() as client:
        seen = RedisSeen(
            client, prefix="t:seen:", kind="id", node="n1", window_seconds=60, clock=clock
        )
        assert seen.claim("warm") is False  # the script is loaded, the slot map read
        private_cluster.kill(dead)
        with caplog.at_level(logging.WARNING, logger="pcapd.dedup"):
            tickets = [seen.claim_soon(f"k{n}") for n in range(150)]
            answers = [ticket.wait() for ticket in tickets]
        assert answers == [False] * 150
        lines = [r.getMessage() for r in caplog.records if r.name == "pcapd.dedup"]
        assert lines == ["dedup_redis_unavailable"]
        private_cluster.start_node(dead)
        wait_for(private_cluster.ok, timeout=60)
        caplog.clear()

        def back() -> bool:
            clock.now += REDIS_RETRY_AFTER
            seen.claim_soon(f"again{clock.now}").wait()
            return "dedup_redis_back" in caplog.text

        with caplog.at_level(logging.INFO, logger="pcapd.dedup"):
            wait_for(back, timeout=60)
        lines = [r.getMessage() for r in caplog.records if r.name == "pcapd.dedup"]
        assert lines.count("dedup_redis_back") == 1
