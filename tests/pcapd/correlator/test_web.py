"""`pcapd web` (a subprocess, with a real redis-server) against a hostile
sender: every bad parameter or capture request answers 4xx with the rule,
never 500, and no capture request it refuses reaches the request channel."""

from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcapd.client import subscribe
from pcapd.core.config import DEFAULT_CHANNEL
from pcapd.correlator.captures import flow_of
from tests.helpers import RedisServer, free_port
from tests.pcapd.correlator.site import web_server

TOKEN = "hostile-test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
# Any code point, lone surrogates, NULs and controls included.
ANY_TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=40)


@pytest.fixture
def web(redis_srv: RedisServer, tmp_path: Path) -> Iterator[str]:
    config = tmp_path / "web.toml"
    config.write_text(f'[redis]\nport = {redis_srv.port}\n\n'
                      f'[correlator]\nport = {free_port()}\ntoken = "{TOKEN}"\n')  # fmt: skip
    log = tmp_path / "web.log"
    with web_server(config, log) as url:
        yield url
    assert "Traceback" not in log.read_text()


def call(url: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url + path, data=body, headers=AUTH if body else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
            kind = answer.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get_content_type()
    return status, json.loads(raw) if kind == "application/json" else raw.decode()


def published(client: Any, pubsub: Any) -> list[dict[str, Any]]:
    """What the correlator published so far: read up to a marker sent now."""
    client.publish(DEFAULT_CHANNEL, b'"marker"')
    bodies: list[dict[str, Any]] = []
    while (message := pubsub.get_message(timeout=5)) is not None:
        if message["type"] == "message":
            body = json.loads(message["data"])
            if body == "marker":
                return bodies
            bodies.append(body)
    raise AssertionError("the marker did not come back")


FLOW = {"client": "10.0.0.1", "service": "10.0.0.2"}
REFUSED = [
    # fields, what the error says
    ({"client": "fe80::1%x or not port 22", "service": "10.0.0.2"},
     "client: 'fe80::1%x or not port 22' has a zone (%...); give the address alone"),
    ({"client": "10.0.0.1", "service": "fe80::2%\x00"}, "service: 'fe80::2%\\x00' has a zone"),
    ({**FLOW, "bpf": "host 10.0.0.1\x00 or port 22"},
     "bpf: holds U+0000 at character 13; a filter is printable ASCII"),
    ({**FLOW, "bpf": "host \ud800"}, "bpf: holds U+D800 at character 5"),
    ({**FLOW, "bpf": "port 53\x1b[2J"}, "bpf: holds U+001B at character 7"),
    ({**FLOW, "packets": "\u00b2"}, "packets: '\u00b2' is not a whole number from 1 to"),
    ({**FLOW, "port": "\u0668\u0660"}, "port: '\u0668\u0660' is not a whole number"),
]  # fmt: skip


def test_refused_capture_requests_name_the_field_and_publish_nothing(
    web: str, redis_srv: RedisServer
) -> None:
    client = redis_srv.client()  # held: a dropped client closes the subscription's pool
    pubsub = subscribe(client, DEFAULT_CHANNEL)
    for fields, message in REFUSED:
        status, answer = call(web, "/api/captures", json.dumps(fields).encode())
        assert (status, answer["error"][: len(message)]) == (400, message), fields
    nested = b'{"client": ' * 100_000  # json.loads raises RecursionError, not ValueError
    status, answer = call(web, "/api/captures", nested)
    assert (status, answer) == (400, {"error": "send the capture form fields as a JSON object"})
    for path, message in [
        ("/api/clients/fe80::1%25x%20or%20host%201.2.3.4", "has a zone (%...)"),
        ("/api/clients?limit=%C2%B2", "limit: '\u00b2' is not a whole number"),
        ("/api/clients?cursor=%D9%A1", "cursor: '\u0661' is not a SCAN cursor"),
        ("/api/clients?prefix=fe80::%25x/64", "prefix: 'fe80::%x/64' has a zone"),
        ("/api/pivot/address?address=10.0.0.1&port=%C2%B9", "port: '\u00b9' is not a port"),
    ]:
        status, answer = call(web, path)
        assert status == 400 and message in answer["error"], (path, answer)
    assert published(client, pubsub) == []
    status, answer = call(web, "/api/captures", json.dumps(FLOW).encode())
    assert status == 202
    assert [body["id"] for body in published(client, pubsub)] == [answer["id"]]


LONG = "9" * 5000  # past int()'s 4300 digits: int() raises ValueError


def test_numbers_past_ints_digit_limit_are_400_naming_the_field(
    web: str, redis_srv: RedisServer
) -> None:
    client = redis_srv.client()  # held: a dropped client closes the subscription's pool
    pubsub = subscribe(client, DEFAULT_CHANNEL)
    for field, message in [("packets", "is not a whole number from 1 to"),
                           ("duration", "is not a whole number from 1 to"),
                           ("port", "is not a whole number from 1 to 65535")]:  # fmt: skip
        status, answer = call(web, "/api/captures", json.dumps({**FLOW, field: LONG}).encode())
        assert status == 400 and answer["error"].startswith(f"{field}: '{LONG[:20]}' {message}")
    for path, message in [
        (f"/api/clients?limit={LONG}", f"limit: '{LONG[:20]}' is not a whole number from 1 to"),
        (f"/api/clients?cursor={LONG}", f"cursor: '{LONG[:24]}' is not a SCAN cursor"),
        (f"/api/pivot/address?address=10.0.0.1&port={LONG}",
         f"port: '{LONG[:20]}' is not a port number (0-65535)"),
        ("/api/pivot/address?address=10.0.0.1&port=5_300", "port: '5_300' is not a port number"),
        ("/api/clients?limit=%2B5", "limit: '+5' is not a whole number"),
    ]:  # fmt: skip
        status, answer = call(web, path)
        assert status == 400 and answer["error"].startswith(message), (path, answer)
    assert published(client, pubsub) == []


PADDED = "0" * 5000 + "1"  # few digits once the zeros go, but past 4300 for int()


def test_zero_padded_numbers_are_read_as_their_value(web: str, redis_srv: RedisServer) -> None:
    client = redis_srv.client()  # held: a dropped client closes the subscription's pool
    pubsub = subscribe(client, DEFAULT_CHANNEL)
    status, answer = call(web, "/api/captures", json.dumps({**FLOW, "packets": PADDED}).encode())
    assert status == 202, answer
    assert [body["packets"] for body in published(client, pubsub)] == [1]
    for path in [f"/api/clients?limit={PADDED}", f"/api/clients?cursor={PADDED[:-1]}",
                 f"/api/pivot/address?address=10.0.0.1&port={PADDED}"]:  # fmt: skip
        status, answer = call(web, path)
        assert status == 200, (path, answer)


def _canonical(text: str) -> bool:
    return str(ipaddress.ip_address(text)) == text and "%" not in text


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.dictionaries(
        st.sampled_from(["client", "service", "port", "bpf", "packets", "duration", "node"]),
        ANY_TEXT | st.sampled_from(["10.0.0.1", "fe80::1%eth0", "::1", "80", "\u00b2"]),
    ),
    query=ANY_TEXT,
)
def test_any_text_is_refused_or_sent_clean(
    web: str, redis_srv: RedisServer, fields: dict[str, str], query: str
) -> None:
    """Whatever the fields hold, 400 or 202; what is published has canonical
    addresses and a printable ASCII filter."""
    client = redis_srv.client()  # held: a dropped client closes the subscription's pool
    pubsub = subscribe(client, DEFAULT_CHANNEL)
    status, answer = call(web, "/api/captures", json.dumps(fields).encode())
    assert status in (400, 202), answer
    sent = published(client, pubsub)
    if status == 202:
        assert len(sent) == 1 and sent[0]["bpf"].isascii() and sent[0]["bpf"].isprintable()
        flow = flow_of(sent[0]["id"])
        assert flow is not None and _canonical(flow[0]) and _canonical(flow[1])
    else:
        assert sent == [] and answer["error"]
    quoted = urllib.parse.quote(query.encode("utf-8", "surrogatepass"), safe="")
    for path in (f"/?q={quoted}&limit={quoted}", f"/api/clients/{quoted or 'x'}",
                 f"/api/pivot/name?name={quoted}", f"/capture/new?client={quoted}"):  # fmt: skip
        status, _ = call(web, path)
        assert status < 500, path
