"""The `request_rejected` warning under a burst (`RefusalLog`): the first
refusal of a reason at once, the rest as one summary line per interval; a
lone refusal at once; every result still carries its own reason."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest

from pcapd.controller.refusals import REFUSAL_LOG_INTERVAL, RefusalLog
from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.test_controller import Recorded, build, idle, request

# Long enough that a burst of in-process calls fits in one interval on a loaded machine.
INTERVAL = 2.0


def lines(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [
        getattr(r, "pcapd_fields", {}) for r in caplog.records
        if r.name == "pcapd.controller" and r.getMessage() == name
    ]  # fmt: skip


def test_a_burst_logs_its_first_refusal_then_one_summary_with_the_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(INTERVAL)
    with caplog.at_level(logging.WARNING, logger="pcapd.controller"):
        for i in range(50):  # the numbers in the reason vary: still one reason
            refusals.rejected(f"r{i}", None, "lo", f"bytes={i} does not fit: {i} held")
        refusals.rejected("other", 7, "lo", "max_concurrent=16 captures already running")
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
        refusals.rejected("late", None, "lo", "bytes=1 does not fit: 2 held")
        assert [line["id"] for line in lines(caplog, "request_rejected")] == ["r0", "other", "late"]
    assert len(lines(caplog, "requests_rejected")) == 1


def test_a_lone_refusal_is_logged_at_once_and_no_summary_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refusals = RefusalLog(0.2)
    with caplog.at_level(logging.WARNING, logger="pcapd.controller"):
        refusals.rejected("alone", None, None, "shutting down: not taking new captures")
        assert [line["id"] for line in lines(caplog, "request_rejected")] == ["alone"]
        time.sleep(0.6)  # three intervals: nothing was counted, so nothing to sum up
        refusals.rejected("again", None, None, "shutting down: not taking new captures")
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
