"""The test helpers' own promises, where a test relies on them."""

from __future__ import annotations

import pytest

from tests.helpers import RedisCluster, wait_for


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
