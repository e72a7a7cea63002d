"""`pcapd trigger --wait` against two real daemons on this machine (nodes
wait-a and wait-b, both capturing on `lo`): it ends once every node its
request names has answered, and waits out its bound while a live one has not."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.lifecycle import EXIT_OK
from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Daemon
from tests.pcapd.test_daemon import traffic

NODES = ("wait-a", "wait-b")
BOTH = "^(wait-a|wait-b)$"
BOUND = 12.0  # s: --wait SECONDS
SOON = 6.0  # s after the results within which an early end must come


@pytest.fixture
def daemons(redis_srv: RedisServer, tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    started = {node: Daemon(redis_srv, tmp_path / node, node=node) for node in NODES}
    try:
        for daemon in started.values():
            daemon.launch()  # side by side
        client = redis_srv.client()
        wait_for(lambda: client.pubsub_numsub("capture")[0][1] >= len(NODES), timeout=30)
        wait_for(lambda: all(d.subscribed() for d in started.values()), timeout=30)
        yield started
    finally:
        for daemon in started.values():
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.signal(signal.SIGCONT)  # a stopped one would not see its SIGTERM
            daemon.stop()


def waited(
    server: RedisServer, daemons: dict[str, Daemon], request: dict[str, Any], ready: list[str]
) -> tuple[subprocess.CompletedProcess[str], float]:
    """`pcapd trigger --stdin --wait BOUND` for `request` (a 2-packet capture
    of UDP to a fresh port, sent once the nodes in `ready` capture); the
    command, and the seconds it ran past the last capture's start."""
    port = free_port()
    body = {"interface": ["lo"], "bpf": f"udp and dst port {port}", "packets": 2, **request}
    started: list[float] = []

    def all_started() -> bool:
        if all(daemons[node].started(request["id"]) for node in ready):
            started.append(time.monotonic())
            return True
        return False

    traffic(port, 20, interval=0.05, ready=all_started)
    done = subprocess.run(
        [sys.executable, "-m", "pcapd", "trigger", "--redis-url", server.url, "--stdin",
         "--wait", str(BOUND)],
        input=json.dumps(body), capture_output=True, text=True, timeout=BOUND + 30,
    )  # fmt: skip
    assert started, done.stderr
    return done, time.monotonic() - started[0]


def answers(done: subprocess.CompletedProcess[str]) -> list[tuple[str, str]]:
    return sorted((e["node"], e["status"]) for e in map(json.loads, done.stdout.splitlines()))


def test_wait_ends_once_every_named_node_has_answered(
    redis_srv: RedisServer, daemons: dict[str, Daemon]
) -> None:
    done, took = waited(redis_srv, daemons, {"id": "w-both", "nodere": BOTH}, list(NODES))
    assert done.returncode == EXIT_OK, done.stderr
    assert answers(done) == [("wait-a", "ok"), ("wait-b", "ok")]
    assert took < SOON, (took, done.stderr)
    assert "every node named has answered: wait-a, wait-b" in done.stderr
    # By exact name too: the other node stays silent, and is not waited for.
    done, took = waited(redis_srv, daemons, {"id": "w-one", "node": "wait-b"}, ["wait-b"])
    assert (done.returncode, answers(done)) == (EXIT_OK, [("wait-b", "ok")]), done.stderr
    assert took < SOON, (took, done.stderr)
    assert "every node named has answered: wait-b\n" in done.stderr


def test_wait_goes_on_while_a_live_named_node_has_not_answered(
    redis_srv: RedisServer, daemons: dict[str, Daemon]
) -> None:
    """wait-b is stopped (SIGSTOP): alive, its heartbeat still there, silent.
    The bound is waited out, wait-a's result printed, wait-b named as missing."""
    daemons["wait-b"].signal(signal.SIGSTOP)
    done, took = waited(redis_srv, daemons, {"id": "w-late", "nodere": BOTH}, ["wait-a"])
    assert done.returncode == EXIT_OK, done.stderr
    assert answers(done) == [("wait-a", "ok")]
    assert took >= BOUND - SOON, (took, done.stderr)
    assert f"within {BOUND:.0f}s no final answer from wait-b" in done.stderr
