"""`pcapd agent dnsflow-ingest`: DNSFlow v4 packets from existing sensors
(dnsflow.c or `dnsflow`) into the same Redis keys, so a site can move its
collectors first and its sensors later.

Each data set becomes one response for the dnstap agent's `ResponseRecorder`:
names[0] is the question, names[1..] the CNAME chain, the addresses are
owned by the last name; the question type is not in the format, so it is
taken as A when the set holds IPv4 addresses, else AAAA. Stats packets keep
each sensor's `sample_rate` (DNSFlow's own reader drops it) and counters;
sequence numbers are followed per sensor (address and port: each dnsflow
process numbers its own packets) by `agents.dnswire.sequence`.

A packet with a bad set is dropped whole, as DNSFlow's own reader drops it.
A set's address counts are checked only by where the next set starts, and
what lies there may be a DNS answer's bytes (chosen by whoever answered), so
the set read from the wrong place can look sound and the one that lied can
be any set before the bad one: no set of such a packet is certainly what the
sensor sent.

Memory: one datagram at a time, plus one small entry per sensor (at most
`MAX_SENSORS`, each with REORDER_WINDOW bits; past that the table is
cleared and counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import operator
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agents.dnstap.errors import DnsFormError
from agents.dnstap.response import TYPE_A, TYPE_AAAA, Response, address_text, read_name
from agents.dnswire import export
from agents.dnswire.config import DnswireConfig, parse_dnswire_config
from agents.dnswire.sequence import Sequence
from agents.log_limit import LogLimit
from agents.redis_writer import RedisWriter, make_writer
from agents.response_recorder import RecordStats, ResponseRecorder
from pcapd.core.config import ConfigError, RedisConfig, load_config
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE, StopSignals
from pcapd.core.logs import event, setup_agent_logging

log = logging.getLogger("pcapd.agents.dnswire.ingest")

MAX_SENSORS = 4_096
# Bad packet and bad set lines per stats interval (`LogLimit.per_stats_interval`);
# the rest are counted in `bad_logs_suppressed`.
MAX_ERROR_LOGS = 100
RECV_BUFFER = 4 * 1024 * 1024  # kernel socket buffer: bursts of a busy sensor
POLL = 0.2  # s: longest wait in recv, so a stop request is seen quickly
FLUSH_TIMEOUT = 10.0
# Sequence's counters, per sensor and (same names) totalled in IngestStats.
SEQUENCE_COUNTS = ("lost", "reordered", "duplicates", "restarts", "strays")
_SEQUENCE_COUNTS = operator.attrgetter(*SEQUENCE_COUNTS)
_NUL12 = bytes(12)  # an IPv4 address's 16-byte field after the address
_NULS = (b"", b"\0", b"\0\0", b"\0\0\0")  # names padding, by its length


class BadPacket(Exception):
    """A datagram that is not a DNSFlow v4 packet, or one with a set unlike
    what dnsflow.c sends; `reason` is the counter it goes to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class Sensor:
    sequence: Sequence = field(default_factory=Sequence)
    sample_rate: int = 0
    captured: int = 0
    received: int = 0
    dropped: int = 0
    ifdropped: int = 0
    packets: int = 0


@dataclass(slots=True)
class IngestStats:
    # datagrams = data_packets + stats_packets + bad (less short_stats: a
    # stats packet that is short is counted in both).
    datagrams: int = 0
    sets: int = 0
    data_packets: int = 0
    stats_packets: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    lost: int = 0  # numbers skipped, less those that came late (agents.dnswire.sequence)
    reordered: int = 0  # came late, after a higher number
    duplicates: int = 0  # a number that had come already
    restarts: int = 0  # a far number the next one followed: the sensor restarted its count
    strays: int = 0  # a far number the next one did not follow
    sensors_cleared: int = 0


# (client, names: the question then each CNAME target, addresses of 4 or 16
# bytes): a plain tuple, as a packet holds up to 255 of them.
DataSet = tuple[bytes, list[str], list[bytes]]
# export.SET_HEADER with the 2 pad bytes and each address's last 12 bytes
# apart: dnsflow.c zeroes the header, so an IPv4 set's are NUL.
_SET_HEADER = struct.Struct(">BBBBHH4s12s4s12s")
assert _SET_HEADER.size == export.SET_HEADER.size


def read_header(packet: bytes) -> tuple[int, int, int]:
    """(flags, sequence, sets_count); raises BadPacket if the datagram is not
    DNSFlow v4."""
    if len(packet) < export.HEADER.size:
        raise BadPacket("short", f"{len(packet)} bytes, shorter than the 8-byte header")
    version, count, flags, sequence = export.HEADER.unpack_from(packet, 0)
    if version != export.VERSION:
        raise BadPacket("version", f"version {version}, expected {export.VERSION}")
    return flags, sequence, count


