"""A Frame Streams *writer*, blocking: what BIND/Unbound do, for replays,
the benchmark and tests. Bidirectional by default (READY/ACCEPT, START,
frames, STOP/FINISH), or unidirectional (START, frames, STOP)."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from agents.dnstap import fstrm
from agents.dnstap.errors import ControlFrameError, UnexpectedFrame

_U32 = struct.Struct(">I")
SEND_CHUNK = 256 * 1024


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("reader closed the connection")
        data += chunk
    return bytes(data)


def read_control(sock: socket.socket) -> fstrm.Control:
    escape, length = struct.unpack(">II", _recv_exact(sock, 8))
    if escape != 0 or length > fstrm.MAX_CONTROL_FRAME:
        raise ControlFrameError(f"expected a control frame, got length {escape}/{length}")
    return fstrm.parse_control(_recv_exact(sock, length))


class FrameWriter:
    def __init__(
        self,
        sock: socket.socket,
        content_type: bytes = fstrm.CONTENT_TYPE,
        bidirectional: bool = True,
    ) -> None:
        self.sock = sock
        self.content_type = content_type
        self.bidirectional = bidirectional

    def start(self) -> None:
        if self.bidirectional:
            self.sock.sendall(fstrm.encode_control(fstrm.CONTROL_READY, (self.content_type,)))
            accept = read_control(self.sock)
            if accept.kind != fstrm.CONTROL_ACCEPT:
                raise UnexpectedFrame(f"expected ACCEPT, got {accept.name}")
        self.sock.sendall(fstrm.encode_control(fstrm.CONTROL_START, (self.content_type,)))

    def write(self, payloads: Iterable[bytes]) -> None:
        buf = bytearray()
        for payload in payloads:
            buf += _U32.pack(len(payload))
            buf += payload
            if len(buf) >= SEND_CHUNK:
                self.sock.sendall(buf)
                buf.clear()
        if buf:
            self.sock.sendall(buf)

    def stop(self) -> None:
        self.sock.sendall(fstrm.encode_control(fstrm.CONTROL_STOP))
        if self.bidirectional:
            finish = read_control(self.sock)
            if finish.kind != fstrm.CONTROL_FINISH:
                raise UnexpectedFrame(f"expected FINISH, got {finish.name}")
