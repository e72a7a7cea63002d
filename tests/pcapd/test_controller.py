"""The controller in-process, against a real redis-server, lo and local disk:
what is acked or released, what is reported, and that every bound is given back."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from pcapd.claim_batch import SERVED
from pcapd.controller import Controller
from pcapd.core.config import Config, parse_config
from pcapd.core.redis_conn import connect
from pcapd.core.results import ResultPublisher
from pcapd.dedup import seen_key
from pcapd.engine import HandlePool
from pcapd.ring import Ring
from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from triggers.base import Delivery
from uploaders.deliver import Deliverer
from uploaders.local import LocalUploader
from uploaders.retry import RetryPolicy


class Recorded:
    """A delivery whose ack/release calls are counted, as a durable source sees them."""

    def __init__(self, body: dict[str, Any] | bytes) -> None:
        self.acks = 0
        self.releases = 0
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.delivery = Delivery(
            body=raw, source="test", ack=self._ack, release=self._release, message_id="m-1"
        )

    def _ack(self) -> None:
        self.acks += 1

    def _release(self) -> None:
        self.releases += 1

    @property
    def settled(self) -> bool:
        return self.acks + self.releases > 0


def build(
    redis_srv: RedisServer,
    localdir: Path,
    dedup: redis.Redis | None = None,
    rings: dict[str, Ring] | None = None,
    interfaces: list[dict[str, Any]] | None = None,
    **general: Any,
) -> Controller:
    config: Config = parse_config(
        {
            "general": {"node": "n1", "writelocal": True, "localdir": str(localdir),
                        "maxbytes": 1_000_000, "max_memory": 4_000_000, "defaulttimeout": 5,
                        **general},
            "redis": {"port": redis_srv.port},
            "delivery": {"attempts": 1},
            **({"interface": interfaces} if interfaces else {}),
        }
    )  # fmt: skip
    deliverer = Deliverer([LocalUploader(localdir)], RetryPolicy.from_config(config.delivery), None)
    return Controller(
        config,
        publisher=ResultPublisher(lambda: connect(config.redis), config.redis),
        deliverer=deliverer,
        pool=HandlePool((), config.general.buffer_size),
        dedup_redis=dedup,
        rings=rings,
    )


def idle(ctl: Controller) -> bool:
    """No slot taken, no byte of max_memory held, nothing promised on disk."""
    return ctl.admission.idle


def request(port: int, **fields: Any) -> dict[str, Any]:
    return {"node": "n1", "interface": "lo", "bpf": f"udp and dst port {port}", **fields}


def test_stored_capture_is_acked_and_every_bound_given_back(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path / "caps")
    port = free_port()
    got = Recorded(request(port, id="r1", packets=3))
    ctl.handle(got.delivery)
    threading.Timer(0.3, send_udp, args=(port, 3, 0.01)).start()
    assert results.for_id("r1")["status"] == "ok"
    wait_for(lambda: got.settled and idle(ctl))
    assert (got.acks, got.releases) == (1, 0)


def test_capture_stored_nowhere_is_released_for_redelivery(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    ctl = build(redis_srv, blocker)
    port = free_port()
    got = Recorded(request(port, id="r2", packets=2))
    ctl.handle(got.delivery)
    threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
    event = results.for_id("r2")
    assert event["status"] == "failed" and "cannot write" in event["error"]
    wait_for(lambda: got.settled and idle(ctl))
    assert (got.acks, got.releases) == (0, 1)
    # Redelivered, it is captured again, not refused as a duplicate.
    again = Recorded(request(port, id="r2", packets=2))
    ctl.handle(again.delivery)
    threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
    assert results.for_id("r2")["status"] == "failed"


def test_bad_request_for_another_node_is_silent(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path)
    other = Recorded({"node": "n2", "interface": "lo", "packets": -1, "id": "other"})
    other_re = Recorded({"nodere": "^web", "interface": 5, "id": "other-re"})
    mine = Recorded({"node": "n1", "interface": "lo", "packets": -1, "id": "mine"})
    for got in (other, other_re, mine):
        ctl.handle(got.delivery)
    event = results.next()
    assert (event["id"], event["status"]) == ("mine", "rejected")
    time.sleep(0.3)
    assert results.events.empty()
    assert other.acks == other_re.acks == mine.acks == 1


def test_refused_request_can_be_retried_with_the_same_id(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path, max_concurrent=1)
    port = free_port()
    first = Recorded(request(port, id="long", timeout=2))
    ctl.handle(first.delivery)
    refused = Recorded(request(port, id="retry", timeout=1))
    ctl.handle(refused.delivery)
    event = results.for_id("retry")
    assert event["error"] == "max_concurrent=1 captures already running"
    assert results.for_id("long")["status"] == "empty"
    wait_for(lambda: idle(ctl))
    ctl.handle(Recorded(request(port, id="retry", timeout=1)).delivery)
    assert results.for_id("retry")["status"] == "empty"


def test_the_same_request_on_two_sources_at_once_runs_once(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path)
    body = request(free_port(), id="twice", timeout=1)
    deliveries = [Recorded(body), Recorded(body)]
    threads = [threading.Thread(target=ctl.handle, args=(d.delivery,)) for d in deliveries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted([results.for_id("twice")["status"], results.for_id("twice")["status"]])
    assert statuses == ["duplicate", "empty"]
    wait_for(lambda: all(d.acks == 1 for d in deliveries) and idle(ctl))


def test_shutdown_ends_and_stores_running_captures(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path / "caps")
    port = free_port()
    got = Recorded(request(port, id="cut", duration=30, timeout=30))
    ctl.handle(got.delivery)
    threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
    wait_for(lambda: ctl.capture_started.is_set())
    time.sleep(0.8)
    assert ctl.shutdown(timeout=10)
    event = results.for_id("cut")
    assert (event["status"], event["stop"], event["packets"]) == ("ok", "shutdown", 2)
    assert got.acks == 1 and idle(ctl)
    refused = Recorded(request(port, id="late"))
    ctl.handle(refused.delivery)
    assert results.for_id("late")["error"] == "shutting down: not taking new captures"


def test_with_redis_away_duplicates_are_caught_in_memory_and_the_log_says_so(
    redis_srv: RedisServer, results: Results, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    away = redis.Redis(port=free_port(), socket_timeout=0.5, socket_connect_timeout=0.5)
    ctl = build(redis_srv, tmp_path / "caps", dedup=away)
    port = free_port()
    with caplog.at_level(logging.WARNING, logger="pcapd.dedup"):
        ctl.handle(Recorded(request(port, id="d1", packets=2)).delivery)
        threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
        assert results.for_id("d1")["status"] == "ok"
        ctl.handle(Recorded(request(port, id="d1", packets=2)).delivery)
        assert results.for_id("d1")["status"] == "duplicate"
    logged = [r.getMessage() for r in caplog.records if r.name == "pcapd.dedup"]
    assert logged == ["dedup_redis_unavailable"]


def test_a_burst_on_a_ring_with_duplicates_found_by_the_claims_answers_each_once(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    """Ring captures are registered before their Redis claims, which run on
    the capture threads: a request already served (by an earlier run of
    this node) is dropped there, answered `duplicate` once, its ring capture
    cancelled; the others are captured, each answered once."""
    ring = Ring("lo", 5, 2 * 1024 * 1024, "udp")
    ring.start()
    dedup = redis_srv.client()
    ctl = build(
        redis_srv, tmp_path / "caps", dedup, {"lo": ring}, max_memory=16_000_000, max_concurrent=32
    )
    try:
        port = free_port()
        served = [f"served-{i}" for i in range(10)]
        for request_id in served:
            dedup.set(seen_key(ctl.config.security.dedup_prefix, "id", "n1", request_id), SERVED)
        fresh = [f"fresh-{i}" for i in range(10)]
        sent = {
            i: Recorded(request(port, id=i, packets=1, bytes=65_536, timeout=5))
            for i in served + fresh
        }
        for got in sent.values():
            ctl.handle(got.delivery)
        threading.Timer(0.3, send_udp, args=(port, 3, 0.05)).start()
        seen: dict[str, list[str]] = {}
        while len(seen) < len(sent):
            event = results.next()
            seen.setdefault(event["id"], []).append(event["status"])
        time.sleep(0.5)  # any second answer shows itself
        while not results.events.empty():
            event = results.events.get()
            seen.setdefault(event["id"], []).append(event["status"])
        assert {i: seen[i] for i in served} == {i: ["duplicate"] for i in served}
        assert {i: seen[i] for i in fresh} == {i: ["ok"] for i in fresh}
        wait_for(lambda: idle(ctl) and all(got.acks == 1 for got in sent.values()))
        assert ring.stats().captures == 0 and ctl.running() == 0
        counts = ctl.request_counts()
        assert (counts["test", "duplicate"], counts["test", "admitted"]) == (10, 10)
    finally:
        ctl.shutdown(5)
        ring.stop()
