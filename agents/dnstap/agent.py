"""The dnstap agent: decoded responses to ShoDoHFlo's Redis keys.

Per CLIENT_RESPONSE (by default) whose question is A or AAAA, ShoDoHFlo's
values: NXDOMAIN gives `client;<c>` and `<c>;<qname>;nx` INCR, every time; an
answer with final addresses gives, per address, `client;<c>` INCR and
`<c>;<address>;dns` += owner name, and per CNAME link `<c>;<target>;cname` +=
alias; an answer without one writes nothing (`agents.dnstap.record`). Keys come
from `agents.store` only; writes go through its bounded, batched `RedisWriter`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from agents.dnstap.config import DEDUP_GLOBAL, DnstapConfig, HostPort
from agents.dnstap.dedup import Deduper
from agents.dnstap.errors import MessageError
from agents.dnstap.message import MESSAGE_TYPE_NAMES, client_response
from agents.dnstap.record import DEDUPED, NO_ADDRESS, RECORDED, Prepared, Recorder
from agents.dnstap.response import (
    RCODE_NOERROR,
    RCODE_NXDOMAIN,
    Response,
    address_text,
    parse_response,
)
from agents.dnstap.server import ConnectionStats, DnstapServer
from agents.metrics import dnstap_families, serve_agent_metrics
from agents.redis_writer import OpSink, RedisWriter
from pcapd.core.lifecycle import EXIT_OK, StopSignals
from pcapd.core.logs import event
from pcapd.core.metrics import Check
from pcapd.core.redis_conn import Client

log = logging.getLogger("pcapd.agents.dnstap")

QTYPE_NAMES = {1: "A", 28: "AAAA"}
# What ResponseRecorder's own filters drop (Prepared.outcome, beside record's).
OTHER_QTYPE = 10
OTHER_RCODE = 11
IGNORED = 12
# Distinct client addresses whose text form is kept; cleared when full.
CLIENT_CACHE_ENTRIES = 65_536
# Bad-input log lines per ERROR_LOG_WINDOW seconds before they are only
# counted; a window of its own, so it holds with stats_interval = 0 too.
MAX_ERROR_LOGS = 100
ERROR_LOG_WINDOW = 60.0
# GIL hand-over interval for the agent process. With Python's 5 ms default the
# Redis writer thread, woken by a reply, waits up to 5 ms for the decoding
# thread: that alone capped writes near 140k operations/s here.
GIL_SWITCH_INTERVAL = 0.0005
# Seconds spent sending the Redis queue after the first SIGTERM.
FLUSH_TIMEOUT = 5.0


@dataclass(slots=True)
class RecordStats:
    """What `ResponseRecorder` did with the responses it was given."""

    responses: int = 0
    nxdomain: int = 0
    deduped: int = 0
    no_address: int = 0  # NOERROR without a final address: nothing written
    ignored: int = 0
    other_qtype: int = 0
    other_rcode: int = 0
    udp_sent: int = 0
    udp_errors: int = 0


@dataclass(slots=True)
class AgentStats(RecordStats):
    frames: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    decode_errors: Counter[str] = field(default_factory=Counter)


class UdpOutput:
    """ShoDoHFlo's JSON datagrams, one per final address (or per NXDOMAIN)."""

    def __init__(self, target: HostPort, interface: str | None, ttl: int) -> None:
        family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
        self.address = (target.host, target.port)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        if family == socket.AF_INET:
            self.sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)
            if interface:
                self.sock.setsockopt(
                    socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(interface)
                )
        else:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        self.next_id = 0

    def send(self, datagram: dict[str, Any]) -> None:
        self.next_id += 1
        datagram["id"] = self.next_id
        self.sock.sendto(json.dumps(datagram).encode(), self.address)

    def close(self) -> None:
        self.sock.close()


class RecordSettings(Protocol):
    """What a recording agent's config gives `ResponseRecorder` and
    `make_writer` (DnstapConfig, agents.dnswire's DnswireConfig)."""

    @property
    def record_type_numbers(self) -> frozenset[int]: ...
    @property
    def ignore(self) -> tuple[str, ...]: ...
    @property
    def dedup_window(self) -> float: ...
    @property
    def dedup_scope(self) -> str: ...
    @property
    def dedup_max_entries(self) -> int: ...
    @property
    def ttl_grace(self) -> int: ...
    @property
    def max_queue_ops(self) -> int: ...
    @property
    def batch_ops(self) -> int: ...
    @property
    def flush_interval(self) -> float: ...
    @property
    def client_index(self) -> bool: ...


