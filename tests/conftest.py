from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import RedisServer, redis_server


@pytest.fixture
def redis_srv(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for one test, on a free loopback port."""
    with redis_server(tmp_path) as server:
        yield server
