"""dnstap payloads (protobuf `dnstap.Dnstap`) to values.

Decoding uses the `protobuf` package (upb: ~0.8 µs for what the agent reads);
`dnstap_pb2` is generated from `dnstap.proto` (the command is in that file).
Any failure, including a foreign exception from the runtime, becomes a
`MessageError` naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf.message import DecodeError

from agents.dnstap import dnstap_pb2
from agents.dnstap.errors import BadProtobuf, DnsFormError, MessageError
from agents.dnstap.response import address_text

MESSAGE_TYPES: dict[str, int] = dict(dnstap_pb2.Message.Type.items())
MESSAGE_TYPE_NAMES: dict[int, str] = {v: k for k, v in MESSAGE_TYPES.items()}
NANOSECOND = 1e-9


@dataclass(frozen=True, slots=True)
class TapMessage:
    """One dnstap `Message`, addresses as text, times as float seconds."""

    type: int
    socket_family: int | None
    socket_protocol: int | None
    query_address: str | None
    response_address: str | None
    query_port: int | None
    response_port: int | None
    query_time: float | None
    response_time: float | None
    query_message: bytes | None
    response_message: bytes | None
    identity: bytes | None

    @property
    def type_name(self) -> str:
        return MESSAGE_TYPE_NAMES.get(self.type, str(self.type))


def _parse(payload: bytes) -> dnstap_pb2.Dnstap:
    tap = dnstap_pb2.Dnstap()
    try:
        tap.ParseFromString(payload)
    except DecodeError as exc:
        raise BadProtobuf(f"not a dnstap protobuf: {exc}") from exc
    except Exception as exc:  # the runtime's own failures are bad input too
        raise BadProtobuf(f"not a dnstap protobuf: {type(exc).__name__}: {exc}") from exc
    if not tap.HasField("message"):
        raise BadProtobuf("Dnstap.message is missing")
    if not tap.message.HasField("type"):
        raise BadProtobuf("Message.type is missing or not a known type")
    return tap


def _address(message: dnstap_pb2.Message, field: str) -> str | None:
    if not message.HasField(field):
        return None
    try:
        return address_text(getattr(message, field))
    except DnsFormError as exc:
        raise MessageError(f"Message.{field}: {exc}") from None


def decode_dnstap(payload: bytes) -> TapMessage:
    """Every field of the dnstap `Message` in one data frame."""
    tap = _parse(payload)
    m = tap.message
    has = m.HasField

    def when(sec: str, nsec: str) -> float | None:
        if not has(sec):
            return None
        return float(getattr(m, sec)) + float(getattr(m, nsec)) * NANOSECOND

    return TapMessage(
        type=m.type,
        socket_family=m.socket_family if has("socket_family") else None,
        socket_protocol=m.socket_protocol if has("socket_protocol") else None,
        query_address=_address(m, "query_address"),
        response_address=_address(m, "response_address"),
        query_port=m.query_port if has("query_port") else None,
        response_port=m.response_port if has("response_port") else None,
        query_time=when("query_time_sec", "query_time_nsec"),
        response_time=when("response_time_sec", "response_time_nsec"),
        query_message=m.query_message if has("query_message") else None,
        response_message=m.response_message if has("response_message") else None,
        identity=tap.identity if tap.HasField("identity") else None,
    )


def client_response(payload: bytes, wanted: frozenset[int]) -> tuple[int, bytes, bytes] | int:
    """The agent's hot path: (type, query address bytes, response message),
    or just the type when it is not in `wanted`. Raises `MessageError` when a
    wanted message lacks the client address or the response."""
    m = _parse(payload).message
    kind = m.type
    if kind not in wanted:
        return kind
    address = m.query_address
    if len(address) not in (4, 16):
        raise MessageError(f"Message.query_address of {len(address)} bytes, expected 4 or 16")
    response = m.response_message
    if not response:
        raise MessageError(f"{MESSAGE_TYPE_NAMES[kind]} without response_message")
    return kind, address, response
