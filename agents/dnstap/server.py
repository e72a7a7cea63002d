"""Frame Streams listeners: a unix socket and TCP (optionally TLS), many
connections at once, one `FrameDecoder` per connection.

Everything runs on one asyncio loop: decoding a frame and queueing its Redis
writes never blocks (the writer's queue is bounded and drops when full), so
a slow Redis never stalls a resolver. A bad frame closes only its own
connection, with a logged reason and a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import logging
import os
import socket
import ssl
import stat
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from agents.dnstap import fstrm
from agents.dnstap.config import DnstapConfig
from agents.dnstap.errors import FrameError
from pcapd.core.logs import event

log = logging.getLogger("pcapd.agents.dnstap")

Sink = Callable[[bytes, "ConnectionStats"], None]
LISTEN_BACKLOG = 128


@dataclass(slots=True)
class ConnectionStats:
    id: int
    listener: str
    peer: str
    opened: float = field(default_factory=time.time)
    bytes: int = 0
    frames: int = 0
    messages: int = 0
    errors: int = 0


@dataclass(slots=True)
class ServerStats:
    connections_opened: int = 0
    connections_closed: int = 0
    connections_refused: int = 0
    frame_errors: Counter[str] = field(default_factory=Counter)


class FstrmProtocol(asyncio.Protocol):
    def __init__(
        self, server: DnstapServer, listener: str, tls: ssl.SSLContext | None = None
    ) -> None:
        self.server = server
        self.listener = listener
        self.tls = tls
        self._tls_task: asyncio.Task[None] | None = None
        # asyncio may deliver decrypted data before start_tls() hands over the
        # TLS transport (to answer READY on): hold it until then.
        self._held: list[bytes] | None = [] if tls is not None else None
        self.decoder = fstrm.FrameDecoder(max_frame=server.config.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.conn: ConnectionStats | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._frame_timer: asyncio.TimerHandle | None = None  # while a frame is part-read
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        srv = self.server
        peer = transport.get_extra_info("peername")
        text = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else _unix_peer(transport)
        self.conn = ConnectionStats(next(srv.ids), self.listener, text)
        if len(srv.connections) >= srv.config.max_connections:
            srv.stats.connections_refused += 1
            event(
                log, "dnstap_connection_refused", logging.WARNING, listener=self.listener,
                peer=text, reason=f"max_connections={srv.config.max_connections} reached",
            )  # fmt: skip
            self._closing = True
            transport.abort()
            return
        srv.connections[self.conn.id] = self
        srv.stats.connections_opened += 1
        loop = asyncio.get_running_loop()
        if self.tls is not None:
            # TLS is started here, not by the server, so that a failed
            # handshake is counted and logged like any other bad input. The
            # Frame Streams timer starts once TLS is up: ssl_handshake_timeout
            # bounds the handshake, and aborting the raw transport under
            # asyncio's TLS wrapper would never reach our connection_lost.
            transport.pause_reading()
            self._tls_task = loop.create_task(self._start_tls(transport, self.tls))
        else:
            self._arm_timer()
        event(log, "dnstap_connected", conn=self.conn.id, listener=self.listener, peer=text)

    async def _start_tls(self, raw: asyncio.Transport, context: ssl.SSLContext) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                raw, self, context, server_side=True,
                ssl_handshake_timeout=self.server.config.handshake_timeout,
            )  # fmt: skip
        except Exception as exc:  # any failure is the peer's: count it, keep serving
            self._fail("tls_handshake", f"TLS handshake failed: {str(exc) or type(exc).__name__}")
            self._release()  # the raw transport's connection_lost is not ours any more
            return
        if tls is None:  # closed meanwhile
            self._release()
            return
        self.transport = tls
        self._arm_timer()
        held, self._held = self._held or [], None
        for data in held:
            self.data_received(data)

    def _arm_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.server.config.handshake_timeout, self._handshake_timeout)

    def _release(self) -> ConnectionStats | None:
        """Give the connection slot back, once: the stats if it was held."""
        for timer in (self._timer, self._frame_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._frame_timer = None
        conn = self.conn
        if conn is None or self.server.connections.pop(conn.id, None) is None:
            return None
        self.server.stats.connections_closed += 1
        return conn

    def _handshake_timeout(self) -> None:
        if self.decoder.phase in (fstrm.Phase.OPENING, fstrm.Phase.READY):
            self._fail(
                "handshake_timeout", f"no START within {self.server.config.handshake_timeout}s"
            )

    def _frame_timeout(self) -> None:
        self._fail(
            "frame_timeout",
            f"a frame was begun and not finished within {self.server.config.frame_timeout}s "
            f"({self.decoder.pending} bytes held)",
        )

    def _watch_frame(self, completed: bool) -> None:
        """Time the frame being read: from its first byte, until it is whole."""
        if not self.decoder.pending:
            if self._frame_timer is not None:
                self._frame_timer.cancel()
                self._frame_timer = None
        elif completed or self._frame_timer is None:
            if self._frame_timer is not None:
                self._frame_timer.cancel()
            loop = asyncio.get_running_loop()
            self._frame_timer = loop.call_later(
                self.server.config.frame_timeout, self._frame_timeout
            )

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._held is not None:
            self._held.append(data)
            return
        conn = self.conn
        assert conn is not None and self.transport is not None
        conn.bytes += len(data)
        sink = self.server.sink
        try:
            frames = self.decoder.feed(data)
        except FrameError as exc:
            for item in exc.frames:
                if isinstance(item, bytes):
                    sink(item, conn)
            self._fail(type(exc).__name__, str(exc))
            return
        for item in frames:
            if isinstance(item, bytes):
                sink(item, conn)
            else:
                self._control(item)
        if not self._closing:
            self._watch_frame(bool(frames))

    def _control(self, control: fstrm.Control) -> None:
        assert self.transport is not None
        if control.kind == fstrm.CONTROL_READY:
            self.transport.write(self.decoder.accept_frame())
        elif control.kind == fstrm.CONTROL_START:
            if self._timer is not None:
                self._timer.cancel()
        elif control.kind == fstrm.CONTROL_STOP:
            if self.decoder.bidirectional:
                self.transport.write(self.decoder.finish_frame())
            self._closing = True
            self.transport.close()

    def _fail(self, kind: str, reason: str) -> None:
        conn = self.conn
        assert conn is not None and self.transport is not None
        if self._closing:  # one reason per connection
            return
        conn.errors += 1
        self.server.stats.frame_errors[kind] += 1
        event(
            log, "dnstap_connection_error", logging.WARNING, conn=conn.id,
            listener=conn.listener, peer=conn.peer, error=kind, reason=reason,
        )  # fmt: skip
        self._closing = True
        self.transport.abort()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        conn = self._release()
        if conn is None:
            return
        if not self._closing and self.decoder.pending:
            conn.errors += 1
            self.server.stats.frame_errors["truncated"] += 1
            event(
                log, "dnstap_connection_error", logging.WARNING, conn=conn.id,
                listener=conn.listener, peer=conn.peer, error="truncated",
                reason=f"closed inside a frame, {self.decoder.pending} bytes left over",
            )  # fmt: skip
        event(
            log, "dnstap_disconnected", conn=conn.id, peer=conn.peer, frames=conn.frames,
            messages=conn.messages, errors=conn.errors,
            clean=self.decoder.phase is fstrm.Phase.STOPPED,
        )  # fmt: skip


class DnstapServer:
    """Listens where `config` says and hands each data frame to `sink`."""

    def __init__(self, config: DnstapConfig, sink: Sink) -> None:
        self.config = config
        self.sink = sink
        self.stats = ServerStats()
        self.connections: dict[int, FstrmProtocol] = {}
        self.ids = itertools.count(1)
        self._servers: list[asyncio.Server] = []
        self.tcp_address: tuple[str, int] | None = None
        self._bound_path: str | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.config
        if cfg.socket:
            sock = _unix_socket(cfg.socket, cfg.socket_mode, cfg.socket_group)
            self._bound_path = cfg.socket
            self._servers.append(
                await loop.create_unix_server(lambda: FstrmProtocol(self, "unix"), sock=sock)
            )
            event(log, "dnstap_listening", listener="unix", path=cfg.socket)
        if cfg.listen is not None:
            context = None
            if cfg.tls_cert and cfg.tls_key:
                context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            name = "tls" if context else "tcp"
            server = await loop.create_server(
                lambda: FstrmProtocol(self, name, context), cfg.listen.host, cfg.listen.port,
                reuse_address=True, backlog=LISTEN_BACKLOG,
            )  # fmt: skip
            self._servers.append(server)
            self.tcp_address = server.sockets[0].getsockname()[:2]
            event(log, "dnstap_listening", listener=name, address=cfg.listen)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for proto in list(self.connections.values()):
            if proto.transport is not None:
                proto.transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        if self._bound_path is not None:  # only the file this server made
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._bound_path)
            self._bound_path = None


_PEERCRED = struct.Struct("3i")


def _unix_peer(transport: asyncio.Transport) -> str:
    """`unix:named[1234]`: which resolver process is on the other end."""
    sock = transport.get_extra_info("socket")
    try:
        pid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )[0]
        with open(f"/proc/{pid}/comm") as handle:
            return f"unix:{handle.read().strip()}[{pid}]"
    except (OSError, AttributeError):
        return "unix"


def _unix_socket(path: str, mode: int, group: str | None) -> socket.socket:
    """Bind `path`, replacing a stale socket file (never any other file)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket: not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale: nobody listens
        else:
            raise OSError(f"{path}: another process is listening on it")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        os.chmod(path, mode)
        if group is not None:
            os.chown(path, -1, grp.getgrnam(group).gr_gid)
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
