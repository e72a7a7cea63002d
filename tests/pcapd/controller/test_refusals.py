"""The `request_rejected` warning under a burst (`RefusalLog`): the first
refusal of a reason at once, the rest as one summary line per interval; a
lone refusal at once; every result still carries its own reason."""

from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pcapd.controller.refusals import REFUSAL_LOG_INTERVAL, RefusalLog
from tests.helpers import RedisServer, free_port, logged, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_controller import Recorded, build, idle, request
from tests.pcapd.test_daemon import udp_request

# Long enough that a burst of in-process calls fits in one interval on a loaded machine.
INTERVAL = 2.0


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return logged(caplog, name, "pcapd.controller")


def test_a_burst_logs_its_first_refusal_then_one_summary_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(INTERVAL)
    with caplog.at_level(logging.WARNING, logger="pcapd.controller"):
        for i in range(50):  # the numbers in the reason vary: still one reason
            refusals.rejected(
                f"r{i}", f"bytes={i} does not fit: {i} held", alertid=None, interface="lo"
            )
        refusals.rejected(
            "other", "max_concurrent=16 captures already running", alertid=7, interface="lo"
        )
        first = lines(caplog, "request_rejected")
        assert first == [
            {"id": "r0", "alertid": None, "interface": "lo",
             "error": "bytes=0 does not fit: 0 held"},
            {"id": "other", "alertid": 7, "interface": "lo",
             "error": "max_concurrent=16 captures already running"},
        ]  # fmt: skip
        assert lines(caplog, "requests_rejected") == []  # not before the interval is over
        wait_for(lambda: lines(caplog, "requests_rejected"), timeout=INTERVAL * 5)
        (summary,) = lines(caplog, "requests_rejected")
        assert summary["rejected"] == 49
        assert summary["last_id"] == "r49"
        assert summary["error"] == "bytes=49 does not fit: 49 held"
        assert summary["seconds"] >= INTERVAL * 0.9
        # Quiet for an interval: the next one is logged at once again.
        time.sleep(INTERVAL * 1.2)
        refusals.rejected("late", "bytes=1 does not fit: 2 held")
        assert [line["id"] for line in lines(caplog, "request_rejected")] == ["r0", "other", "late"]
    assert len(lines(caplog, "requests_rejected")) == 1


def test_a_lone_refusal_is_logged_at_once_and_no_summary_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(0.2)
    with caplog.at_level(logging.WARNING, logger="pcapd.controller"):
        refusals.rejected("alone", "shutting down: not taking new captures")
        assert [line["id"] for line in lines(caplog, "request_rejected")] == ["alone"]
        time.sleep(0.6)  # three intervals: nothing was counted, so nothing to sum up
        refusals.rejected("again", "shutting down: not taking new captures")
        assert [line["id"] for line in lines(caplog, "request_rejected")] == ["alone", "again"]
        time.sleep(0.6)
    assert lines(caplog, "requests_rejected") == []


def test_a_refused_burst_is_answered_each_with_its_reason_and_logged_once_plus_a_summary(
    redis_srv: RedisServer, results: Results, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ctl = build(redis_srv, tmp_path / "caps", max_concurrent=1)
    port = free_port()
    burst = 30
    with caplog.at_level(logging.WARNING, logger="pcapd.controller"):
        ctl.handle(Recorded(request(port, id="holder", timeout=3)).delivery)  # holds the slot
        refused = [Recorded(request(port, id=f"burst-{i}", timeout=1)) for i in range(burst)]
        for got in refused:
            ctl.handle(got.delivery)
        for i in range(burst):
            event = results.for_id(f"burst-{i}")
            assert (event["status"], event["error"]) == (
                "rejected", "max_concurrent=1 captures already running"
            )  # fmt: skip
        assert all(got.acks == 1 for got in refused)

        def counted() -> int:
            return sum(line["rejected"] for line in lines(caplog, "requests_rejected"))

        # One summary; two if an interval ended mid-burst on a slow machine.
        wait_for(lambda: counted() == burst - 1, timeout=REFUSAL_LOG_INTERVAL * 10)
    assert [line["id"] for line in lines(caplog, "request_rejected")] == ["burst-0"]
    assert lines(caplog, "requests_rejected")[-1]["last_id"] == f"burst-{burst - 1}"
    # And the controller goes on serving.
    assert results.for_id("holder")["status"] == "empty"
    wait_for(lambda: idle(ctl))
    ctl.handle(Recorded(request(port, id="after", timeout=1)).delivery)
    assert results.for_id("after")["status"] == "empty"


def test_flush_logs_what_is_counted_from_a_daemon_thread_and_arms_nothing_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(INTERVAL * 10)  # no summary falls due during the test
    with caplog.at_level(logging.WARNING, logger="pcapd.controller"):
        # The trigger threads that refuse are daemon threads: so is the timer they arm.
        def refuse_five() -> None:
            for i in range(5):
                refusals.rejected(f"d{i}", "max_concurrent=1 x")

        burst = threading.Thread(target=refuse_five, daemon=True)
        burst.start()
        burst.join()
        timers = [t for t in threading.enumerate() if t.name == "refusal-log"]
        assert timers and all(t.daemon for t in timers)
        refusals.flush()
        (summary,) = lines(caplog, "requests_rejected")
        assert (summary["rejected"], summary["last_id"]) == (4, "d4")
        wait_for(lambda: not any(t.name == "refusal-log" for t in threading.enumerate()))
        refusals.flush()  # nothing left: no second line
    assert len(lines(caplog, "requests_rejected")) == 1


def test_sigterm_right_after_a_refused_burst_logs_its_summary_before_stopped(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path, max_concurrent=1)
    daemon.start()
    try:
        port = free_port()
        daemon.publish(udp_request(port, id="holder", duration=30, timeout=30))
        wait_for(lambda: daemon.started("holder"))
        for i in range(12):
            daemon.publish(udp_request(port, id=f"refused-{i}", timeout=1))
        for i in range(12):
            assert results.for_id(f"refused-{i}")["status"] == "rejected"
        daemon.signal()  # within the summary's interval, on a machine of any speed
        assert daemon.wait() == 0
        log = daemon.log()
        assert log.count("event=request_rejected ") == 1
        summaries = re.findall(r"event=requests_rejected rejected=(\d+) ", log)
        assert sum(map(int, summaries)) == 11
        assert log.rindex("event=requests_rejected ") < log.index("event=stopped ")
    finally:
        daemon.stop()


def test_a_flood_of_one_malformed_body_logs_once_plus_a_summary_and_each_is_answered(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    daemon = Daemon(redis_srv, tmp_path)
    daemon.start()
    try:
        for i in range(20):
            daemon.publish(
                {"id": f"bad-{i}", "node": "testnode", "interface": "lo", "packets": -1 - i}
            )
        for i in range(20):
            event = results.for_id(f"bad-{i}")
            assert event["status"] == "rejected"
            assert event["error"].startswith(f"packets={-1 - i}: ")
        daemon.publish(udp_request(free_port(), id="good", timeout=1))
        assert results.for_id("good")["status"] == "empty"  # still serving
        daemon.signal()
        assert daemon.wait() == 0
        log = daemon.log()
        first = re.findall(r"event=request_rejected id=(\S+) source=(\S+) ", log)
        assert len(first) == 1 and first[0][1].startswith("redis-pubsub")
        summaries = re.findall(r"event=requests_rejected rejected=(\d+) ", log)
        assert sum(map(int, summaries)) == 19
    finally:
        daemon.stop()
