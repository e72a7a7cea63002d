"""The dnstap agent: decoded responses to ShoDoHFlo's Redis keys.

Per CLIENT_RESPONSE (by default) whose question is A or AAAA, ShoDoHFlo's
values: NXDOMAIN gives `client;<c>` and `<c>;<qname>;nx` INCR, every time; an
answer with final addresses gives, per address, `client;<c>` INCR and
`<c>;<address>;dns` += owner name, and per CNAME link `<c>;<target>;cname` +=
alias; an answer without one writes nothing (`agents.dnstap.record`). Keys come
from `agents.store` only; writes go through its bounded, batched `RedisWriter`.
The filters and counters per response live in `agents.response_recorder`,
shared with agents.dnswire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from agents.dnstap.config import DnstapConfig
from agents.dnstap.errors import MessageError
from agents.dnstap.message import MESSAGE_TYPE_NAMES, client_response
from agents.dnstap.response import (
    parse_response,
)
from agents.dnstap.server import ConnectionStats, DnstapServer
from agents.dnstap.udp import UdpOutput
from agents.log_limit import WINDOW, LogLimit
from agents.metrics import dnstap_families, serve_agent_metrics
from agents.redis_writer import RedisWriter, make_writer
from agents.response_recorder import RecordStats, ResponseRecorder
from pcapd.core.lifecycle import EXIT_OK, StopSignals
from pcapd.core.logs import event
from pcapd.core.metrics import Check
from pcapd.core.redis_conn import Client

log = logging.getLogger("pcapd.agents.dnstap")

# Bad-input log lines per log_limit.WINDOW seconds, whatever stats_interval
# is, before they are only counted (in `bad_logs_suppressed`).
MAX_ERROR_LOGS = 100
# GIL hand-over interval for the agent process. With Python's 5 ms default the
# Redis writer thread, woken by a reply, waits up to 5 ms for the decoding
# thread: that alone capped writes near 140k operations/s here.
GIL_SWITCH_INTERVAL = 0.0005
# Seconds spent sending the Redis queue after the first SIGTERM.
FLUSH_TIMEOUT = 5.0


@dataclass(slots=True)
class AgentStats(RecordStats):
    frames: int = 0
    messages: Counter[str] = field(default_factory=Counter)
    decode_errors: Counter[str] = field(default_factory=Counter)


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
        self._log_limit = LogLimit(MAX_ERROR_LOGS, WINDOW, clock)

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
        if self._log_limit.allow():
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
        data["bad_logs_suppressed"] = self._log_limit.suppressed
        srv = self.server.stats
        data["frame_errors"] = dict(srv.frame_errors)
        data["connections_open"] = len(self.server.connections)
        data["connections_opened"] = srv.connections_opened
        data["connections_refused"] = srv.connections_refused
        data["connections_closed"] = srv.connections_closed
        data.update(self.writer.stats_fields())
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
            # On the signal thread: only schedule the stop on the loop, unless
            # the loop has already ended (serve failed) and is flushing.
            event(log, "dnstap_stopping")
            with contextlib.suppress(RuntimeError):  # the loop is closed
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
