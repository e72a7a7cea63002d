"""Write-combining: what the merged writes leave in a real redis-server (and a
real cluster) is what the same writes give one at a time, applied here by
plain commands, independently of the writer's script; and with combining
off, the writes reach Redis as queued and leave the same."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis

from agents.redis_wire import APPENDS, COUNTERS, _calls
from agents.redis_writer import RedisWriter
from agents.store import INCR, Op
from agents.write_window import Batch, Window
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.secret import Secret
from tests.helpers import RedisCluster, RedisServer, keyspace

TTL = 900
Ops = list[tuple[str, Op]]


def workload(seed: int, n: int = 3000) -> Ops:
    """Agents' writes with many repeats: INCR and INCRBY of a few counters,
    appends of a few members per key (names holding `;` too, which one
    append's `find` may see inside another's), and keys of a wrong type."""
    rng = random.Random(seed)
    ops: Ops = []
    for _ in range(n):
        client = f"10.0.0.{rng.randrange(8)}"
        roll = rng.random()
        if roll < 0.35:
            ops.append(
                (
                    f"client;{client}",
                    INCR if rng.random() < 0.7 else rng.randrange(1, 4),
                )
            )
        elif roll < 0.45:
            ops.append((f"{client};nope{rng.randrange(4)}.example.;nx", INCR))
        elif roll < 0.95:
            member = rng.choice(["a.example.", "b.example.", "a", "example.", "x;y", "y"])
            ops.append((f"{client};192.0.2.{rng.randrange(6)};dns", member))
        elif roll < 0.975:
            ops.append(("wrong;list;dns", rng.choice(["a.", "b."])))  # a list: WRONGTYPE
        else:
            ops.append(("client;not-a-number", INCR))  # a string that is no integer
    return ops


def seed_wrong_types(client: redis.Redis) -> None:
    client.rpush("wrong;list;dns", "a list, not a string")
    client.set("client;not-a-number", "text")


def one_at_a_time(client: redis.Redis, ops: Ops) -> int:
    """Each write as the unmerged agents meant it, by plain commands; returns
    the writes Redis refused."""
    refused = 0
    for key, arg in ops:
        try:
            if isinstance(arg, int):
                client.incrby(key, arg)
            else:
                value = client.get(key) or ""
                item = f";{arg};"
                if item not in value:
                    client.append(key, item)
            client.expire(key, TTL)
        except redis.ResponseError:
            refused += 1
    return refused


def merged(writer: RedisWriter, ops: Ops, chunk: int) -> None:
    """The writes handed over `chunk` at a time, as agents hand theirs over
    per dispatch, all within one window (the writer sends on stop)."""
    for at in range(0, len(ops), chunk):
        part = ops[at : at + chunk]
        writer.extend([k for k, _ in part], [a for _, a in part])


def ttls_set(client: redis.Redis) -> bool:
    return all(
        0 < client.ttl(key) <= TTL
        for key in client.scan_iter(count=1000)
        if client.type(key) == "string" and key not in ("client;not-a-number",)
    )


@pytest.mark.parametrize(("seed", "combine"), [(1, True), (2, True), (3, True), (5, False),
                                               (6, False)])  # fmt: skip
def test_merged_writes_leave_what_one_at_a_time_leaves(
    redis_srv: RedisServer, seed: int, combine: bool
) -> None:
    """And `write_combining = false`: one INCRBY per counter write, the
    appends as they came, a key of both kinds in the mix (in its order),
    the same key space."""
    ops = workload(seed)
    if not combine:
        ops += [("client;both", INCR), ("client;both", "m."), ("client;both", 2)]
    with redis.Redis(port=redis_srv.port, decode_responses=True) as plain:
        seed_wrong_types(plain)
        refused = one_at_a_time(plain, ops)
        expected = keyspace(plain)
        plain.flushall()
        seed_wrong_types(plain)
        plain.config_resetstat()
        writer = RedisWriter(
            lambda: redis.Redis(port=redis_srv.port, socket_timeout=5),
            ttl=TTL, flush_interval=30.0, batch_ops=7, combine=combine,
        )  # fmt: skip
        writer.start()
        merged(writer, ops, chunk=50)
        writer.stop(30)
        assert keyspace(plain) == expected
        assert ttls_set(plain)
        counters = sum(isinstance(arg, int) for _key, arg in ops)
        if combine:
            assert commands(plain, "incrby") < counters
        else:
            assert commands(plain, "incrby") == counters
    # Counted per write, as if nothing had been merged.
    stats = writer.stats
    assert (stats.written_ops, stats.rejected_ops) == (len(ops) - refused, refused)
    assert stats.queued_ops == len(ops) and stats.dropped_ops == refused > 0


def commands(client: redis.Redis, name: str) -> int:
    return int(client.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0))


def test_merging_sends_fewer_entries_than_writes() -> None:
    window = Window()
    keys = ["client;c", "c;k;dns", "client;c", "c;k;dns", "c;k;dns", "client;c"]
    args: list[Op] = [INCR, "a.", 3, "b.", "a.", INCR]
    assert window.add(keys, args, 0, 100) == (6, 0)
    assert (window.held, window.ops) == (3, 6)
    (batch,) = window.seal(10)
    # First-seen order; INCR + INCRBY 3 + INCR = INCRBY 5 for 3 writes; the
    # repeated append is one entry standing for 2.
    assert batch.keys == ["client;c", "c;k;dns", "c;k;dns"]
    assert batch.args == [5, "a.", "b."]
    assert batch.weights == [3, 2, 1]
    assert window.held == window.ops == 0


def test_a_key_of_both_kinds_is_not_merged_across() -> None:
    """INCR then append then INCR on one key: the window stops at the append
    for the writer to seal, so Redis sees them in their order."""
    window = Window()
    assert window.add(["k", "k", "k"], [INCR, "m", INCR], 0, 100) == (1, 0)


def test_a_full_window_still_merges_repeats() -> None:
    window = Window()
    assert window.add(["a", "b", "a", "c"], [INCR, "m", INCR, INCR], 0, 2) == (4, 1)
    assert (window.held, window.ops) == (2, 3)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("combine", [True, False])
def test_merged_writes_on_a_cluster_leave_what_one_server_does(
    redis_cluster: RedisCluster, redis_srv: RedisServer, combine: bool
) -> None:
    """And unmerged (write_combining off): the same key space."""
    ops = workload(4 if combine else 7, n=2000)
    options: dict[str, Any] = {"ttl": TTL, "flush_interval": 30.0, "batch_ops": 11,
                               "combine": combine}  # fmt: skip
    with redis.Redis(port=redis_srv.port, decode_responses=True) as plain:
        seed_wrong_types(plain)
        refused = one_at_a_time(plain, ops)
        expected = keyspace(plain)
        plain.flushall()
    with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0]) as nodes:
        nodes.rpush("wrong;list;dns", "a list, not a string")
        nodes.set("client;not-a-number", "text")
    url = Secret(redis_cluster.url)
    writer = RedisWriter(lambda: connect(RedisConfig(url=url)), **options)
    writer.start()
    merged(writer, ops, chunk=40)
    writer.stop(60)
    assert redis_cluster.keyspace() == expected
    assert (writer.stats.written_ops, writer.stats.rejected_ops) == (len(ops) - refused, refused)
    redis_cluster.reset()


def test_a_key_of_both_kinds_keeps_its_order_across_calls() -> None:
    """Unmerged writes (and a cluster slot's joined batches) can count and
    append to one key: the calls cut where a key comes as the other kind,
    so Redis sees its writes in their order; other keys ride along."""
    batch = Batch(["k", "a", "k", "b", "k"], ["x.", 1, 2, "y.", 3], [1] * 5)
    calls = [(kind, part.keys, part.args) for kind, part in _calls(batch, range(5), 10)]
    assert calls == [
        (COUNTERS, ["a"], [1]), (APPENDS, ["k"], ["x."]),
        (COUNTERS, ["k", "k"], [2, 3]), (APPENDS, ["b"], ["y."]),
    ]  # fmt: skip


def test_a_merged_window_seals_its_counters_first() -> None:
    """No key is of both kinds in one window: its batches lead with the
    counters (`counters` of them), which go as INCRBYs, the rest to the script."""
    window = Window()
    window.add(["c;a;dns", "client;c", "c;b;dns", "c;n;nx"], ["a.", 1, "b.", 1], 0, 100)
    first, second = window.seal(3)
    assert (first.keys, first.counters) == (["client;c", "c;n;nx", "c;a;dns"], 2)
    assert (second.keys, second.counters) == (["c;b;dns"], 0)
