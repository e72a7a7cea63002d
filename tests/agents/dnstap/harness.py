"""The agent running in a thread of the test process (its own event loop),
writing to a real redis-server, and Frame Streams writers talking to it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from agents.dnstap.agent import DnstapAgent
from agents.dnstap.client import FrameWriter
from agents.dnstap.config import DnstapConfig, parse_dnstap_config
from agents.dnstap.server import ConnectionStats
from agents.redis_writer import make_writer
from pcapd.core.config import RedisConfig
from pcapd.core.redis_conn import connect
from pcapd.core.secret import Secret
from tests.helpers import wait_for


@dataclass
class RunningAgent:
    agent: DnstapAgent
    config: DnstapConfig

    @property
    def tcp_port(self) -> int:
        address = self.agent.server.tcp_address
        assert address is not None
        return address[1]

    def connect(self) -> socket.socket:
        if self.config.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.config.socket)
        else:
            sock = socket.create_connection(("127.0.0.1", self.tcp_port))
        sock.settimeout(5)
        return sock

    def send(self, payloads: list[bytes], bidirectional: bool = True) -> None:
        with self.connect() as sock:
            writer = FrameWriter(sock, bidirectional=bidirectional)
            writer.start()
            writer.write(payloads)
            writer.stop()

    def flushed(self) -> bool:
        self.agent.writer.flush()
        return self.agent.writer.queue_depth == 0

    def snapshot(self) -> dict[str, Any]:
        return self.agent.snapshot()


@contextlib.contextmanager
def running_agent(
    redis_url: str, socket_path: Path | None, *, record: list[bytes] | None = None, **options: Any
) -> Iterator[RunningAgent]:
    """`record`, if given, receives every data frame too (for reference checks)."""
    raw: dict[str, Any] = {"socket": str(socket_path) if socket_path else "",
                           "stats_interval": 0, "flush_interval": 0.01}  # fmt: skip
    raw.update(options)
    config = parse_dnstap_config(raw)
    redis_config = RedisConfig(url=Secret(redis_url))  # one server, or a redis+cluster:// seed
    writer = make_writer(config, lambda: connect(redis_config, socket_timeout=2))
    writer.start()
    agent = DnstapAgent(config, writer)
    if record is not None:
        handle = agent.handle

        def recording(payload: bytes, conn: ConnectionStats) -> None:
            record.append(payload)
            handle(payload, conn)

        agent.server.sink = recording
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    errors: list[BaseException] = []

    def serve() -> None:
        try:
            loop.run_until_complete(agent.serve(stop, started.set))
        except BaseException as exc:
            errors.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="dnstap-agent", daemon=True)
    thread.start()
    wait_for(lambda: started.is_set() or not thread.is_alive(), timeout=10)
    if not started.is_set():
        thread.join(10)
        writer.stop()
        raise errors[0] if errors else AssertionError("agent did not start")
    try:
        yield RunningAgent(agent, config)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        writer.stop()


def redis_dump(client: redis.Redis) -> dict[str, str]:
    """Every key (SCAN, never KEYS) with its value as text."""
    out: dict[str, str] = {}
    for key in client.scan_iter(count=1000):
        value = client.get(key)
        assert isinstance(key, bytes) and isinstance(value, bytes)
        out[key.decode()] = value.decode()
    return out
