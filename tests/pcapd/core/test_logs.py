"""Log lines: key=value or JSON, and pcapdaemon's syslog priority and tag."""

from __future__ import annotations

import json
import logging
import logging.handlers
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pcapd.core.config import GeneralConfig, SyslogConfig
from pcapd.core.logs import JsonFormatter, KeyValueFormatter, event, setup_logging
from uploaders.base import UploadError
from uploaders.retry import RetryPolicy


def record(name: str, level: int = logging.INFO, **fields: Any) -> logging.LogRecord:
    """The record `event()` makes, logged from inside an `except` (for exc_info)."""
    logger = logging.getLogger("test.logs")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            captured.append(rec)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        try:
            raise RuntimeError("bug")
        except RuntimeError:
            event(logger, name, level, **fields)
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_key_value_lines_quote_what_needs_quoting() -> None:
    line = KeyValueFormatter(with_time=False).format(
        record("capture_done", id="r1", bpf="udp port 53", packets=5, error=None)
    )
    assert line == 'level=info event=capture_done id=r1 bpf="udp port 53" packets=5 error=null'


def test_every_kind_of_value_renders_as_one_token() -> None:
    # The encoders are made once (not per value): the same text as before.
    line = KeyValueFormatter(with_time=False).format(
        record(
            "x", n=0, f=1.5, on=True, none=None, empty="", path=Path("/a b"), eq="a=b",
            q='say "hi"', nl="a\nb", bare="eth0:1", tags=["a", "b c"],
            d={"k": [1], "p": Path("/x")},
        )
    )  # fmt: skip
    assert line == (
        'level=info event=x n=0 f=1.5 on=true none=null empty="" path="/a b" eq="a=b" '
        'q="say \\"hi\\"" nl="a\\nb" bare=eth0:1 tags="[\\"a\\",\\"b c\\"]" d={"k":[1],"p":"/x"}'
    )
    data = json.loads(JsonFormatter().format(record("x", path=Path("/p"), n=1)))
    assert (data["path"], data["n"]) == ("/p", 1)


def test_json_lines_carry_every_field() -> None:
    data = json.loads(JsonFormatter().format(record("capture_done", id="r1", packets=5)))
    assert (data["event"], data["id"], data["packets"], data["level"]) == (
        "capture_done", "r1", 5, "info",
    )  # fmt: skip


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, Path]]:
    path = tmp_path / "log.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, path
    sock.close()
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def test_syslog_gets_facility_from_priority_and_the_tag(
    syslog_socket: tuple[socket.socket, Path],
) -> None:
    sock, path = syslog_socket
    setup_logging(
        GeneralConfig(node="n"), SyslogConfig(enabled=True, priority=25, tag="pcapdaemon",
                                              address=str(path)),
    )  # fmt: skip
    event(logging.getLogger("pcapd.test"), "hello", logging.ERROR, id="r1")
    message = sock.recv(4096).decode()
    # facility daemon (3) from priority 25, severity err (3): <3*8+3> = <27>
    assert message.startswith("<27>pcapdaemon[")
    assert message.rstrip("\x00").endswith("level=error event=hello id=r1")


def test_missing_syslog_socket_leaves_stderr_logging(tmp_path: Path) -> None:
    setup_logging(GeneralConfig(node="n"),
                  SyslogConfig(enabled=True, address=str(tmp_path / "nope")))  # fmt: skip
    root = logging.getLogger()
    try:
        kinds = [type(h) for h in root.handlers]
        assert kinds == [logging.StreamHandler]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)


def test_a_converted_call_site_renders_as_an_event(caplog: pytest.LogCaptureFixture) -> None:
    """What a retrying upload logs: `event=... key=value` in kv mode, fields in
    JSON (it was `upload attempt failed what=... retry_in=0.42s` and a bare
    `msg` before issue 11)."""

    def fail() -> None:
        raise UploadError("503 slow down")

    retry = RetryPolicy(2, 1.0, 1.0, sleep=lambda _: None)
    caplog.set_level(logging.WARNING, logger="pcapd.uploaders.retry")
    with pytest.raises(UploadError):
        retry.run(fail, "s3:bucket")
    (rec,) = caplog.records
    line = KeyValueFormatter(with_time=False).format(rec)
    assert line.startswith("level=warning event=upload_attempt_failed what=s3:bucket attempt=1 ")
    assert 'error="503 slow down"' in line
    data = json.loads(JsonFormatter().format(rec))
    assert (data["event"], data["what"], data["attempts"], data["error"]) == (
        "upload_attempt_failed", "s3:bucket", 2, "503 slow down",
    )  # fmt: skip
    assert "msg" not in data and 0.5 <= data["retry_in"] <= 1.0


def test_an_event_with_exc_info_keeps_the_traceback() -> None:
    rec = record("source_crashed", logging.ERROR, exc_info=True, source="sqs")
    assert rec.pathname == __file__  # stacklevel=2: the caller's line, not logs.py's
    line = KeyValueFormatter(with_time=False).format(rec)
    assert line.startswith("level=error event=source_crashed source=sqs exception=")
    assert "RuntimeError: bug" in line
    data = json.loads(JsonFormatter().format(rec))
    assert data["event"] == "source_crashed" and "Traceback" in data["exception"]


def test_an_event_without_fields_is_still_an_event() -> None:
    data = json.loads(JsonFormatter().format(record("dnstap_stopping")))
    assert data["event"] == "dnstap_stopping" and "msg" not in data
    plain = logging.LogRecord("botocore", logging.INFO, __file__, 1, "a library's a=b", (), None)
    assert KeyValueFormatter(with_time=False).format(plain) == "level=info a library's a=b"