class ResponseRecorder:
    """One parsed response -> the agent's filters (question type, rcode,
    ignored names) -> `record.Recorder`'s writes, with the counters and the
    optional JSON datagrams. The dnstap agent and agents.dnswire (sniffed
    responses, DNSFlow ingest) both call `record`, so the way an answer
    arrived does not change what a reader sees.

    Memory: the client cache (`CLIENT_CACHE_ENTRIES` texts) and the deduper
    (`dedup_max_entries` x ~275 bytes). Not thread-safe.
    """

    def __init__(
        self,
        writer: OpSink,
        config: RecordSettings,
        *,
        stats: RecordStats | None = None,
        udp: UdpOutput | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats if stats is not None else RecordStats()
        self.dedup = Deduper(config.dedup_window, config.dedup_max_entries, clock)
        self.recorder = Recorder(writer, self.dedup, config.dedup_scope == DEDUP_GLOBAL)
        self.udp = udp
        self._qtypes = config.record_type_numbers
        self._ignore = config.ignore
        self._ignore_dotted = tuple("." + s for s in config.ignore)
        self._clients: dict[bytes, str] = {}

    def prepare(self, resp: Response) -> Prepared:
        """What recording `resp` does for any client: the filters here (type,
        rcode, ignored names) and then `Recorder.prepare`."""
        if resp.qtype not in self._qtypes:
            return Prepared(OTHER_QTYPE, (resp.qname, resp.qtype), None)
        rcode = resp.rcode
        if rcode != RCODE_NOERROR and rcode != RCODE_NXDOMAIN:
            return Prepared(OTHER_RCODE, (resp.qname, resp.qtype), None)
        qname = resp.qname
        if self._ignore and (qname in self._ignore or qname.endswith(self._ignore_dotted)):
            return Prepared(IGNORED, (resp.qname, resp.qtype), None)
        return Recorder.prepare(resp)

    def record(self, packed: bytes, resp: Response, prepared: Prepared | None = None) -> None:
        """`packed`: the client's address, 4 or 16 bytes; `prepared`:
        `prepare(resp)` made earlier (agents.dnswire caches them)."""
        prep = prepared or self.prepare(resp)
        stats = self.stats
        if prep.writes is None:
            if prep.outcome == NO_ADDRESS:
                stats.no_address += 1
            elif prep.outcome == OTHER_QTYPE:
                stats.other_qtype += 1
            elif prep.outcome == OTHER_RCODE:
                stats.other_rcode += 1
            else:
                stats.ignored += 1
            return
        client = self._clients.get(packed)
        if client is None:
            if len(self._clients) >= CLIENT_CACHE_ENTRIES:
                self._clients.clear()
            client = self._clients[packed] = address_text(packed)
        outcome = self.recorder.record(client, resp, prep)
        if outcome == RECORDED:
            stats.responses += 1
            if self.udp is not None:
                reverse = list(reversed(resp.chain))
                for _rtype, address in resp.addresses:
                    self._send_udp(
                        {"chain": reverse, "client": client, "qtype": QTYPE_NAMES[resp.qtype],
                         "status": "NOERROR", "address": address}
                    )  # fmt: skip
        elif outcome == DEDUPED:
            stats.deduped += 1
        else:
            stats.responses += 1
            stats.nxdomain += 1
            if self.udp is not None:
                self._send_udp(
                    {"chain": [resp.qname], "client": client, "qtype": QTYPE_NAMES[resp.qtype],
                     "status": "NXDOMAIN"}
                )  # fmt: skip

    def _send_udp(self, datagram: dict[str, Any]) -> None:
        assert self.udp is not None
        try:
            self.udp.send(datagram)
            self.stats.udp_sent += 1
        except OSError as exc:
            self.stats.udp_errors += 1
            if self.stats.udp_errors == 1:
                event(
                    log,
                    "dnstap_udp_error",
                    logging.WARNING,
                    target=self.udp.address,
                    error=str(exc),
                )


class DnstapAgent:
    """Turns data frames into Redis writes. Not thread-safe: one event loop."""

    def __init__(
        self,
        config: DnstapConfig,
        writer: RedisWriter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.writer = writer
        self.stats = AgentStats()
        self.server = DnstapServer(config, self.handle)
        self.udp = (
            UdpOutput(config.udp_output, config.udp_interface, config.udp_ttl)
            if config.udp_output
            else None
        )
        self.responses = ResponseRecorder(
            writer, config, stats=self.stats, udp=self.udp, clock=clock
        )
        self.dedup = self.responses.dedup
        self.recorder = self.responses.recorder
        self._wanted = config.message_type_numbers
        self._clock = clock
        self._error_logs = 0
        self._error_window_end = clock() + ERROR_LOG_WINDOW

    def handle(self, payload: bytes, conn: ConnectionStats) -> None:
        stats = self.stats
        stats.frames += 1
        conn.frames += 1
        try:
            got = client_response(payload, self._wanted)
            if isinstance(got, int):
                stats.messages[MESSAGE_TYPE_NAMES.get(got, str(got))] += 1
                return
            kind, packed, wire = got
            stats.messages[MESSAGE_TYPE_NAMES[kind]] += 1
            conn.messages += 1
            resp = parse_response(wire)
        except MessageError as exc:
            self._bad(exc, conn)
            return
        self.responses.record(packed, resp)

    def _bad(self, exc: MessageError, conn: ConnectionStats) -> None:
        kind = type(exc).__name__
        self.stats.decode_errors[kind] += 1
        conn.errors += 1
        now = self._clock()
        if now >= self._error_window_end:
            self._error_logs = 0
            self._error_window_end = now + ERROR_LOG_WINDOW
        if self._error_logs < MAX_ERROR_LOGS:
            self._error_logs += 1
            event(
                log, "dnstap_bad_message", logging.WARNING, conn=conn.id, peer=conn.peer,
                error=kind, reason=str(exc),
            )  # fmt: skip

    # -- reporting ---------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Every counter, for the stats line and the metrics endpoint."""
        data = asdict(self.stats)
        data["messages"] = dict(self.stats.messages)
        data["decode_errors"] = dict(self.stats.decode_errors)
        srv = self.server.stats
        data["frame_errors"] = dict(srv.frame_errors)
        data["connections_open"] = len(self.server.connections)
        data["connections_opened"] = srv.connections_opened
        data["connections_refused"] = srv.connections_refused
        data["connections_closed"] = srv.connections_closed
        w = self.writer.stats
        data["keys_written"] = w.written_ops
        data["queue_depth"] = self.writer.queue_depth
        data["dropped"] = w.dropped_ops
        data["redis_errors"] = w.redis_errors
        data["dedup_entries"] = len(self.dedup)
        data["per_connection"] = [
            {"conn": c.conn.id, "listener": c.conn.listener, "peer": c.conn.peer,
             "frames": c.conn.frames, "messages": c.conn.messages, "errors": c.conn.errors}
            for c in self.server.connections.values()
            if c.conn is not None
        ]  # fmt: skip
        return data

    def input_check(self) -> Check:
        """Ready once a resolver is connected: without one the agent hears nothing."""
        n = len(self.server.connections)
        if n:
            return Check("input", True, f"{n} resolver connection(s) open")
        return Check("input", False, "no resolver connected to the dnstap socket or listener")

    def log_stats(self) -> None:
        data = self.snapshot()
        per_conn = data.pop("per_connection")
        event(log, "dnstap_stats", **data)
        for c in per_conn:
            event(log, "dnstap_connection_stats", **c)

    # -- lifecycle ---------------------------------------------------------
    async def serve(self, stop: asyncio.Event, started: Callable[[], None] | None = None) -> None:
        """Listen until `stop` is set, logging stats every interval."""
        interval = self.config.stats_interval
        try:
            await self.server.start()
            if started is not None:
                started()
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval if interval > 0 else None)
                if interval > 0:
                    self.log_stats()
        finally:
            await self.server.close()
            if self.udp is not None:
                self.udp.close()


def make_writer(config: RecordSettings, connect: Callable[[], Client]) -> RedisWriter:
    return RedisWriter(
        connect,
        ttl=config.ttl_grace,
        max_queue_ops=config.max_queue_ops,
        batch_ops=config.batch_ops,
        flush_interval=config.flush_interval,
        index=config.client_index,
    )


def run(config: DnstapConfig, connect: Callable[[], Client]) -> int:
    """Serve until SIGTERM/SIGINT, then send what is queued (at most
    `FLUSH_TIMEOUT` s) and exit 0. A second signal exits at once, status 1."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    writer = make_writer(config, connect)
    agent = DnstapAgent(config, writer)
    metrics = serve_agent_metrics(
        "dnstap", config.metrics_listen, agent.snapshot, dnstap_families, writer, agent.input_check
    )
    writer.start()

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_warm() -> None:
            # In the signal handler: only schedule the stop on the loop.
            event(log, "dnstap_stopping")
            loop.call_soon_threadsafe(stop.set)

        # Replaces the SIGINT handler asyncio.run adds, and stays in place
        # while the queue is flushed, so a second signal there leaves at once.
        StopSignals("dnstap", on_warm=(on_warm,)).install()
        await agent.serve(stop)

    try:
        asyncio.run(main())
    finally:
        writer.stop(timeout=FLUSH_TIMEOUT)
        agent.log_stats()
        if metrics is not None:
            metrics.stop()
    return EXIT_OK
