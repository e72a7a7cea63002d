"""Ring captures through the controller in-process (a ring on lo, a real
redis-server): a stored capture's file is freed with its last reference,
not left to the cycle collector; stores run on the upload pool, never on a
capture thread; and a watched capture is taken on a capture thread, never
queued behind the uploads in progress (nor lost by shutdown)."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcapd.controller import Controller
from pcapd.core.logs import _FIELDS
from pcapd.ring import Ring
from pcapd.ring.feed import NO_CUTOFF
from pcapd.ring.watch import Watcher
from tests.helpers import RedisServer, free_port, needs_root, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from tests.pcapd.ring.test_reader import limits
from tests.pcapd.ring.test_watch import Broken
from tests.pcapd.test_controller import Recorded, build, idle, request
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import cloudshark  # noqa: F401  (a fixture)
from tests.uploaders.test_controller_spool import hanging_controller

pytestmark = needs_root


@pytest.fixture
def ring() -> Iterator[Ring]:
    made = Ring("lo", 5, 2 * 1024 * 1024, "udp")
    made.start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counts free objects: a cycle stays until the test ends."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_a_stored_ring_capture_and_its_file_are_freed_with_their_result(
    redis_srv: RedisServer, results: Results, tmp_path: Path, ring: Ring, no_collector: None
) -> None:
    ctl = build(redis_srv, tmp_path / "caps", rings={"lo": ring})
    try:
        port = free_port()
        got = Recorded(request(port, id="freed", packets=2, timeout=10))
        ctl.handle(got.delivery)
        (worker,) = ctl._capturing
        served = worker.served
        assert served is not None and not served.copying  # watched: no thread of its own
        feed = served._feed
        buf = feed.buf  # the file: grows in place, the same object to the end
        refs: list[weakref.ref[object]] = [weakref.ref(x) for x in (worker, served)]
        del worker, served
        threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
        event = results.for_id("freed")
        assert (event["status"], event["packets"]) == ("ok", 2)
        wait_for(lambda: got.acks == 1 and idle(ctl), timeout=20)
        # Held by a cycle these stay alive for good: the collector is off.
        wait_for(lambda: all(ref() is None for ref in refs), timeout=20)
        # The feed (slotted, no weak references): this test's name and the
        # call's argument only; its file: the feed's too.
        assert (sys.getrefcount(feed), sys.getrefcount(buf)) == (2, 3)
    finally:
        ctl.shutdown(5)
        ctl.publisher.stop(5)


def test_stores_run_on_upload_threads_not_capture_threads(
    redis_srv: RedisServer,
    results: Results,
    tmp_path: Path,
    ring: Ring,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ctl: Controller = build(
        redis_srv, tmp_path / "caps", rings={"lo": ring},
        interfaces=[{"name": "lo", "lookback": 5, "lookback_bytes": 2 * 1024 * 1024}],
        max_memory=16_000_000,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="pcapd.controller")
    try:
        port = free_port()
        sent = {
            "watched": Recorded(request(port, id="watched", packets=2, timeout=10)),
            # A lookback to copy: captured on a capture thread, stored elsewhere.
            "copied": Recorded(request(port, id="copied", packets=2, timeout=10, lookback=1)),
        }
        send_udp(port, 1, 0.0)  # something in the ring to look back at
        for got in sent.values():
            ctl.handle(got.delivery)
        threading.Timer(0.3, send_udp, args=(port, 3, 0.01)).start()
        for request_id in sent:
            assert results.for_id(request_id)["status"] == "ok"
        wait_for(lambda: idle(ctl) and all(g.acks == 1 for g in sent.values()), timeout=20)
    finally:
        ctl.shutdown(5)
        ctl.publisher.stop(5)
    done = {
        getattr(r, _FIELDS)["id"]: r.threadName for r in caplog.records if r.msg == "capture_done"
    }
    assert set(done) == set(sent), done
    for request_id, thread in done.items():
        assert (thread or "").startswith("upload"), (request_id, thread)


def test_a_watched_capture_is_answered_while_an_upload_hangs_and_shutdown_spools_the_upload(
    redis_srv: RedisServer,
    results: Results,
    tmp_path: Path,
    ring: Ring,
    cloudshark: CloudsharkServer,  # noqa: F811  (the fixture, imported)
) -> None:
    """One upload thread, busy with a hanging upload: a watched capture that
    ends meanwhile (empty) is answered and acked at once, not queued behind
    it, and shutdown spools the hanging one within its timeout."""
    ctl, spool = hanging_controller(
        redis_srv, tmp_path / "spool", cloudshark, rings={"lo": ring}, upload_workers=1
    )
    try:
        port = free_port()
        hung = Recorded(request(port, id="hung", packets=2, timeout=10))
        ctl.handle(hung.delivery)
        threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
        wait_for(lambda: cloudshark.requests >= 1, timeout=20)  # the one upload thread hangs
        empty = Recorded(request(free_port(), id="empty", duration=1))
        ctl.handle(empty.delivery)
        assert results.for_id("empty", timeout=15)["status"] == "empty"
        wait_for(lambda: empty.acks == 1, timeout=10)
        assert ctl.shutdown(3)
        event = results.for_id("hung")
        assert event["status"] == "spooled" and event["error"].startswith("shutdown:")
        [entry] = spool.list()
        assert entry.pending == ("cloudshark",) and entry.sha256 == event["sha256"]
        assert hung.acks == 1
    finally:
        cloudshark.release.set()
        ctl.shutdown(5)
        ctl._upload_pool.shutdown(wait=True)
        ctl.publisher.stop(5)


def test_a_watched_capture_the_reader_handed_over_is_not_cut_when_its_look_fails(
    ring: Ring,
) -> None:
    """The reader hands a capture over at its bound while the watcher looks
    at it and fails: the capture keeps its window and no "ended early" warning."""
    served = ring.register(
        limits(packets=2), fmt="pcap", bpf="", lookback=0, comments={"request_id": "t"}
    )
    calls: list[str] = []
    try:
        assert not served.watched(Broken(), calls.append)
        served.filled()  # the reader: its bound reached, handed over
        assert Watcher()._look(served, time.monotonic()) is None  # raises inside, logged
        assert calls == [""]
        assert served._cut_drops is None and served._feed.cutoff == NO_CUTOFF
        assert not [w for w in served.warnings if w.startswith("ended early")]
    finally:
        served.cancel()
