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


def record(name: str, **fields: Any) -> logging.LogRecord:
    logger = logging.getLogger("test.logs")
    captured: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, rec: logging.LogRecord) -> None:
            captured.append(rec)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        event(logger, name, **fields)
    finally:
        logger.removeHandler(handler)
    return captured[0]


def test_key_value_lines_quote_what_needs_quoting() -> None:
    line = KeyValueFormatter(with_time=False).format(
        record("capture_done", id="r1", bpf="udp port 53", packets=5, error=None)
    )
    assert line == 'level=info event=capture_done id=r1 bpf="udp port 53" packets=5 error=null'


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
