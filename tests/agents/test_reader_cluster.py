"""The reader (the correlator's) on a real 3-primary Redis Cluster: a client
whose keys live on all three primaries reads back as from one server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agents import store
from agents.reader import StoreReader
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.secret import Secret
from tests.agents.test_reader import C6, C, fill, walk_pages
from tests.helpers import RedisCluster, RedisServer

REPO = Path(__file__).resolve().parents[2]


def cluster_reader(cluster: RedisCluster, **options: Any) -> StoreReader:
    return StoreReader(connect(RedisConfig(url=Secret(cluster.url))), **options)


def primaries_holding(cluster: RedisCluster, client: str) -> set[int]:
    held = set()
    for port in cluster.ports:
        with cluster.node(port) as node:
            if any(k.startswith(f"{client};") for k in node.scan_iter(count=1000)):
                held.add(port)
    return held


@pytest.mark.parametrize("index", [True, False], ids=["index", "scan"])
def test_a_client_on_all_three_primaries_reads_as_on_one_server(
    redis_cluster: RedisCluster, redis_srv: RedisServer, index: bool
) -> None:
    fill(redis_srv.url, index=index)
    fill(redis_cluster.url, index=index)
    assert primaries_holding(redis_cluster, C) == set(redis_cluster.ports)
    single = StoreReader(redis_srv.client(), scan_count=10)
    clustered = cluster_reader(redis_cluster, scan_count=10)
    for client in (C, C6):
        got, want = clustered.read_client(client), single.read_client(client)
        for data in (got, want):  # recon signs come in key order, which is no order
            data.recon.sort(key=repr)
        assert got == want and got.complete
        assert len(got.dns) >= 2 and got.flows and len(got.recon) == 2
    assert clustered.resolvers_of("mid.example.test.").items == single.resolvers_of(
        "mid.example.test.").items  # fmt: skip
    assert clustered.talkers_to("203.0.113.9").items == ((C, 853, 1), (C6, 853, 1))


def test_pages_walk_every_primary(redis_cluster: RedisCluster) -> None:
    fill(redis_cluster.url, index=False)
    admin = redis_cluster.client()
    for n in range(30):
        admin.set(store.client_key(f"10.9.0.{n}"), 1)
    pages, seen = walk_pages(cluster_reader(redis_cluster, scan_count=10, budget=10))
    assert pages >= 3 and len(seen) == 32
    found = cluster_reader(redis_cluster).clients_page(limit=50, search="alias.example")
    assert {c.client for c in found.items} == {C, C6}


def test_clear_a_client_on_every_primary(redis_cluster: RedisCluster) -> None:
    fill(redis_cluster.url, index=True)
    removed, complete = cluster_reader(redis_cluster).clear_client(C)
    assert complete and removed == 12  # 10 keys, the counter and the index
    assert primaries_holding(redis_cluster, C) == set()
    assert cluster_reader(redis_cluster).read_client(C6).flows


def test_pcapd_correlate_shows_the_client_from_a_cluster(
    redis_cluster: RedisCluster, redis_srv: RedisServer
) -> None:
    fill(redis_cluster.url, index=False)
    fill(redis_srv.url, index=False)
    views = []
    for url in (redis_cluster.url, redis_srv.url):
        done = subprocess.run(
            [sys.executable, "-m", "pcapd", "correlate", C, "--json", "--redis-url", url],
            cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        views.append(json.loads(done.stdout))
    assert views[0] == views[1]
    assert "mid.example.test." in json.dumps(views[0])
