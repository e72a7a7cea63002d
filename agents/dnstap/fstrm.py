"""Frame Streams (the transport under dnstap), reader side, on bytes.

Wire format: a data frame is a 32-bit big-endian length and that many bytes.
A control frame is an escape (length 0), a 32-bit control length, a 32-bit
control type and fields, each a 32-bit field type (1 = content type), a
32-bit length and the value. A bidirectional writer (BIND, Unbound) sends
READY; the reader answers ACCEPT naming the content type; the writer sends
START, data frames, STOP; the reader answers FINISH. A unidirectional writer
(fstrm_capture's peers, files) starts with START.

`FrameDecoder` holds no socket: it is fed bytes and returns data payloads and
the control frames the caller must answer. It buffers at most one frame
(`max_frame` bytes plus a header) whatever arrives.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import Enum

from agents.dnstap.errors import (
    ContentTypeError,
    ControlFrameError,
    FrameError,
    FrameTooLarge,
    UnexpectedFrame,
)

CONTENT_TYPE = b"protobuf:dnstap.Dnstap"

CONTROL_ACCEPT = 0x01
CONTROL_START = 0x02
CONTROL_STOP = 0x03
CONTROL_READY = 0x04
CONTROL_FINISH = 0x05
CONTROL_NAMES = {
    CONTROL_ACCEPT: "ACCEPT",
    CONTROL_START: "START",
    CONTROL_STOP: "STOP",
    CONTROL_READY: "READY",
    CONTROL_FINISH: "FINISH",
}
FIELD_CONTENT_TYPE = 0x01

# libfstrm's own limits for control frames and content-type fields.
MAX_CONTROL_FRAME = 512
MAX_CONTENT_TYPE = 256
# A DNS message is at most 64 KiB; dnstap adds the query and metadata.
DEFAULT_MAX_FRAME = 256 * 1024

_U32 = struct.Struct(">I")
_U32_PAIR = struct.Struct(">II")


@dataclass(frozen=True, slots=True)
class Control:
    kind: int
    content_types: tuple[bytes, ...] = ()

    @property
    def name(self) -> str:
        return CONTROL_NAMES.get(self.kind, f"type{self.kind}")


def encode_control(kind: int, content_types: tuple[bytes, ...] = ()) -> bytes:
    body = _U32.pack(kind) + b"".join(
        _U32_PAIR.pack(FIELD_CONTENT_TYPE, len(ct)) + ct for ct in content_types
    )
    return _U32_PAIR.pack(0, len(body)) + body


def encode_data(payload: bytes) -> bytes:
    if not payload:
        raise ValueError("a data frame cannot be empty: length 0 is the control escape")
    return _U32.pack(len(payload)) + payload


def parse_control(body: bytes) -> Control:
    """The control frame after its escape and length: type, then fields."""
    if len(body) < 4:
        raise ControlFrameError(f"control frame of {len(body)} bytes has no type")
    (kind,) = _U32.unpack_from(body, 0)
    if kind not in CONTROL_NAMES:
        raise ControlFrameError(f"unknown control type {kind}")
    pos, end = 4, len(body)
    types: list[bytes] = []
    while pos < end:
        if end - pos < 8:
            raise ControlFrameError(f"truncated field header in {CONTROL_NAMES[kind]}")
        field, length = _U32_PAIR.unpack_from(body, pos)
        pos += 8
        if field != FIELD_CONTENT_TYPE:
            raise ControlFrameError(f"unknown field type {field} in {CONTROL_NAMES[kind]}")
        if length > MAX_CONTENT_TYPE or length > end - pos:
            raise ControlFrameError(
                f"content type of {length} bytes in {CONTROL_NAMES[kind]} exceeds "
                f"the frame or the limit of {MAX_CONTENT_TYPE}"
            )
        types.append(body[pos : pos + length])
        pos += length
    return Control(kind, tuple(types))


class Phase(Enum):
    OPENING = "opening"  # nothing yet: READY (bidirectional) or START
    READY = "ready"  # READY seen and answered with ACCEPT: START next
    DATA = "data"
    STOPPED = "stopped"


class FrameDecoder:
    """Incremental Frame Streams reader for one connection.

    `feed(data)` returns the data payloads (bytes) and `Control` frames in
    order. The caller answers READY with `accept_frame()` and, for a
    bidirectional writer, STOP with `finish_frame()`. A `FrameError` ends the
    connection; its `frames` attribute holds what decoded before it.
    """

    def __init__(
        self, content_type: bytes = CONTENT_TYPE, max_frame: int = DEFAULT_MAX_FRAME
    ) -> None:
        self.content_type = content_type
        self.max_frame = max_frame
        self.phase = Phase.OPENING
        self.bidirectional = False
        # An incomplete frame is gathered here and parsed only once `_need`
        # bytes are in: a frame trickling in byte by byte costs linear time.
        self._buf = bytearray()
        self._need = 0

    @property
    def pending(self) -> int:
        """Bytes held for a frame that has not arrived whole."""
        return len(self._buf)

    def accept_frame(self) -> bytes:
        return encode_control(CONTROL_ACCEPT, (self.content_type,))

    def finish_frame(self) -> bytes:
        return encode_control(CONTROL_FINISH)

    def feed(self, data: bytes) -> list[bytes | Control]:
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return []
            view = bytes(self._buf)
        else:
            view = data
        out: list[bytes | Control] = []
        pos, end = 0, len(view)
        unpack = _U32.unpack_from
        max_frame = self.max_frame
        need = 4  # bytes the next frame needs at least, once the loop stops
        try:
            while end - pos >= 4:
                (length,) = unpack(view, pos)
                if length:
                    if self.phase is not Phase.DATA:
                        raise UnexpectedFrame(
                            f"data frame while {self.phase.value}: START must come first"
                        )
                    if length > max_frame:
                        raise FrameTooLarge(
                            f"data frame of {length} bytes exceeds max_frame_bytes={max_frame}"
                        )
                    stop = pos + 4 + length
                    if stop > end:
                        need = stop - pos
                        break
                    out.append(view[pos + 4 : stop])
                    pos = stop
                    continue
                if end - pos < 8:
                    need = 8
                    break
                (clen,) = unpack(view, pos + 4)
                if clen > MAX_CONTROL_FRAME:
                    raise ControlFrameError(
                        f"control frame of {clen} bytes exceeds the limit of {MAX_CONTROL_FRAME}"
                    )
                stop = pos + 8 + clen
                if stop > end:
                    need = stop - pos
                    break
                control = parse_control(view[pos + 8 : stop])
                self._advance(control)
                out.append(control)
                pos = stop
        except FrameError as exc:
            exc.frames = out
            self._buf = bytearray()
            raise
        self._buf = bytearray(view[pos:]) if pos < end else bytearray()
        self._need = need
        return out

    def _advance(self, control: Control) -> None:
        kind, phase = control.kind, self.phase
        if kind == CONTROL_READY and phase is Phase.OPENING:
            if self.content_type not in control.content_types:
                offered = b", ".join(control.content_types).decode("ascii", "replace")
                raise ContentTypeError(
                    f"READY offers [{offered}], not {self.content_type.decode()}"
                )
            self.bidirectional = True
            self.phase = Phase.READY
        elif kind == CONTROL_START and phase in (Phase.OPENING, Phase.READY):
            if len(control.content_types) > 1:
                raise ControlFrameError("START names more than one content type")
            if control.content_types and control.content_types[0] != self.content_type:
                raise ContentTypeError(
                    f"START content type {control.content_types[0].decode('ascii', 'replace')}"
                    f" is not {self.content_type.decode()}"
                )
            self.phase = Phase.DATA
        elif kind == CONTROL_STOP and phase is Phase.DATA:
            self.phase = Phase.STOPPED
        else:
            raise UnexpectedFrame(f"{control.name} while {phase.value}")
