"""Replays and duplicates hold across a restart of `pcapd serve`: the seen ids and
signatures are in Redis, not only in the process."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.secret import Secret
from pcapd.signing import sign
from tests.helpers import RedisServer, free_port
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request

KEY = "replay-test-key-7c1e"
SECURITY = f'[security]\nkeys = {{ ops = "{KEY}" }}\nrequire_signed = true\nmax_skew = 300\n'


@pytest.fixture
def results(redis_srv: RedisServer) -> Iterator[Results]:
    collector = Results(redis_srv)
    yield collector
    collector.close()


def for_alert(results: Results, alertid: int) -> dict[str, Any]:
    while True:
        event = results.next(20)
        if event.get("alertid") == alertid:
            return event


def test_a_signed_request_replayed_after_a_restart_is_refused_and_captured_once(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    port = free_port()
    # No id: each delivery would get a fresh one, so only the signature can tell.
    body = json.dumps(
        sign(udp_request(port, packets=2, alertid=4711), "ops", Secret(KEY), time.time())
    )
    daemon = Daemon(redis_srv, tmp_path, extra_sections=SECURITY)
    daemon.start()
    try:
        daemon.publish(body)
        traffic(port, 2, ready=lambda: "event=capture_started " in daemon.log())
        first = for_alert(results, 4711)
    finally:
        daemon.stop()
    assert first["status"] == "ok", first
    restarted = Daemon(redis_srv, tmp_path, extra_sections=SECURITY)
    restarted.start()
    try:
        restarted.publish(body)
        replay = for_alert(results, 4711)
    finally:
        restarted.stop()
    assert replay["status"] == "rejected"
    assert replay["error"].startswith("sig: replayed; this signature was already accepted")
    assert len(list(restarted.localdir.glob("*.pcap"))) == 1


def test_a_request_id_served_before_a_restart_is_a_duplicate_after_it(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    port = free_port()
    daemon = Daemon(redis_srv, tmp_path)
    daemon.start()
    try:
        daemon.publish(udp_request(port, id="once", packets=2))
        traffic(port, 2, ready=lambda: daemon.started("once"))
        assert results.for_id("once", timeout=20)["status"] == "ok"
    finally:
        daemon.stop()
    restarted = Daemon(redis_srv, tmp_path)
    restarted.start()
    try:
        restarted.publish(udp_request(port, id="once", packets=2))
        again = results.for_id("once", timeout=20)
    finally:
        restarted.stop()
    assert again["status"] == "duplicate", again
    assert again["error"] == "request id once was already served within dedup_window=600s"
    assert not restarted.started("once", times=2)
    keys = redis_srv.client().keys("pcapd:seen:*")
    assert b"pcapd:seen:id:testnode:once" in keys
