from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dnstap import dnstap_pb2
from agents.dnstap.errors import BadProtobuf, DnstapError, MessageError
from agents.dnstap.message import MESSAGE_TYPES, client_response, decode_dnstap
from tests.agents.dnstap.builders import CLIENT_RESPONSE, response_wire, tap_payload

WIRE = response_wire("www.example.test.", "A", [("www.example.test.", "A", "192.0.2.10")])


@pytest.mark.parametrize("kind", sorted(MESSAGE_TYPES.values()))
def test_every_message_type_decodes(kind: int) -> None:
    m = decode_dnstap(tap_payload(WIRE, kind=kind))
    assert m.type == kind
    assert m.type_name == dnstap_pb2.Message.Type.Name(kind)


def test_fields_v4_and_v6() -> None:
    m = decode_dnstap(tap_payload(WIRE, client="192.0.2.1"))
    assert (m.query_address, m.response_address) == ("192.0.2.1", "127.0.0.53")
    assert (m.query_port, m.response_port) == (53000, 53)
    assert m.socket_family == dnstap_pb2.INET and m.socket_protocol == dnstap_pb2.UDP
    assert m.query_time == pytest.approx(1_700_000_000.25)
    assert m.response_time == pytest.approx(1_700_000_000.5)
    assert (m.response_message, m.query_message, m.identity) == (WIRE, None, b"test")
    m6 = decode_dnstap(tap_payload(WIRE, client="2001:db8::1"))
    assert m6.query_address == "2001:db8::1" and m6.socket_family == dnstap_pb2.INET6


def test_client_response_hot_path() -> None:
    wanted = frozenset({CLIENT_RESPONSE})
    assert client_response(tap_payload(WIRE), wanted) == (
        CLIENT_RESPONSE, bytes([127, 0, 0, 1]), WIRE,
    )  # fmt: skip
    assert client_response(tap_payload(WIRE, kind=5), wanted) == 5


@pytest.mark.parametrize(
    ("payload", "error", "message"),
    [
        (b"\xff\xff\xff", BadProtobuf, "not a dnstap protobuf"),
        (b"\x78\x01", BadProtobuf, "Dnstap.message is missing"),
        (b"\x78\x01\x72\x00", BadProtobuf, "Message.type is missing"),
        (b"\x78\x01\x72\x02\x08\x63", BadProtobuf, "Message.type is missing or not a known"),
        (b"\x78\x01\x72\x02\x08\x06", MessageError, "query_address of 0 bytes"),
        (b"\x78\x01\x72\x07\x08\x06\x22\x03\x01\x02\x03", MessageError,
         "query_address of 3 bytes"),
        (b"\x78\x01\x72\x08\x08\x06\x22\x04\x7f\x00\x00\x01", MessageError,
         "CLIENT_RESPONSE without response_message"),
    ],
)  # fmt: skip
def test_bad_payloads(payload: bytes, error: type[MessageError], message: str) -> None:
    with pytest.raises(error, match=message):
        client_response(payload, frozenset({CLIENT_RESPONSE}))


def test_bad_address_in_full_decode() -> None:
    with pytest.raises(MessageError, match=r"Message\.query_address: address of 3 bytes"):
        decode_dnstap(b"\x78\x01\x72\x07\x08\x06\x22\x03\x01\x02\x03")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_message_errors(data: bytes) -> None:
    for payload in (data, b"\x78\x01\x72" + bytes([min(len(data), 127)]) + data):
        with contextlib.suppress(DnstapError):
            decode_dnstap(payload)
        with contextlib.suppress(DnstapError):
            client_response(payload, frozenset(MESSAGE_TYPES.values()))
