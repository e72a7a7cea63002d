"""The test helpers' own promises, where a test relies on them."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from tests.helpers import (
    CLUSTER_BUS_OFFSET,
    NodeExited,
    RedisCluster,
    free_cluster_port,
    wait_for,
)


@pytest.mark.timeout(120)
def test_a_cluster_with_replicas_resets_to_empty(replicated_cluster: RedisCluster) -> None:
    """`reset()` on 3 primaries with a replica each: every node, replicas
    too, ends with no key, no script and no user but `default`."""
    cluster = replicated_cluster
    client = cluster.client()
    for index in range(100):
        client.set(f"k{index}", index)
    sha = client.script_load("return 1")
    for port in cluster.primaries():
        wait_for(lambda p=port: cluster.replicated(p), timeout=30)
    with cluster.node(cluster.ports[0]) as node:
        node.acl_setuser("someone", enabled=True)
    assert sum(_keys(cluster, port) for port in cluster.ports) == 200  # replicas hold them too
    client.close()

    cluster.reset()
    for port in cluster.ports:
        with cluster.node(port) as node:
            assert (node.dbsize(), node.acl_users()) == (0, ["default"]), port
            assert node.script_exists(sha) == [False], port


def _keys(cluster: RedisCluster, port: int) -> int:
    with cluster.node(port) as node:
        return int(node.dbsize())


def test_a_node_whose_bus_port_is_taken_is_said_at_once_not_after_the_ping_wait(
    tmp_path: Path,
) -> None:
    """Another process on a node's cluster bus port: its redis-server exits,
    which is said within a moment (so the cluster picks another port), not
    after the 10 s a slow start may take."""
    cluster = RedisCluster(tmp_path / "cluster")
    port = free_cluster_port()
    with socket.create_server(("127.0.0.1", port + CLUSTER_BUS_OFFSET)):
        began = time.monotonic()
        with pytest.raises(NodeExited, match=f"port {port} exited"):
            cluster.start_node(port)
    assert time.monotonic() - began < 8 and port not in cluster.procs
