"""The batched writer through a real failover: a primary of a 3-primary,
3-replica Redis Cluster is killed and its replica promoted while the writer
goes on, never restarted."""

from __future__ import annotations

import threading

import pytest
from redis.crc import key_slot

from tests.agents.test_redis_writer_cluster import cluster_writer
from tests.helpers import RedisCluster, wait_for

FAILOVER_TIMEOUT = 20.0  # s; a 1 s node timeout fails over in ~2-4 s


def _key(n: int) -> str:
    return f"10.200.76.{n // 250}.{n % 250};192.0.2.1;443;flow"


@pytest.mark.timeout(90)
def test_a_replica_promoted_mid_run_keeps_the_writer_going(
    replicated_cluster: RedisCluster,
) -> None:
    """Redis replication is asynchronous: a write a primary acknowledged but
    had not yet sent to its replica when it died is lost by Redis itself, and
    no client can see that. So the first batch is written, and the test waits
    until every replica's slave_repl_offset equals its primary's
    master_repl_offset, before it SIGKILLs a primary; the producer waits for
    that too. Then it goes on through the failover and after it: each of
    those writes is in the cluster or counted dropped, never lost unseen."""
    cluster = replicated_cluster
    writer = cluster_writer(cluster.url, batch_ops=100, flush_interval=0.01)
    submitted = 0
    stop = threading.Event()

    def produce(until: int) -> None:
        nonlocal submitted
        while submitted < until and not stop.is_set():
            for _ in range(50):
                submitted += 1
                writer.incr(_key(submitted), submitted % 7 + 1)
            stop.wait(0.01)

    first = 3_000
    produce(first)
    wait_for(lambda: writer.stats.written_ops == first, timeout=30)
    for primary in cluster.primaries():
        wait_for(lambda p=primary: cluster.replicated(p), timeout=30, interval=0.05)
    # The URL's one seed, if it is a primary: the writer must not need it again.
    primaries = cluster.primaries()
    victim = cluster.ports[0] if cluster.ports[0] in primaries else primaries[0]
    heirs = cluster.replicas_of(victim)
    producer = threading.Thread(target=produce, args=(10**9,))
    cluster.kill(victim)
    producer.start()
    try:
        found: list[int | None] = [None]

        def promoted_yet() -> bool:
            found[0] = cluster.promoted(victim, heirs)
            return found[0] is not None

        wait_for(promoted_yet, timeout=FAILOVER_TIMEOUT, interval=0.1)
        promoted = found[0]
        assert promoted is not None
        after = submitted
        # Connected again, and writes made after the promotion are taken.
        wait_for(lambda: writer.connected and writer.stats.written_ops > after, timeout=20)
        wait_for(lambda: submitted > after + 2_000, timeout=20)
    finally:
        stop.set()
        producer.join(30)
    last = submitted
    writer.stop(30)
    stats = writer.stats
    assert stats.written_ops + stats.dropped_ops == last
    assert stats.redis_errors > 0  # it did see the primary go

    numbers = range(1, last + 1)
    read = cluster.client().mget_nonatomic([_key(n) for n in numbers])
    values = {n: int(value or 0) for n, value in zip(numbers, read, strict=True)}
    # The replicated first batch survived the failover, each with its value.
    assert [n for n in range(1, first + 1) if values[n] != n % 7 + 1] == []
    # What came after: present (a write whose answer was lost with the node
    # may have been sent twice) or counted dropped; never absent and counted.
    missing = [n for n in range(first + 1, last + 1) if not values[n]]
    assert len(missing) <= stats.dropped_ops
    assert all(values[n] in (n % 7 + 1, 2 * (n % 7 + 1)) for n in values if values[n])
    # Writes after the promotion landed on the new primary, the old one's slots.
    slots = cluster.slots_of(promoted)
    moved = [n for n in range(after + 1, last + 1) if key_slot(_key(n).encode()) in slots]
    assert moved
    with cluster.node(promoted) as node, node.pipeline(transaction=False) as pipe:
        for n in moved:
            pipe.get(_key(n))
        assert all(pipe.execute())