def read_sets(packet: bytes, count: int) -> list[DataSet]:
    """The `count` sets of a data packet, all of them or none: raises
    BadPacket for the first that breaks what dnsflow.c always sends, or if
    they do not end where the datagram does."""
    sets: list[DataSet] = []
    pos = export.HEADER.size
    for index in range(count):
        one, pos = _read_set(packet, pos, index)
        sets.append(one)
    if pos != len(packet):
        raise BadPacket("trailing", f"{len(packet) - pos} bytes after the last of {count} sets")
    return sets


def _read_set(packet: bytes, pos: int, index: int) -> tuple[DataSet, int]:
    """The set at `pos` and where the next one starts."""
    if pos + export.SET_HEADER.size > len(packet):
        raise BadPacket("truncated", f"set {index} header runs past the end")
    vers, names_count, ips, ip6s, names_len, pad, client, client_rest, _, resolver_rest = (
        _SET_HEADER.unpack_from(packet, pos)
    )
    if vers == 6:
        client += client_rest
    elif vers != 4:
        raise BadPacket("ip_vers", f"set {index}: ip_vers {vers}, expected 4 or 6")
    elif client_rest != _NUL12 or resolver_rest != _NUL12:
        raise BadPacket("padding", f"set {index}: IPv4 addresses with bytes after the 4th")
    if pad:
        raise BadPacket("padding", f"set {index}: header pad bytes are not NUL")
    pos += export.SET_HEADER.size
    names_end = pos + names_len
    addr_end = names_end + 4 * ips + 16 * ip6s
    if names_len % 4 or addr_end > len(packet):
        raise BadPacket("counts", f"set {index}: names_len {names_len} and counts run past the end")
    if not names_count:
        raise BadPacket("names", f"set {index}: no names")
    names = []
    at = pos
    try:
        for _ in range(names_count):
            # Each name read from its own start: sets carry no compression,
            # and a pointer cannot point before offset 0.
            name, length = read_name(packet[at:names_end], 0)
            names.append(name)
            at += length
    except DnsFormError as exc:
        raise BadPacket("names", f"set {index}: name {len(names)}: {exc}") from None
    if names_end - at > 3:
        raise BadPacket("names", f"set {index}: names end {names_end - at} bytes before names_len")
    if packet[at:names_end] != _NULS[names_end - at]:
        raise BadPacket("padding", f"set {index}: names padding is not NUL")
    addresses = [packet[i : i + 4] for i in range(names_end, names_end + 4 * ips, 4)]
    base = names_end + 4 * ips
    addresses += [packet[i : i + 16] for i in range(base, addr_end, 16)]
    return (client, names, addresses), addr_end


