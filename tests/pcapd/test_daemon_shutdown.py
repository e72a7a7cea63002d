"""The end of `Daemon.run`'s shutdown, in-process against a private
redis-server: a ring whose stop raises does not skip the other rings, the
late ring captures (`settle_late`) or the results still queued."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator

import pytest

from pcapd.controller import Controller
from pcapd.core.config import parse_config
from pcapd.core.events import ResultEvent
from pcapd.core.lifecycle import EXIT_FAILURE
from pcapd.core.request import parse_request
from pcapd.daemon import Daemon
from pcapd.ring import Ring
from tests.helpers import RedisServer, free_port, logged
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.test_controller import request
from triggers.base import Delivery


class EndsACaptureThenFails(Ring):
    """A ring (never started: no handle) whose stop hands over the capture
    it ends, as a real one does, then raises."""

    def __init__(self, controller: Controller, request_id: str) -> None:
        super().__init__("lo", 1, 1 << 20)
        self.controller, self.request_id = controller, request_id

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.controller.on_capture_thread(self._ended, self.request_id)
        raise OSError("the handle would not close")

    def _ended(self, request_id: str) -> None:
        ctl = self.controller
        late = parse_request(json.dumps(request(free_port(), id=request_id)), ctl.config)
        ctl.publish(ResultEvent.for_request(late, ctl.node, "empty", stop="shutdown"))


class Stops(Ring):
    def __init__(self) -> None:
        super().__init__("lo", 1, 1 << 20)
        self.stopped = False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.stopped = True


def test_a_ring_whose_stop_raises_skips_nothing_after_it(
    redis_srv: RedisServer, results: Results, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config({"general": {"node": "n1"}, "redis": {"port": redis_srv.port}})
    daemon = Daemon(config)
    broken, other = EndsACaptureThenFails(daemon.controller, "late-ring"), Stops()
    daemon.rings.update(broken=broken, other=other)
    daemon.stop_sources.set()  # shut down as soon as it has started
    with caplog.at_level(logging.ERROR, logger="pcapd"):
        assert daemon.run() == EXIT_FAILURE  # not clean: a ring failed to stop
    assert other.stopped
    # Handed over by the failing stop, stored by settle_late, sent by the
    # publisher's stop before the process would exit.
    event = results.for_id("late-ring")
    assert (event["status"], event["stop"]) == ("empty", "shutdown")
    assert [f.get("interface") for f in logged(caplog, "ring_stop_failed")] == ["lo"]


class Idle:
    """A trigger source that gives no deliveries (its thread is the daemon's)
    and records its close."""

    connected = True
    reconnects = 0

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def deliveries(self, stop: threading.Event) -> Iterator[Delivery]:
        return iter(())

    def close(self) -> None:
        self.closed = True


class CloseFails(Idle):
    def close(self) -> None:
        raise OSError("the connection would not close")


def test_a_source_whose_close_raises_skips_nothing_and_stopped_is_said(
    redis_srv: RedisServer, results: Results, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config({"general": {"node": "n1"}, "redis": {"port": redis_srv.port}})
    daemon = Daemon(config)
    other = Idle("other-source")
    daemon.sources[:] = [CloseFails("broken-source"), other]
    late = EndsACaptureThenFails(daemon.controller, "late-after-source")
    late.stop = lambda: daemon.controller.on_capture_thread(late._ended, late.request_id)  # type: ignore[method-assign]
    daemon.rings.update(late=late)
    daemon.stop_sources.set()
    with caplog.at_level(logging.INFO, logger="pcapd"):
        daemon.run()
    assert other.closed
    assert results.for_id("late-after-source")["status"] == "empty"  # the tail still ran
    names = [r.getMessage() for r in caplog.records]
    assert "source_close_failed" in names and names[-1] == "stopped"
