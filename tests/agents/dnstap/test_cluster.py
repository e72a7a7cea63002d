"""dnstap from a real BIND into a real 3-primary Redis Cluster: the keys and
values one redis-server gets from the same frames, spread over all primaries."""

from __future__ import annotations

from pathlib import Path

import redis

from tests.agents.dnstap.harness import running_agent
from tests.agents.dnstap.resolvers import bind, dig
from tests.helpers import RedisCluster, RedisServer, keyspace, wait_for

CLIENTS = [f"127.0.0.{n}" for n in range(71, 77)]


def test_bind_dnstap_lands_in_a_cluster_as_in_one_server(
    tmp_path: Path, redis_cluster: RedisCluster, redis_srv: RedisServer
) -> None:
    sock = tmp_path / "dnstap.sock"
    frames: list[bytes] = []
    with (
        running_agent(redis_cluster.url, sock, record=frames) as agent,
        bind(tmp_path / "bind", sock) as named,
    ):
        for client in CLIENTS:
            assert "192.0.2.10" in dig(named.port, "www.example.test", "A", client)
            assert "198.51.100.7" in dig(named.port, "alias.example.test", "A", client)
            assert dig(named.port, "nope.example.test", "A", client) == ""
        wait_for(lambda: len(frames) >= 3 * len(CLIENTS), timeout=20)
        wait_for(agent.flushed, timeout=20)
        assert agent.agent.writer.stats.dropped_ops == 0
    # The same frames, into one server.
    with running_agent(redis_srv.url, None, listen="127.0.0.1:0") as single:
        single.send(frames)
        # Every frame read, then everything sent: the count of ops written
        # depends on how the writer's windows happened to merge them.
        wait_for(lambda: sum(single.snapshot()["messages"].values()) == len(frames), timeout=20)
        wait_for(single.flushed, timeout=20)
    one = keyspace(redis.Redis(port=redis_srv.port, decode_responses=True))
    # BIND's readiness probe (from 127.0.0.1) may or may not reach the agent.
    mine = [key for key in one if key.split(";")[0] in CLIENTS or key.split(";")[1] in CLIENTS]
    assert len(mine) == 7 * len(CLIENTS)  # client, 2 + 1 dns, 2 cname, nx per client
    assert one[f"client;{CLIENTS[0]}"] == ("string", "4")
    wait_for(lambda: redis_cluster.keyspace() == one, timeout=10)
    held = [int(redis_cluster.node(port).dbsize()) for port in redis_cluster.ports]
    assert all(held) and sum(held) == len(one), held
