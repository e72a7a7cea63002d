"""The flow agent: a pypcap handle (live or savefile) -> Tracker -> RedisWriter.

Live capture follows the engine facts in DESIGN.md: the handle is
non-blocking with `immediate=True`, and the loop waits in `select` on its fd
with a timeout, so it never blocks inside libpcap holding the GIL, and never
uses pypcap's iterator or `loop()` (they install their own SIGINT handler).
Interface names are checked against `pcap.findalldevs()` first: pypcap would
open a *file* of that name.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pcap

from agents.flow import packets, tracker
from agents.flow.config import FlowConfig
from agents.metrics import flow_families, serve_agent_metrics
from agents.pcap_errors import handle_error_text
from agents.redis_writer import RedisWriter, dropped_status, make_writer
from pcapd.core.errors import CaptureError as CaptureError  # what run_live/run_file raise
from pcapd.core.errors import PcapdError
from pcapd.core.lifecycle import EXIT_FAILURE, EXIT_OK, StopSignals
from pcapd.core.logs import event
from pcapd.core.metrics import Check

log = logging.getLogger("pcapd.agents.flow")

DISPATCH_BATCH = 10_000  # packets per dispatch() call before checking the clock
POLL_MAX = 0.2  # s: longest wait in select, so a stop request is seen quickly
# s: after a short batch, let packets gather before the next dispatch. With
# immediate mode every packet wakes select; at tens of thousands of packets/s
# the wake-ups, not the parsing, would cost most. The ring (buffer_size)
# holds far more than this many ms of traffic, and flows tolerate the delay.
COALESCE = 0.002
FLUSH_TIMEOUT = 10.0  # s: how long a stopping agent keeps sending what is queued
DIRECTIONS = {"in": pcap.PCAP_D_IN, "inout": pcap.PCAP_D_INOUT, "out": pcap.PCAP_D_OUT}


class AgentError(PcapdError):
    """The agent cannot start: bad interface, unreadable file, unknown link type."""


class FlowAgent:
    """One capture source feeding Redis, with a stats line every interval.

    Memory is bounded by the tracker (`max_tracked`) and the writer queue
    (`max_queue_ops`); the kernel ring is `buffer_size` bytes.
    """

    def __init__(self, config: FlowConfig, writer: RedisWriter) -> None:
        self.config = config
        self.writer = writer
        self.tracker = tracker.Tracker(
            config.ruleset(),
            config.our_nets,
            writer,
            suppress_own_network=config.suppress_own_network,
            suppress_window=config.suppress_window,
            max_tracked=config.max_tracked,
        )
        self.counts = packets.new_counts()
        self.seen = 0
        self._handle: Any = None

    # -- sources -------------------------------------------------------------
    def open_live(self, interface: str) -> None:
        names = pcap.findalldevs()
        if interface not in names:
            raise AgentError(
                f"interface {interface!r} not found; capture devices: {', '.join(names)}"
            )
        try:
            handle = pcap.pcap(
                name=interface,
                snaplen=self.config.snaplen,
                promisc=self.config.promisc,
                immediate=True,
                timestamp_in_ns=True,
                buffer_size=self.config.buffer_size,
            )
            handle.setdirection(DIRECTIONS[self.config.direction])
            handle.setnonblock(True)
        except OSError as exc:
            raise AgentError(f"cannot capture on {interface!r}: {exc}") from exc
        self._prepare(handle, interface)

    def open_file(self, path: str) -> None:
        if not os.path.isfile(path):
            raise AgentError(f"--read {path!r}: no such file")
        try:
            handle = pcap.pcap(name=path, timestamp_in_ns=True)
        except OSError as exc:
            raise AgentError(f"--read {path!r}: not a capture file: {exc}") from exc
        self._prepare(handle, path)

    def _prepare(self, handle: Any, source: str) -> None:
        if self.config.bpf:
            try:
                handle.setfilter(self.config.bpf)
            except OSError as exc:
                raise AgentError(f"agents.flow.bpf: {self.config.bpf!r}: {exc}") from exc
        try:
            self._callback = packets.make_handler(handle.datalink(), self.tracker, self.counts)
        except ValueError as exc:
            raise AgentError(f"{source}: {exc}") from exc
        self._handle = handle
        event(
            log, "flow_started", source=source, linktype=handle.datalink(),
            our_nets=",".join(str(n) for n in self.config.our_nets) or "-",
        )  # fmt: skip

    # -- loops ---------------------------------------------------------------
    def run_live(self, stop: threading.Event) -> None:
        handle = self._handle
        fd = handle.fileno()
        interval = self.config.stats_interval
        next_stats = time.monotonic() + interval
        dispatch = handle.dispatch
        callback = self._callback
        while not stop.is_set():
            count = dispatch(DISPATCH_BATCH, callback)
            if count < 0:  # pypcap returns libpcap's -1 instead of raising
                raise CaptureError(f"capture failed: {handle_error_text(handle)}")
            self.seen += count
            now = time.monotonic()
            if now >= next_stats:
                self.log_stats()
                next_stats = now + interval
            if count == 0:
                select.select([fd], [], [], min(POLL_MAX, max(0.0, next_stats - now)))
            elif count < DISPATCH_BATCH:
                time.sleep(COALESCE)
        self.log_stats()

    def run_file(self, stop: threading.Event | None = None) -> None:
        handle = self._handle
        callback = self._callback
        interval = self.config.stats_interval
        next_stats = time.monotonic() + interval
        while stop is None or not stop.is_set():
            count = handle.dispatch(DISPATCH_BATCH, callback)
            if count < 0:
                raise CaptureError(f"reading failed: {handle_error_text(handle)}")
            if count == 0:
                break
            self.seen += count
            if time.monotonic() >= next_stats:
                self.log_stats()
                next_stats = time.monotonic() + interval

    # -- stats ---------------------------------------------------------------
    def kernel_stats(self) -> tuple[int, int]:
        """(received, dropped) from libpcap; zeros for a savefile."""
        try:
            received, dropped, _ifdropped = self._handle.stats()
        except (OSError, AttributeError):
            return 0, 0
        return int(received), int(dropped)

    def stats(self) -> dict[str, int]:
        result = {"packets": self.seen}
        result.update(zip(packets.COUNTER_NAMES, self.counts, strict=True))
        result.update(zip(tracker.COUNTER_NAMES, self.tracker.counts, strict=True))
        result["dropped_by_rule"] = sum(
            self.tracker.counts[i]
            for i in (tracker.DROP_NO_NETWORK, tracker.DROP_NO_RULE, tracker.DROP_RULE)
        )
        _received, dropped = self.kernel_stats()
        result["kernel_dropped"] = dropped
        result.update(self.writer.stats_fields())
        return result

    def input_check(self) -> Check:
        if self._handle is None:
            return Check("input", False, "no capture open")
        return Check("input", True, f"capturing, {self.seen} packets read")

    def log_stats(self, name: str = "flow_stats") -> None:
        fields: dict[str, Any] = self.stats()
        event(log, name, **fields)


def run(config: FlowConfig, connect: Callable[[], Any], read: str | None = None) -> int:
    """Capture (or read `read`) until done or signalled, then send what is
    queued (at most `FLUSH_TIMEOUT` s). A second signal leaves at once."""
    writer = make_writer(config, connect)
    agent = FlowAgent(config, writer)
    try:
        if read:
            agent.open_file(read)
        else:
            assert config.interface is not None
            agent.open_live(config.interface)
    except AgentError as exc:
        print(f"pcapd agent flow: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    metrics = serve_agent_metrics(
        "flow", config.metrics_listen, agent.stats, flow_families, writer, agent.input_check
    )
    signals = StopSignals("flow")
    signals.install()
    writer.start()
    status = EXIT_OK
    try:
        if read:
            agent.run_file(signals.stop)
        else:
            agent.run_live(signals.stop)
    except (CaptureError, OSError) as exc:
        # The interface went away or libpcap failed: exit non-zero so that
        # systemd restarts the agent, after sending what is queued.
        event(log, "flow_capture_failed", logging.ERROR, error=str(exc))
        status = EXIT_FAILURE
    finally:
        writer.stop(FLUSH_TIMEOUT)
        agent.log_stats("flow_done")
        if metrics is not None:
            metrics.stop()
    if read and status == EXIT_OK:
        status = dropped_status(writer, "flow")  # a file read whole, some keys lost
    return status
