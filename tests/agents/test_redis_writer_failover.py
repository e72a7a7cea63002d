"""The batched writer through a real failover: a primary of a 3-primary,
3-replica Redis Cluster is killed and its replica promoted while the writer
goes on, never restarted; and what an agent's /readyz says meanwhile."""

from __future__ import annotations

import json
import re
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from tests.agents.dnstap.builders import response_wire
from tests.agents.test_metrics import _answers, agent_process
from tests.agents.test_redis_writer_cluster import cluster_writer
from tests.helpers import RedisCluster, free_port, needs_root, wait_for
from tests.metrics_scrape import get, ready, samples, value

FAILOVER_TIMEOUT = 60.0  # s; a 1 s node timeout fails over in ~2-4 s, far longer under load


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
        promoted = cluster.wait_promoted(victim, heirs, FAILOVER_TIMEOUT)
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


RESPONSES_PER_TICK = 20  # DNS answers sniffed every 20 ms: ~1,000/s, over ~1,000 slots


@needs_root
@pytest.mark.timeout(120)
def test_readyz_names_the_slots_a_failover_leaves_unanswered(
    replicated_cluster: RedisCluster, tmp_path: Path
) -> None:
    """`pcapd agent dnswire` sniffing answers on `lo` into a 3+3 cluster: a
    primary is killed, and until its replica took over /readyz fails on
    `redis_slots`, naming it, while `redis` (the rest answers) and /healthz
    stay fine; then it is ready again by itself."""
    cluster = replicated_cluster
    dns_port, metrics_port = free_port(), free_port()
    base = f"http://127.0.0.1:{metrics_port}"
    config = tmp_path / "dnswire.toml"
    config.write_text(f"""
[redis]
cluster = true
nodes = {json.dumps(cluster.nodes)}

[agents.dnswire]
interface = "lo"
ports = [{dns_port}]
stats_interval = 0
batch_ops = 100
flush_interval = 0.01
metrics_listen = "127.0.0.1:{metrics_port}"
""")
    stop = threading.Event()

    def answer() -> None:
        # From a resolver's port on lo to clients: each answer a new address.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            out.bind(("127.0.0.53", dns_port))
            n = 0
            while not stop.is_set():
                for _ in range(RESPONSES_PER_TICK):
                    n += 1
                    address = f"198.18.{n // 250 % 250}.{n % 250 + 1}"
                    wire = response_wire(f"h{n}.example.", "A", [(f"h{n}.example.", "A", address)])
                    out.sendto(wire, ("127.0.0.61", 40_000))
                stop.wait(0.02)

    argv = [sys.executable, "-m", "pcapd", "agent", "dnswire", "-c", str(config)]
    sender = threading.Thread(target=answer, daemon=True)
    with agent_process(argv, tmp_path / "dnswire.log"):
        sender.start()
        try:

            def slots_ok() -> bool:
                code, report = ready(base)
                check = report["checks"].get("redis_slots")
                return code == 200 and check == {
                    "ok": True, "detail": "every hash slot written to answered"}  # fmt: skip

            wait_for(lambda: _answers(base), timeout=20)
            wait_for(slots_ok, timeout=30)
            victim = cluster.primaries()[1]
            # Its replica in step with it, so that the replica may take over.
            wait_for(lambda: cluster.replicated(victim), timeout=30, interval=0.05)
            heirs = cluster.replicas_of(victim)
            cluster.kill(victim)
            seen: list[dict[str, Any]] = []

            def degraded() -> bool:
                code, report = ready(base)
                seen[:] = [report]
                return code == 503 and not report["checks"]["redis_slots"]["ok"]

            wait_for(degraded, timeout=FAILOVER_TIMEOUT, interval=0.05)
            checks = seen[0]["checks"]
            detail = checks["redis_slots"]["detail"]
            assert re.fullmatch(
                rf'degraded: no answer or a "not now" for writes to \d+ slot\(s\) on '
                rf"127\.0\.0\.1:{victim}; "
                "they wait in the queue and are retried", detail,
            ), detail  # fmt: skip
            # Not dead: the other primaries answer, the capture goes on.
            assert checks["redis"] == {"ok": True, "detail": "reachable"}
            assert checks["input"]["ok"] is True
            assert get(base + "/healthz")[0] == 200
            found = samples(base)
            assert value(found, "pcapd_agent_redis_connected", agent="dnswire") == 1
            assert value(found, "pcapd_agent_redis_slots_unanswered", agent="dnswire") > 0

            cluster.wait_promoted(victim, heirs, FAILOVER_TIMEOUT)
            wait_for(slots_ok, timeout=40, interval=0.1)
            assert value(samples(base), "pcapd_agent_redis_slots_unanswered") == 0
        finally:
            stop.set()
            sender.join(10)


@pytest.mark.timeout(120)
def test_a_silent_primary_s_replica_taking_over_gets_its_held_writes(
    replicated_cluster: RedisCluster,
) -> None:
    """A primary stops answering (SIGSTOP) and its replica takes over while
    it is still silent: the writer, which sends it no writes and only PINGs
    it, reads the slot map again after each unanswered PING, so what its
    slots held goes to the new primary and readiness is whole again, the
    old one still paused. Without that nothing read the map (the other
    primaries answered): its slots' writes waited for the paused node."""
    cluster = replicated_cluster
    writer = cluster_writer(cluster.url, flush_interval=0.01)
    primaries = cluster.primaries()
    victim = next(port for port in primaries if port != cluster.ports[0])
    try:
        first = [_key(n) for n in range(300)]
        writer.extend(first, [1] * len(first))
        wait_for(lambda: writer.stats.written_ops == len(first), timeout=30)
        wait_for(lambda: cluster.replicated(victim), timeout=30, interval=0.05)
        theirs = cluster.slots_of(victim)
        held = [key for key in first if key_slot(key.encode()) in theirs]
        heirs = cluster.replicas_of(victim)
        # Its replica takes over only after the writer's first timeout, which
        # reads the map again: from then on only the PINGs could see it.
        _replica_failover(cluster, heirs, allowed=False)
        cluster.procs[victim].send_signal(signal.SIGSTOP)
        writer.extend(held, [1] * len(held))
        wait_for(lambda: writer.stats.redis_errors >= 1, timeout=30)  # it fell silent
        _replica_failover(cluster, heirs, allowed=True)

        def taken_over() -> bool:  # asked of a primary that answers, not the paused one
            return victim not in cluster.primaries()

        wait_for(taken_over, timeout=FAILOVER_TIMEOUT, interval=0.2)
        wait_for(lambda: writer.stats.written_ops == len(first) + len(held), timeout=40)
        wait_for(lambda: not writer.unanswered, timeout=20)
        assert writer.stats.dropped_ops == 0
    finally:
        cluster.procs[victim].send_signal(signal.SIGCONT)
        writer.stop(30)


def _replica_failover(cluster: RedisCluster, replicas: list[int], *, allowed: bool) -> None:
    for port in replicas:
        with cluster.node(port) as node:
            node.config_set("cluster-replica-no-failover", "no" if allowed else "yes")
