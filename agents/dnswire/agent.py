"""The dnswire agent: sniffed DNS responses -> Redis keys and DNSFlow's export.

One pypcap handle (live or a file), the BPF filter from `filters`, packets
decoded by `decode`, each message parsed by the dnstap agent's parser and
given to its `ResponseRecorder`, so a sniffed answer records exactly what the same
answer seen through dnstap records. DNSFlow's v4 export (`export.Packer`) is
fed from the same parse.

Live capture follows the engine facts in DESIGN.md: non-blocking handle,
waits in `select` on its fd, never pypcap's iterator or `loop()`; but not
`immediate=True` (see `source.open_live`, which opens the handles):
telemetry can wait 50 ms, a full ring cannot.
"""

from __future__ import annotations

import logging
import random
import select
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from agents.dnstap.errors import DnsFormError
from agents.dnstap.record import Prepared
from agents.dnstap.response import Response, parse_response
from agents.dnswire import decode, export, filters, reassembly, source, stats
from agents.dnswire.config import DnswireConfig
from agents.dnswire.source import AgentError, CaptureError
from agents.log_limit import LogLimit
from agents.pcap_errors import handle_error_text, pcap_error_text
from agents.redis_writer import RedisWriter
from agents.response_recorder import RecordStats, ResponseRecorder
from agents.write_queue import OpBuffer
from pcapd.core.logs import event
from pcapd.core.metrics import Check

log = logging.getLogger("pcapd.agents.dnswire")

DISPATCH_BATCH = 10_000  # packets per dispatch() before the clock is checked
POLL_MAX = 0.2  # s: longest wait in select, so a stop request is seen quickly
# s: after a short batch, let packets gather before the next dispatch: with
# immediate mode every packet would otherwise wake select (see agents.flow).
COALESCE = 0.002
# Reading a file: packets per batch are chosen so that this many operations
# per response fit in half the writer's queue, and a batch waits at most
# WRITER_PATIENCE s for the queue to shrink (Redis down: then drop and count).
FILE_OPS_PER_RESPONSE = 16
WRITER_PATIENCE = 10.0
TICK = 0.5  # s between checks of the export's push and stats timers
# Bad DNS messages logged per stats interval (`LogLimit.per_stats_interval`);
# all are counted, the lines over it in `bad_logs_suppressed`.
MAX_ERROR_LOGS = 20
# Parsed responses kept by their bytes after the ID: a popular name's answer
# repeats byte for byte (the resolver's cache gives the same TTLs within a
# second) and a hit skips the parse, the recorder's filters and the key
# building (`ResponseRecorder.prepare`, kept beside the parse) and the export
# set's names and addresses (`export.SetBody`), half of a response's cost
# (see docs/performance.md). Two generations, each of at most
# PARSE_CACHE_ENTRIES entries and PARSE_CACHE_BYTES of their estimated size
# (`_entry_cost`): when the new one fills it becomes the old one, and a hit
# there moves back, so the popular answers survive the turnover. Messages
# over PARSE_CACHE_MAX_MESSAGE bytes are not kept. A typical answer's entry
# holds ~1.05 KB (tracemalloc), so 32,768 of them fit the byte budget; one
# crafted to hold long CNAME chains holds up to ~29 KB (names as escaped
# text are 4x their wire form, and the keys repeat them), and the budget
# holds ~750 of those: at most ~2 x 40 MiB whatever arrives.
PARSE_CACHE_ENTRIES = 32_768
PARSE_CACHE_BYTES = 40 << 20
PARSE_CACHE_MAX_MESSAGE = 512
# `_entry_cost`, an upper bound of what an entry holds (the tests measure
# it): the objects of an entry with short names, then per character of the
# names and address texts (the parse, the key suffixes and members each
# hold them; measured 2.1-2.6 bytes per character).
ENTRY_BASE_COST = 1_000
ENTRY_COST_PER_CHAR = 4


# A message's parse, the recorder's verdict on it (None: not recording), the
# export set it makes (None: not exported, or not exporting) and the entry's
# estimated size in bytes.
Parsed = tuple[Response, Prepared | None, export.SetBody | None, int]


def _entry_cost(key: bytes, resp: Response, body: export.SetBody | None) -> int:
    chars = sum(map(len, resp.chain)) + sum(len(address) for _rtype, address in resp.addresses)
    tail = 0 if body is None else len(body.tail)
    return ENTRY_BASE_COST + len(key) + ENTRY_COST_PER_CHAR * chars + tail


