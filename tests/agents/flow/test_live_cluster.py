"""Live flows from a veth into a real 3-primary Redis Cluster, beside the same
flows into one redis-server: the two key spaces must be equal.

The cluster runs inside namespace A with the agents (a cluster has no unix
sockets, and the root namespace's loopback is not reachable from there); the
single server listens on a unix socket in the test's temp dir.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from tests.agents.flow import traffic
from tests.agents.flow.test_live import TRAFFIC, flow_agent
from tests.helpers import (
    RedisCluster,
    keyspace,
    needs_root,
    stop_process,
    unix_redis_server,
    veth_pair,
    wait_for,
)


@needs_root
def test_live_flows_land_in_a_cluster_as_in_one_server(tmp_path: Path) -> None:
    with (
        unix_redis_server(tmp_path) as sock,
        veth_pair(subnet=70) as pair,
    ):
        cluster = RedisCluster(tmp_path / "cluster", netns=pair.ns_a)
        try:
            cluster.start()
            server = subprocess.Popen(
                pair.exec_b(sys.executable, str(TRAFFIC), "serve", pair.addr_b, pair.addr6_b),
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                assert server.stdout is not None
                assert server.stdout.readline() == b"ready\n"
                with (
                    flow_agent(pair, f"unix://{sock}", tmp_path / "single.log") as single,
                    flow_agent(pair, cluster.url, tmp_path / "cluster.log") as clustered,
                ):
                    result = subprocess.run(
                        pair.exec_a(sys.executable, str(TRAFFIC), "client", pair.addr_b,
                                    pair.addr6_b),
                        capture_output=True, timeout=30,
                    )  # fmt: skip
                    assert result.returncode == 0, result.stderr.decode()
                    plain = redis.Redis(unix_socket_path=str(sock), decode_responses=True)
                    wait_for(lambda: len(keyspace(plain)) >= 14, timeout=20)
                    wait_for(lambda: cluster.keyspace() == keyspace(plain), timeout=20)
                assert single.returncode == clustered.returncode == 0
            finally:
                stop_process(server)
                assert server.stdout is not None
                server.stdout.close()
            one = keyspace(plain)
            assert len(one) == 14 and f"client;{pair.addr_a}" in one
            assert cluster.keyspace() == one
            assert f"{pair.addr_a};{pair.addr_b};{traffic.TCP_PORT};flow" in one
            per_node = [
                cluster.cli(port, "DBSIZE").strip() for port in cluster.ports
            ]  # every primary holds some of them
            assert all(int(n) > 0 for n in per_node), per_node
            log = (tmp_path / "cluster.log").read_text()
            assert "keys_dropped=0" in log and "Traceback" not in log
        finally:
            cluster.stop()
