"""One way to open a Redis connection from `[redis]`, shared by daemon and agents."""

from __future__ import annotations

from typing import Any

import redis

from pcapd.core.config import RedisConfig

SOCKET_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0


def connect(config: RedisConfig, **overrides: Any) -> redis.Redis:
    """A client for `config`; `url` wins over host/port/auth when set.

    Timeouts are always set: a silent network partition must surface as an
    error the caller retries, never as a thread blocked for ever.
    """
    options: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": config.health_check_interval,
        "client_name": "pcapd",
    }
    options.update(overrides)
    if config.url is not None:
        url = config.url.reveal()
        if url.startswith("unix://"):
            options.pop("socket_connect_timeout", None)
        if config.tls_ca and url.startswith("rediss://"):
            options["ssl_ca_certs"] = config.tls_ca
        return redis.Redis.from_url(url, **options)
    if config.tls:
        options["ssl"] = True
        if config.tls_ca:
            options["ssl_ca_certs"] = config.tls_ca
    return redis.Redis(
        host=config.host,
        port=config.port,
        db=config.db,
        username=config.username,
        password=config.auth.reveal() if config.auth else None,
        **options,
    )