class Ingest:
    """Datagrams -> ResponseRecorder. Not thread-safe."""

    def __init__(
        self,
        config: DnswireConfig,
        writer: RedisWriter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.writer = writer
        self.stats = IngestStats()
        self.record_stats = RecordStats()
        self.sensors: dict[tuple[str, int], Sensor] = {}
        self.recorder = ResponseRecorder(writer, config, stats=self.record_stats)
        self._log_limit = LogLimit.per_stats_interval(MAX_ERROR_LOGS, config.stats_interval, clock)

    def handle(self, packet: bytes, peer: tuple[str, int]) -> None:
        stats = self.stats
        stats.datagrams += 1
        try:
            flags, sequence, count = read_header(packet)
        except BadPacket as exc:
            self._bad(exc, peer)
            return
        sensor = self.sensors.get(peer)
        if sensor is None:
            if len(self.sensors) >= MAX_SENSORS:
                self.sensors.clear()
                stats.sensors_cleared += 1
            sensor = self.sensors[peer] = Sensor()
        # A packet refused for its sets still arrived: its number is followed.
        self._sequence(sensor, sequence)
        sensor.packets += 1
        if flags & export.FLAG_STATS:
            stats.stats_packets += 1
            if len(packet) >= export.HEADER.size + export.STATS.size:
                counters = export.STATS.unpack_from(packet, export.HEADER.size)
                (sensor.captured, sensor.received, sensor.dropped, sensor.ifdropped,
                 sensor.sample_rate) = counters  # fmt: skip
            else:  # DNSFlow before sample_rate sent four counters
                stats.bad["short_stats"] += 1
            return
        try:
            sets = read_sets(packet, count)
        except BadPacket as exc:
            self._bad(exc, peer, sequence=sequence)
            return
        stats.data_packets += 1
        stats.sets += len(sets)
        for client, names, addresses in sets:
            typed = tuple(
                (TYPE_A if len(a) == 4 else TYPE_AAAA, address_text(a)) for a in addresses
            )
            qtype = TYPE_A if any(len(a) == 4 for a in addresses) or not addresses else TYPE_AAAA
            self.recorder.record(client, Response(names[0], qtype, 0, tuple(names), typed))

    def _bad(self, exc: BadPacket, peer: tuple[str, int], **fields: Any) -> None:
        self.stats.bad[exc.reason] += 1
        if self._log_limit.allow():
            event(log, "dnsflow_bad_packet", logging.WARNING, peer=f"{peer[0]}:{peer[1]}",
                  **fields, reason=exc.reason, error=str(exc))  # fmt: skip

    def _sequence(self, sensor: Sensor, number: int) -> None:
        """Follow `number` in the sensor's sequence, and its counts in the totals."""
        sequence, stats = sensor.sequence, self.stats
        before = _SEQUENCE_COUNTS(sequence)
        sequence.see(number)
        for name, old, new in zip(SEQUENCE_COUNTS, before, _SEQUENCE_COUNTS(sequence), strict=True):
            if new != old:
                setattr(stats, name, getattr(stats, name) + new - old)

    def snapshot(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self.stats)
        data["bad"] = dict(self.stats.bad)
        data["bad_logs_suppressed"] = self._log_limit.suppressed  # over MAX_ERROR_LOGS a window
        data.update(dataclasses.asdict(self.record_stats))
        data.update(self.writer.stats_fields())
        return data

    def log_stats(self, name: str = "dnsflow_ingest_stats") -> None:
        event(log, name, **self.snapshot())
        for (host, port), s in self.sensors.items():
            counts = zip(SEQUENCE_COUNTS, _SEQUENCE_COUNTS(s.sequence), strict=True)
            event(
                log, "dnsflow_sensor", sensor=f"{host}:{port}", packets=s.packets, **dict(counts),
                sample_rate=s.sample_rate, captured=s.captured, received=s.received,
                dropped=s.dropped, ifdropped=s.ifdropped,
            )  # fmt: skip


def serve(ingest: Ingest, sock: socket.socket, should_stop: Callable[[], bool]) -> None:
    interval = ingest.config.stats_interval
    next_stats = time.monotonic() + interval
    sock.settimeout(POLL)
    while not should_stop():
        try:
            packet, peer = sock.recvfrom(65_535)
        except TimeoutError:
            pass
        else:
            ingest.handle(packet, peer[:2])
        if interval > 0 and time.monotonic() >= next_stats:
            next_stats = time.monotonic() + interval
            ingest.log_stats()


def bind(config: DnswireConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
    sock.bind((config.listen.host, config.listen.port))
    return sock


DESCRIPTION = (
    "Receive DNSFlow v4 UDP packets (from dnsflow.c or `dnsflow -u`) and record them in "
    "Redis with the dnstap agent's keys. Options override [agents.dnswire] in the config file."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", metavar="FILE", help="TOML with [redis], [agents.dnswire]")
    p.add_argument("--listen", metavar="ADDR:PORT", help=f"UDP to listen on ({export.PORT})")
    p.add_argument("--redis-url", help="redis://, rediss:// or unix:// (overrides [redis])")
    p.add_argument("--stats-interval", type=float, help="seconds between stats lines (60)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def main(args: argparse.Namespace) -> int:
    """`pcapd agent dnsflow-ingest`, its arguments parsed by pcapd/cli/agent_dnsflow_ingest.py."""
    from pcapd.core.redis_conn import connect

    try:
        config = load_config(args.config) if args.config else None
        setup_agent_logging(config, args.log_level)
        base_redis, raw = RedisConfig(), {}
        if config is not None:
            base_redis, raw = config.redis, dict(config.agents.get("dnswire", {}))
        for key in ("listen", "redis_url", "stats_interval"):
            if getattr(args, key) is not None:
                raw[key] = getattr(args, key)
        cfg = parse_dnswire_config(raw)
    except ConfigError as exc:
        for line in exc.lines():
            print(f"pcapd agent dnsflow-ingest: {line}", file=sys.stderr)
        return EXIT_CONFIG
    redis_cfg = base_redis if cfg.redis_url is None else dataclasses.replace(
        base_redis, url=cfg.redis_url
    )  # fmt: skip
    try:
        sock = bind(cfg)
    except OSError as exc:
        print(f"pcapd agent dnsflow-ingest: error: cannot listen on {cfg.listen}: {exc}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILURE
    writer = make_writer(cfg, lambda: connect(redis_cfg))
    ingest = Ingest(cfg, writer)
    signals = StopSignals("dnsflow-ingest")
    signals.install()
    writer.start()
    event(log, "dnsflow_ingest_started", listen=cfg.listen, redis=redis_cfg.describe())
    try:
        serve(ingest, sock, signals.stop.is_set)
    finally:
        sock.close()
        writer.stop(FLUSH_TIMEOUT)
        ingest.log_stats("dnsflow_ingest_done")
    return 0
