from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, settings

from pcapd.core.logs import KeyValueFormatter
from tests.helpers import (
    MotoProcess,
    RedisCluster,
    RedisServer,
    free_port,
    moto_process,
    redis_server,
)
from tests.pcapd.daemon_fixture import Results

# The machine is shared and tests run beside real servers: a slow example is
# not a failure (speed is measured by bench/, not by tests).
settings.register_profile(
    "pcapd", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("pcapd")

# The files that take longest (--durations, 3 workers side by side): under
# pytest-xdist (`make test`) they are handed out first, so that none is left
# running alone at the end of the run. A file missing here costs only order.
SLOW_FIRST = (
    "tests/pcapd/test_daemon_fuzz.py",
    "tests/pcapd/ring/test_reader.py",
    "tests/triggers/test_daemon_sources.py",
    "tests/uploaders/test_daemon_delivery.py",
    "tests/pcapd/test_fleet.py",
    "tests/pcapd/test_daemon_metrics.py",
    "tests/pcapd/correlator/test_paging.py",
    "tests/pcapd/correlator/test_browser.py",
    "tests/agents/test_redis_writer_failover.py",
    "tests/agents/test_redis_writer_cluster.py",
    "tests/pcapd/core/test_request_poison.py",
    "tests/agents/test_metrics.py",
    "tests/pcapd/test_daemon.py",
    "tests/pcapd/test_daemon_cluster.py",
    "tests/pcapd/test_daemon_ring_ops.py",
    "tests/pcapd/test_daemon_ring.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """In an xdist worker, SLOW_FIRST's files first, the rest in collection
    order (every worker sorts alike, as xdist requires)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return
    rank = {path: n for n, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.partition("::")[0], len(rank)))


@pytest.fixture(autouse=True)
def _caplog_as_pcapd_logs(caplog: pytest.LogCaptureFixture) -> None:
    """`caplog.text` in pcapd's own key=value form, fields included: every log
    line is an event (issue 11), and tests read its fields as a user would."""
    caplog.handler.setFormatter(KeyValueFormatter(with_time=False))


@dataclass
class SharedRedis(RedisServer):
    """The run's one redis-server, with the settings it started with."""

    baseline: dict[str, str] = field(default_factory=dict)


def _text_client(server: RedisServer) -> redis.Redis:
    return redis.Redis(port=server.port, socket_timeout=5, decode_responses=True)


@pytest.fixture(scope="session")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedRedis]:
    """The one redis-server of the run; tests get it through `redis_srv`."""
    server = SharedRedis(port=free_port(), workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        with _text_client(server) as client:
            server.baseline = client.config_get("*")
        yield server
    finally:
        server.stop()


def _replace_process(server: RedisServer) -> None:
    """Start the server afresh on its port, however the last test left it (even SIGSTOPped)."""
    if server.proc is not None:
        server.proc.kill()
        server.proc.wait()
        server.proc = None
    server.start()


def reset_redis(server: SharedRedis) -> None:
    """Make a used server look like a new one to the next test.

    Drops every key, script and function, every other connection (with it
    their subscriptions, client names and selected db), any ACL user, and puts
    back any setting a test changed with CONFIG SET. A server that is down,
    paused or now asks for a password is started afresh instead.
    """
    alive = server.proc is not None and server.proc.poll() is None
    if not (alive and server.ready()):
        _replace_process(server)
    client = _text_client(server)
    try:
        client.client_kill_filter(_type="normal", skipme=True)
        client.client_kill_filter(_type="pubsub")
        client.flushall()
        client.script_flush()
        client.function_flush()
        for user in client.acl_users():
            name = user if isinstance(user, str) else user.decode()
            if name != "default":
                client.acl_deluser(name)
        current = client.config_get("*")
        for name, value in server.baseline.items():
            if current.get(name) != value:
                client.config_set(name, value)
        client.config_resetstat()
    except redis.RedisError:
        # A setting that cannot be put back at run time: a new process can.
        _replace_process(server)
    finally:
        client.close()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, on a free loopback port.

    Ask for it in a test that stops, restarts, pauses or reconfigures Redis.
    While a test asks for it, `redis_srv` (and so every fixture built on it,
    such as the daemon's) is this same server.
    """
    with redis_server(tmp_path) as server:
        yield server


@contextlib.contextmanager
def started(cluster: RedisCluster) -> Iterator[RedisCluster]:
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """The run's one 3-primary Redis Cluster; tests get it through `redis_cluster`."""
    with started(RedisCluster(tmp_path_factory.mktemp("cluster"))) as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(shared_cluster: RedisCluster) -> RedisCluster:
    """A 3-primary Redis Cluster on loopback ports, emptied before each test."""
    shared_cluster.reset()
    return shared_cluster


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A 3-primary cluster of this test's own, each write fsynced to an AOF:
    for tests that kill and restart a primary."""
    with started(RedisCluster(tmp_path / "cluster", durable=True)) as cluster:
        yield cluster


@pytest.fixture
def replicated_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 primaries with a replica each and a 1 s node timeout, this test's
    own: for tests that kill a primary and see its replica take over."""
    with started(RedisCluster(tmp_path / "cluster", replicas=1)) as cluster:
        yield cluster


@pytest.fixture
def redis_srv(request: pytest.FixtureRequest) -> RedisServer:
    """A redis-server on a loopback port, empty and with default settings.

    It is the session's one server, flushed and reset before each test
    (`reset_redis`), or the test's `private_redis` if it asks for one.
    """
    if "private_redis" in request.fixturenames:
        private: RedisServer = request.getfixturevalue("private_redis")
        return private
    server: SharedRedis = request.getfixturevalue("shared_redis")
    reset_redis(server)
    return server


@pytest.fixture
def results(redis_srv: RedisServer) -> Iterator[Results]:
    """Every event on the results channel of `redis_srv`, from before the test acts."""
    collector = Results(redis_srv)
    yield collector
    collector.close()


@pytest.fixture(scope="session")
def moto_session() -> Iterator[MotoProcess]:
    """One `moto_server` for the run, shared by the S3 and SQS fixtures: each
    test makes its own bucket or queue, so tests do not see each other's."""
    with moto_process() as server:
        yield server
