"""`pcapd serve` as a real subprocess against a private redis-server."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from tests.helpers import RedisServer, stop_process, wait_for

BASE_CONFIG = """
[general]
node = "{node}"
writelocal = true
localdir = "{localdir}"
maxpackets = 1000
maxbytes = 10000000
maxduration = 30
maxtimeout = 30
defaulttimeout = 5
max_concurrent = {max_concurrent}
max_memory = {max_memory}
packetdebug = true
{extra_general}

[redis]
port = {port}
channel = "capture"
results_channel = "capture-results"
results_stream = "capture-results"
{extra_redis}

{interfaces}

{extra_sections}
"""

DEFAULT_INTERFACES = """
[[interface]]
name = "lo"
alias = ["local", "loop"]

[[interface]]
name = "ghost0"
alias = ["ghost"]
"""


class Results:
    """Every event on the results channel, collected by a background subscriber."""

    def __init__(self, server: RedisServer, channel: str = "capture-results") -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._kept: dict[str, list[dict[str, Any]]] = {}
        self._stop = threading.Event()
        self._server = server
        self._channel = channel
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "results subscriber did not start"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pubsub = self._server.client().pubsub()
                pubsub.subscribe(self._channel)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.1)
                    if message and message["type"] == "subscribe":
                        self._ready.set()
                    elif message and message["type"] == "message":
                        self.events.put(json.loads(message["data"]))
            except (redis.RedisError, OSError):
                time.sleep(0.1)

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no result event within {timeout}s") from None

    def for_id(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The next event for `request_id`; events for other ids that arrive
        first are kept for their own `for_id` (captures may end in any order)."""
        deadline = time.monotonic() + timeout
        while True:
            kept = self._kept.get(request_id)
            if kept:
                return kept.pop(0)
            event = self.next(max(0.01, deadline - time.monotonic()))
            if event.get("id") == request_id:
                return event
            self._kept.setdefault(str(event.get("id")), []).append(event)

    def unclaimed(self) -> list[dict[str, Any]]:
        """Every event received and not yet taken by `next` or `for_id`
        (those `for_id` kept for other ids included)."""
        found = [event for kept in self._kept.values() for event in kept]
        while True:
            try:
                found.append(self.events.get_nowait())
            except queue.Empty:
                return found

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)


class Daemon:
    def __init__(
        self,
        server: RedisServer,
        workdir: Path,
        *,
        node: str = "testnode",
        max_concurrent: int = 8,
        max_memory: int = 64 * 1024 * 1024,
        extra_general: str = "",
        extra_sections: str = "",
        extra_redis: str = "",
        interfaces: str = DEFAULT_INTERFACES,
        wrap: tuple[str, ...] = (),
    ) -> None:
        """`wrap`: a command prefix, e.g. `ip netns exec NS` to serve inside a
        namespace; `interfaces`: the [[interface]] tables."""
        self.server = server
        self.wrap = wrap
        workdir.mkdir(parents=True, exist_ok=True)
        self.localdir = workdir / "captures"
        self.config_path = workdir / "pcapd.toml"
        self.config_path.write_text(
            BASE_CONFIG.format(
                node=node, localdir=self.localdir, port=server.port,
                max_concurrent=max_concurrent, max_memory=max_memory,
                extra_general=extra_general, extra_sections=extra_sections,
                extra_redis=extra_redis, interfaces=interfaces,
            )
        )  # fmt: skip
        self.log_path = workdir / "pcapd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel = "capture"

    def start(self, argv: Sequence[str] | None = None, channel: str = "capture") -> None:
        """`pcapd serve -c FILE`, or `argv` (a command subscribing to `channel`)."""
        self.launch(argv, channel)
        wait_for(self.subscribed, timeout=15)

    def launch(self, argv: Sequence[str] | None = None, channel: str = "capture") -> None:
        """`start` without waiting for the subscription: several daemons then
        start side by side (the caller waits for them)."""
        self.channel = channel
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.wrap,
                    *(
                        argv
                        or [sys.executable, "-m", "pcapd", "serve", "-c", str(self.config_path)]
                    ),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def subscribed(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"pcapd exited:\n{self.log()}"
        try:
            counts = self.server.client().pubsub_numsub(self.channel)
        except redis.RedisError:
            return False
        return bool(counts and counts[0][1] >= 1)

    def publish(self, request: dict[str, Any] | bytes | str) -> None:
        body = request if isinstance(request, bytes | str) else json.dumps(request)
        self.server.client().publish(self.channel, body)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def started(self, request_id: str, times: int = 1) -> bool:
        """The capture for `request_id` has started (`times` times in this log)."""
        return self.log().count(f"event=capture_started id={request_id} ") >= times

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
