"""The end of `Daemon.run`'s shutdown, in-process against a private
redis-server: a ring whose stop raises does not skip the other rings, the
late ring captures (`settle_late`) or the results still queued."""

from __future__ import annotations

import json
import logging

import pytest

from pcapd.controller import Controller
from pcapd.core.config import parse_config
from pcapd.core.events import ResultEvent
from pcapd.core.lifecycle import EXIT_FAILURE
from pcapd.core.request import parse_request
from pcapd.daemon import Daemon
from pcapd.ring import Ring
from tests.helpers import RedisServer, free_port
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.test_controller import request


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
    failed = [r for r in caplog.records if r.getMessage() == "ring_stop_failed"]
    assert [getattr(r, "pcapd_fields", {}).get("interface") for r in failed] == ["lo"]
