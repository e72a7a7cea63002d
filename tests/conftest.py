from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.helpers import RedisServer, redis_server
from tests.pcapd.daemon_fixture import Results

# The machine is shared and tests run beside real servers: a slow example is
# not a failure (speed is measured by bench/, not by tests).
settings.register_profile(
    "pcapd", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("pcapd")


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test, on a free loopback port."""
    with redis_server(tmp_path) as server:
        yield server


@pytest.fixture
def results(redis_srv: RedisServer) -> Iterator[Results]:
    """Every result event published on `redis_srv`'s results channel."""
    collector = Results(redis_srv)
    yield collector
    collector.close()