class WireAgent:
    """One capture source; records into Redis (`writer`) and/or exports
    (`send`). Not thread-safe: one capture loop."""

    def __init__(
        self,
        config: DnswireConfig,
        writer: RedisWriter | None,
        send: export.Send | None,
        clock: Callable[[], float] = time.monotonic,
        export_stats: export.ExportStats | None = None,
    ) -> None:
        self.config = config
        self.writer = writer
        self.clock = clock
        self.counts = decode.new_counts()
        self.reassembly_counts = reassembly.new_counts()
        self.dns_errors: Counter[str] = Counter()
        self.record_stats = RecordStats()
        self.captured = 0
        self.sampled_out = 0
        self.other_slot = 0
        self.not_exported = 0
        # The recorder queues into `ops`, handed to the writer once per
        # dispatch (`hand_off`): one lock per batch of packets.
        self.ops = OpBuffer(writer) if writer is not None else None
        self.recorder = (
            ResponseRecorder(self.ops, config, stats=self.record_stats, clock=clock)
            if self.ops is not None
            else None
        )
        self.packer = export.Packer(send, clock, export_stats) if send is not None else None
        self.fragments = reassembly.Fragments(
            self.reassembly_counts,
            timeout=config.fragment_timeout,
            max_bytes=config.fragment_max_bytes,
        )
        self.streams = reassembly.TcpStreams(
            self.reassembly_counts,
            idle=config.tcp_idle,
            max_total_bytes=config.tcp_max_bytes,
            max_streams=config.tcp_max_streams,
        )
        rate = config.sample_rate
        self._keep = 1.0 / rate if rate > 1 else 1.0
        self._random = random.random
        self.log_limit = LogLimit.per_stats_interval(MAX_ERROR_LOGS, config.stats_interval, clock)
        self._parsed: dict[bytes, Parsed] = {}
        self._parsed_old: dict[bytes, Parsed] = {}
        self._parsed_bytes = 0  # the new generation's estimated size
        self.parse_hits = 0
        self._handle: Any = None
        self._callback: decode.Handler | None = None
        self.filter = ""

    # -- one message ---------------------------------------------------------
    def on_message(self, client: bytes, resolver: bytes, message: bytes) -> None:
        if self._keep < 1.0 and self._random() >= self._keep:
            self.sampled_out += 1
            return
        # The parser never reads the ID: the rest of the message decides the parse.
        key = message[2:]
        parsed = self._parsed.get(key)
        if parsed is None and self._parsed_old:
            parsed = self._parsed_old.get(key)
            if parsed is not None:
                self._remember(key, parsed)
        if parsed is not None:
            self.parse_hits += 1
            resp, prepared, body, _cost = parsed
        else:
            try:
                resp = parse_response(message)
            except DnsFormError as exc:
                why = stats.reason(exc)
                self.dns_errors[why] += 1
                if self.log_limit.allow():
                    event(log, "dnswire_bad_message", logging.WARNING, reason=why, error=str(exc))
                return
            prepared = self.recorder.prepare(resp) if self.recorder is not None else None
            body = (
                export.body_of(resp)
                if self.packer is not None and export.exportable(message, resp)
                else None
            )
            if len(message) <= PARSE_CACHE_MAX_MESSAGE:
                self._remember(key, (resp, prepared, body, _entry_cost(key, resp, body)))
        if self.recorder is not None:
            self.recorder.record(client, resp, prepared)
        if self.packer is not None:
            if body is not None:
                self.packer.add_body(client, resolver, body)
            else:
                self.not_exported += 1

    def _remember(self, key: bytes, parsed: Parsed) -> None:
        cost = parsed[3]
        if (
            len(self._parsed) >= PARSE_CACHE_ENTRIES
            or self._parsed_bytes + cost > PARSE_CACHE_BYTES
        ):
            self._parsed_old = self._parsed
            self._parsed = {}
            self._parsed_bytes = 0
        self._parsed[key] = parsed
        self._parsed_bytes += cost

    def _inner_message(self, client: bytes, resolver: bytes, message: bytes) -> None:
        i, n = self.config.slot
        if n > 1 and filters.slot_of(client, n) != i - 1:
            self.other_slot += 1
            return
        self.on_message(client, resolver, message)

    def handler(self, linktype: int) -> decode.Handler:
        cfg = self.config
        decoder = decode.make_handler(
            linktype,
            self.on_message,
            self.counts,
            ports=cfg.port_set,
            fragments=self.fragments,
            streams=self.streams,
            pcap_record_port=cfg.pcap_record_port,
            jmirror_port=cfg.jmirror_port,
            inner_sink=self._inner_message,
        )
        return decoder

    # -- sources -------------------------------------------------------------
    def open_live(self, interface: str) -> None:
        self._prepare(source.open_live(self.config, interface), interface)

    def open_file(self, path: str) -> None:
        self._prepare(source.open_file(path), path)

    def _prepare(self, handle: Any, name: str) -> None:
        cfg = self.config
        linktype = handle.datalink()
        try:
            self._callback = self.handler(linktype)
        except ValueError as exc:
            raise AgentError(f"{name}: {exc}") from exc
        self.filter = cfg.bpf or filters.build_filter(
            linktype=linktype,
            ports=cfg.port_set,
            slot=cfg.slot,
            checksum4=cfg.checksum_slots,
            pcap_record_port=cfg.pcap_record_port,
            jmirror_port=cfg.jmirror_port,
        )
        try:
            handle.setfilter(self.filter)
        except OSError as exc:
            raise AgentError(f"-f {self.filter!r}: {pcap_error_text(exc)}") from exc
        self._handle = handle
        event(
            log, "dnswire_started", source=name, linktype=linktype,
            slot=f"{cfg.slot[0]}/{cfg.slot[1]}", sample_rate=cfg.sample_rate, filter=self.filter,
        )  # fmt: skip

    # -- loops ---------------------------------------------------------------
    def run_live(self, stop: threading.Event) -> None:
        handle = self._handle
        fd = handle.fileno()
        dispatch = handle.dispatch
        callback = self._callback
        ops = self.ops
        now = self.clock()
        next_stats = now + self.config.stats_interval
        next_export_stats = now + self.config.export_stats_interval + random.random()
        next_tick = now + TICK
        while not stop.is_set():
            count = dispatch(DISPATCH_BATCH, callback)
            if ops is not None:
                ops.hand_off()
            if count < 0:  # pypcap returns libpcap's -1 instead of raising
                raise CaptureError(f"capture failed: {handle_error_text(handle)}")
            self.captured += count
            now = self.clock()
            if now >= next_tick:
                next_tick = now + TICK
                if self.packer is not None:
                    self.packer.tick()
                    if now >= next_export_stats:
                        next_export_stats = now + self.config.export_stats_interval
                        self.send_export_stats()
                if self.config.stats_interval > 0 and now >= next_stats:
                    next_stats = now + self.config.stats_interval
                    self.log_stats()
            if count == 0:
                select.select([fd], [], [], min(POLL_MAX, max(0.0, next_tick - now)))
            elif count < DISPATCH_BATCH:
                time.sleep(COALESCE)

    def run_file(self, stop: threading.Event | None = None) -> None:
        """A file can wait for Redis, a live ring cannot: before each batch of
        packets, wait until the writer's queue has room for what it can write
        (`FILE_OPS_PER_RESPONSE` each), so nothing is dropped while Redis is
        merely slower than the reading."""
        handle = self._handle
        callback = self._callback
        writer = self.writer
        room = self.config.max_queue_ops // 2
        batch = max(1, min(DISPATCH_BATCH, room // FILE_OPS_PER_RESPONSE))
        while stop is None or not stop.is_set():
            if writer is not None:
                writer.wait_for_room(room, WRITER_PATIENCE)
            count = handle.dispatch(batch, callback)
            if self.ops is not None:
                self.ops.hand_off()
            if count < 0:
                raise CaptureError(f"reading failed: {handle_error_text(handle)}")
            if count == 0:
                break
            self.captured += count

    def finish(self) -> None:
        """Hand what is gathered to the writer (flushed by its owner) and send
        the part-filled export packet."""
        if self.ops is not None:
            self.ops.hand_off()
        if self.packer is not None:
            self.packer.flush()

    # -- stats ---------------------------------------------------------------
    def kernel_stats(self) -> tuple[int, int, int]:
        """(received, dropped, ifdropped) from libpcap; zeros for a file."""
        if self.config.read is not None or self._handle is None:
            return 0, 0, 0
        try:
            received, dropped, ifdropped = self._handle.stats()
        except (OSError, AttributeError):
            return 0, 0, 0
        return int(received), int(dropped), int(ifdropped)

    def send_export_stats(self) -> None:
        assert self.packer is not None
        received, dropped, ifdropped = self.kernel_stats()
        rate = self.config.sample_rate
        self.packer.send_stats(self.captured, received, dropped, ifdropped, rate if rate > 1 else 0)

    def snapshot(self) -> dict[str, Any]:
        return stats.snapshot(self)

    def input_check(self) -> Check:
        if self._handle is None:
            return Check("input", False, "no capture open")
        return Check("input", True, f"capturing, {self.captured} packets read")

    def log_stats(self, name: str = "dnswire_stats") -> None:
        event(log, name, **self.snapshot())
