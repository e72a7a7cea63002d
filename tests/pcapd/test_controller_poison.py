"""Poisonous requests through `Controller.handle`, against a real redis-server:
each is answered `rejected` naming the field, acked, and the controller goes on
capturing. The bpf of issue 9 used to abort the daemon inside pypcap."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.helpers import RedisServer, free_port, wait_for
from tests.pcapd.daemon_fixture import Results
from tests.pcapd.engine.test_capture import send_udp
from tests.pcapd.test_controller import Recorded, build, idle, request


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (
            b'{"id":"p1","node":"any","interface":"lo","bpf":"\\ud800"}',
            'bpf: "\\ud800" holds U+D800 at character 0; a filter is printable ASCII',
        ),
        (
            b'{"id":"p1","nodere":"n\\ud800","interface":"lo"}',
            'nodere: "n\\ud800" holds a lone surrogate (not UTF-8 text) U+D800 at character 1',
        ),
        (
            b'{"id":"p1","node":"n1","interface":"lo","format":"pcapng","tags":"a\\udc00"}',
            'tags: "a\\udc00" holds a lone surrogate (not UTF-8 text) U+DC00 at character 1',
        ),
        (
            b'{"id":"p1","node":"n1","interface":"lo","customer":"x\\u0000"}',
            'customer: "x\\u0000" holds a control character U+0000 at character 1',
        ),
        (
            b'{"id":"p1","node":"n1","interface":"lo","endpoint":"tcp[99999999]"}',
            "endpoint: \"tcp[99999999]\": not a host name or URL: '99999999' does not appear to "
            "be an IPv4 or IPv6 address",
        ),
    ],
)
def test_poison_is_rejected_naming_the_field_and_capturing_goes_on(
    redis_srv: RedisServer, results: Results, tmp_path: Path, raw: bytes, error: str
) -> None:
    ctl = build(redis_srv, tmp_path)
    poisoned = Recorded(raw)
    ctl.handle(poisoned.delivery)
    event = results.for_id("p1")
    assert (event["status"], event["error"], event["node"]) == ("rejected", error, "n1")
    assert (poisoned.acks, poisoned.releases) == (1, 0)

    port = free_port()
    good = Recorded(request(port, id="good", packets=2))
    ctl.handle(good.delivery)
    threading.Timer(0.3, send_udp, args=(port, 2, 0.01)).start()
    assert results.for_id("good")["status"] == "ok"
    wait_for(lambda: good.settled and idle(ctl))


def test_oversized_request_is_rejected_by_its_size(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    ctl = build(redis_srv, tmp_path, max_request_bytes=1024)
    raw = b'{"id":"big","node":"n1","interface":"lo","x":"' + b"y" * 2000 + b'"}'
    got = Recorded(raw)
    ctl.handle(got.delivery)
    event = results.next()
    assert (event["status"], event["id"]) == ("rejected", None)
    assert event["error"] == (
        f"request is {len(raw)} bytes; the limit is 1024 (general.max_request_bytes)"
    )
    assert got.acks == 1


def test_pcapng_header_too_big_for_bytes_is_rejected_not_failed(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    """A failed capture is released for redelivery; this one would fail forever."""
    ctl = build(redis_srv, tmp_path)
    got = Recorded(request(free_port(), id="tiny", format="pcapng", bytes=40))
    ctl.handle(got.delivery)
    event = results.for_id("tiny")
    assert event["status"] == "rejected"
    assert event["error"].startswith("bytes=40 cannot hold even the ")
    wait_for(lambda: got.settled and idle(ctl))
    assert (got.acks, got.releases) == (1, 0)
