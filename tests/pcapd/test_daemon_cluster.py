"""A real `pcapd serve` on a real 3-primary Redis Cluster: requests by pub/sub
(plain or sharded) and by the request stream, from a real `pcapd trigger`,
results read back from reply_to, the results channel and the results stream,
and the fleet-wide dedup keys kept in the cluster."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RedisCluster, stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]
CONFIG = """
[general]
node = "clusternode"
writelocal = true
localdir = "{localdir}"
maxduration = 30
maxtimeout = 30

[redis]
cluster = true
nodes = {nodes}
stream_listen = true
sharded_pubsub = {sharded}
channel = "capture"
results_channel = "capture-results"
results_stream = "capture-results"
{extra_redis}

[[interface]]
name = "lo"

{extra_sections}
"""


def cluster_config(
    path: Path,
    cluster: RedisCluster,
    *,
    sharded: bool,
    extra_redis: str = "",
    extra_sections: str = "",
) -> Path:
    """A config at `path` for `cluster`, its captures in a folder beside it."""
    path.write_text(CONFIG.format(
        localdir=path.parent / "captures", nodes=json.dumps(cluster.nodes),
        sharded=str(sharded).lower(), extra_redis=extra_redis, extra_sections=extra_sections,
    ))  # fmt: skip
    return path


@contextlib.contextmanager
def serve(config: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`pcapd serve -c config`, once subscribed and reading the request
    stream, logging to `config` with the suffix .log; stopped on exit (if
    still running), and its log must hold no traceback."""
    log = config.with_suffix(".log")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pcapd", "serve", "-c", str(config)], cwd=REPO,
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:

        def ready() -> bool:
            assert proc.poll() is None, log.read_text()
            text = log.read_text()
            return "event=subscribed" in text and "event=stream_group_created" in text

        wait_for(ready, timeout=30)
        yield proc
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(params=[False, True], ids=["pubsub", "sharded"])
def serving(
    request: pytest.FixtureRequest, redis_cluster: RedisCluster, tmp_path: Path
) -> Iterator[Path]:
    """`pcapd serve` on the cluster; yields its config file."""
    config = cluster_config(tmp_path / "pcapd.toml", redis_cluster, sharded=request.param)
    with serve(config):
        yield config


def pcapd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", *args], cwd=REPO, capture_output=True, text=True,
        timeout=timeout, check=False,
    )  # fmt: skip


def subscriptions(cluster: RedisCluster, sharded: bool) -> int:
    """Subscribers of the request channel, over every primary."""
    command = ("PUBSUB", "SHARDNUMSUB") if sharded else ("PUBSUB", "NUMSUB")
    return sum(int(cluster.cli(port, *command, "capture").split()[-1]) for port in cluster.ports)


def test_captures_triggered_through_the_cluster(serving: Path, redis_cluster: RedisCluster) -> None:
    config = serving
    sharded = "sharded_pubsub = true" in config.read_text()
    assert (subscriptions(redis_cluster, sharded), subscriptions(redis_cluster, not sharded)) == (
        1, 0)  # fmt: skip
    ids = [uuid.uuid4().hex for _ in range(2)]
    ping = subprocess.Popen(["ping", "-q", "-i", "0.2", "-c", "100", "127.0.0.1"],
                            stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        for request_id, how in zip(ids, ([], ["--stream"]), strict=True):
            body = json.dumps({"id": request_id, "node": "any", "interface": ["lo"],
                               "bpf": "icmp", "packets": 2, "timeout": 10})  # fmt: skip
            done = subprocess.run(
                [sys.executable, "-m", "pcapd", "trigger", "-c", str(config), "--stdin",
                 "--wait", "30", "--count", "1", *how],
                input=body, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            (event,) = [json.loads(line) for line in done.stdout.splitlines()]
            assert (event["id"], event["status"], event["packets"]) == (request_id, "ok", 2)
            assert event["node"] == "clusternode" and Path(event["locations"]["local"]).exists()
    finally:
        stop_process(ping)
    # The results stream holds both, read back by `pcapd results`.
    done = pcapd("results", "-c", str(config), "--stream", "--from-start", "--count", "2",
                 "--timeout", "20")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert {json.loads(line)["id"] for line in done.stdout.splitlines()} == set(ids)
    # The node's seen ids live in the cluster: the same request again is a duplicate.
    seen = [key for key, _ in redis_cluster.keyspace().items() if key.startswith("pcapd:seen:id:")]
    assert {key.rsplit(":", 1)[1] for key in seen} >= set(ids)
    body = json.dumps({"id": ids[0], "node": "any", "interface": ["lo"], "packets": 1})
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "trigger", "-c", str(config), "--stdin", "--wait", "20",
         "--count", "1"],
        input=body, cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "duplicate"


def test_the_node_heartbeat_lives_in_the_cluster(serving: Path) -> None:
    """The heartbeat (a MULTI/EXEC on one key) works on a cluster, and
    `pcapd nodes` finds it by walking every primary, and `--match` judges there."""

    def listed() -> list[dict[str, object]]:
        done = pcapd("nodes", "-c", str(serving), "--json")
        assert done.returncode == 0, done.stderr
        nodes: list[dict[str, object]] = json.loads(done.stdout)
        return nodes

    wait_for(lambda: [n["node"] for n in listed()] == ["clusternode"], timeout=30)
    request = json.dumps({"node": "clusternode", "interface": "lo", "packets": 1})
    matched = pcapd("nodes", "-c", str(serving), "--match", request)
    assert matched.returncode == 0, matched.stdout + matched.stderr
    assert "clusternode" in matched.stdout
