"""`[agents.dnswire]`: every option, its default constant and its checks.

Read with the one reader (`pcapd.core.configread.Table`), so the rules and the
messages (`agents.dnswire.sample_rate: must be at least 0 and at most 65535,
got 70000`) are those of every other section; unknown keys are warnings. The
options that decide what a response records (`record_types`, `ignore`,
`dedup_*`, `ttl_grace`) mean what they mean for the dnstap agent.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from agents.dnstap.config import (
    DEDUP_CLIENT,
    DEFAULT_DEDUP_MAX_ENTRIES,
    DEFAULT_DEDUP_WINDOW,
    DEFAULT_RECORD_TYPES,
    RECORD_TYPES,
    HostPort,
    _redis_url,
    record_options,
)
from agents.dnswire import export, reassembly
from agents.writer_settings import (
    DEFAULT_BATCH_OPS,
    DEFAULT_FLUSH_INTERVAL,
    DEFAULT_MAX_QUEUE_OPS,
    DEFAULT_PING_INTERVAL,
    DEFAULT_TTL_GRACE,
    DEFAULT_WRITE_COMBINING,
    MAX_TTL_GRACE,
)
from pcapd.core.configread import MAX_PORT, ConfigError, Table
from pcapd.core.fields import whole_number
from pcapd.core.secret import Secret

PREFIX = "agents.dnswire"
DNS_PORT = 53
MDNS_PORT = 5353
MAX_PROCESSES = 64  # dnsflow.c's MAX_MPROC_CHILDREN
# -m I/N forks nothing, only splits the filter, so dnsflow.c bounds it by
# nothing but its unsigned 32 bits (BPF's arithmetic is 32-bit too): a site
# that splits one SPAN over many sensors may take slot 70 of 128.
MAX_SLOTS = 2**32 - 1
MAX_SAMPLE_RATE = 65_535  # dnsflow.c keeps it in 16 bits
DEFAULT_SNAPLEN = 65_535  # whole answers: the DNS message is the point
# dnsflow.c asks for 125 MB ("1 s of GigE"); 64 MiB absorbs the bursts seen
# in bench/ at a fraction of the memory. Raise it on busy links.
DEFAULT_BUFFER_SIZE = 64 * 1024 * 1024
MIN_BUFFER_SIZE = 64 * 1024
MAX_BUFFER_SIZE = 2**31 - 1
DEFAULT_STATS_INTERVAL = 60.0  # 0: only at exit
MAX_STATS_INTERVAL = 86_400.0
MIN_EXPORT_STATS_INTERVAL = 0.1
MIN_SNAPLEN = 128
MAX_SNAPLEN = 262_144
MIN_FRAGMENT_BYTES = 65_536
MAX_FRAGMENT_BYTES = 2**31 - 1
MIN_TCP_BYTES = 262_144
MAX_TCP_BYTES = 2**31 - 1
MAX_TCP_STREAMS = 10_000_000
MIN_TIMEOUT = 0.1  # fragment_timeout and tcp_idle, seconds
MAX_TIMEOUT = 3600.0


DEFAULT_LISTEN = HostPort("0.0.0.0", export.PORT)


@dataclass(frozen=True, slots=True)
class DnswireConfig:
    """Worst-case memory: the kernel ring (`buffer_size`), the fragment and
    TCP bounds (`fragment_max_bytes` + `tcp_max_bytes`, see reassembly), the
    Redis queue (`max_queue_ops` x (key + member + ~350 bytes), see
    agents.redis_writer) and the deduper
    (`dedup_max_entries` x ~275 bytes); per process with `processes`."""

    interface: str | None = None
    read: str | None = None
    bpf: str | None = None
    slot: tuple[int, int] = (1, 1)
    processes: int | None = None  # None: one process; 0: half the CPUs
    promisc: bool = True
    pidfile: tuple[str, ...] = ()  # each locked (dnsflow.c takes -P more than once)
    sample_rate: int = 0
    udp_dst: tuple[HostPort, ...] = ()
    write: str | None = None
    pcap_record_port: int | None = None
    jmirror_port: int | None = None
    mdns: bool = False
    ports: tuple[int, ...] = ()
    checksum_slots: bool = False
    record: bool = True  # into Redis
    redis_url: Secret | None = None
    ttl_grace: int = DEFAULT_TTL_GRACE
    record_types: tuple[str, ...] = DEFAULT_RECORD_TYPES
    ignore: tuple[str, ...] = ()
    dedup_window: float = DEFAULT_DEDUP_WINDOW
    dedup_scope: str = DEDUP_CLIENT
    dedup_max_entries: int = DEFAULT_DEDUP_MAX_ENTRIES
    max_queue_ops: int = DEFAULT_MAX_QUEUE_OPS
    batch_ops: int = DEFAULT_BATCH_OPS
    flush_interval: float = DEFAULT_FLUSH_INTERVAL
    write_combining: bool = DEFAULT_WRITE_COMBINING
    ping_interval: float = DEFAULT_PING_INTERVAL
    client_index: bool = False  # keep <client>;index for the correlator (agents/store.py)
    stats_interval: float = DEFAULT_STATS_INTERVAL
    export_stats_interval: float = export.STATS_INTERVAL
    snaplen: int = DEFAULT_SNAPLEN
    buffer_size: int = DEFAULT_BUFFER_SIZE
    fragment_timeout: float = reassembly.DEFAULT_FRAGMENT_TIMEOUT
    fragment_max_bytes: int = reassembly.DEFAULT_FRAGMENT_BYTES
    tcp_idle: float = reassembly.DEFAULT_TCP_IDLE
    tcp_max_bytes: int = reassembly.DEFAULT_TCP_TOTAL_BYTES
    tcp_max_streams: int = reassembly.DEFAULT_TCP_STREAMS
    listen: HostPort = DEFAULT_LISTEN  # dnsflow-ingest
    # /metrics, /healthz, /readyz; with N processes, process i serves port + i - 1.
    metrics_listen: HostPort | None = None
    warnings: tuple[str, ...] = ()

    @property
    def record_type_numbers(self) -> frozenset[int]:
        return frozenset(RECORD_TYPES[name] for name in self.record_types)

    @property
    def port_set(self) -> frozenset[int]:
        ports = {DNS_PORT, *self.ports}
        if self.mdns:
            ports.add(MDNS_PORT)
        return frozenset(ports)

    @property
    def process_count(self) -> int:
        """-M: 0 means half the CPUs (at least one), as in dnsflow.c."""
        if self.processes is None:
            return 1
        if self.processes == 0:
            return max(1, min(MAX_PROCESSES, (os.cpu_count() or 1) // 2))
        return self.processes


def _ports(t: Table) -> tuple[int, ...]:
    value = t.get("ports")
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_PORT for v in value
    ):
        t.bad("ports", value, f"expected a list of ports within 1..{MAX_PORT}")
        return ()
    return tuple(dict.fromkeys(value))


def _slot(t: Table) -> tuple[int, int]:
    value = t.get("slot")
    if value is None:
        return (1, 1)
    text = str(value)
    i, _, n = text.partition("/")
    slot, count = whole_number(i, 1, MAX_SLOTS), whole_number(n, 1, MAX_SLOTS)
    if slot is None or count is None or slot > count:
        t.error("slot", f"{text[:40]!r} is not I/N with 1 <= I <= N <= {MAX_SLOTS}")
        return (1, 1)
    return slot, count


def _pidfiles(t: Table) -> tuple[str, ...]:
    """A path or a list of paths ("" is none, as TOML has no null)."""
    paths = t.str_list("pidfile", what="a path or a list of paths")
    return tuple(dict.fromkeys(path for path in paths if path))


def _destinations(t: Table) -> tuple[HostPort, ...]:
    value = t.str_list("udp_dst", what="a list of IPv4 ADDRESS[:PORT]")
    if len(value) > export.MAX_DESTINATIONS:
        t.error("udp_dst", f"{len(value)} destinations, at most {export.MAX_DESTINATIONS}")
        return ()
    out = []
    for text in value:
        host, sep, port = text.partition(":")
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            t.error("udp_dst", f"{text[:80]!r} is not an IPv4 ADDRESS[:PORT]")
            continue
        number = whole_number(port, 1, MAX_PORT) if sep else export.PORT
        if number is None:
            t.error("udp_dst", f"{text[:80]!r}: port {port[:20]!r} is not a port in 1..{MAX_PORT}")
            continue
        out.append(HostPort(host, number))
    return tuple(out)


def parse_dnswire_config(raw: Mapping[str, Any]) -> DnswireConfig:
    t = Table(raw, PREFIX)
    processes = None
    if t.get("processes") is not None:
        processes = t.get_int("processes", 1, minimum=0, maximum=MAX_PROCESSES)
    cfg = DnswireConfig(
        interface=t.interface("interface"),
        read=t.optional_str("read"),
        bpf=t.optional_str("bpf"),
        slot=_slot(t),
        processes=processes,
        promisc=t.get_bool("promisc", True),
        pidfile=_pidfiles(t),
        sample_rate=t.get_int("sample_rate", 0, minimum=0, maximum=MAX_SAMPLE_RATE),
        udp_dst=_destinations(t),
        write=t.optional_str("write"),
        pcap_record_port=t.optional_int("pcap_record_port", maximum=MAX_PORT),
        jmirror_port=t.optional_int("jmirror_port", maximum=MAX_PORT),
        mdns=t.get_bool("mdns", False),
        ports=_ports(t),
        checksum_slots=t.get_bool("checksum_slots", False),
        record=t.get_bool("record", True),
        redis_url=_redis_url(t),
        ttl_grace=t.get_int("ttl_grace", DEFAULT_TTL_GRACE, maximum=MAX_TTL_GRACE),
        **record_options(t),
        stats_interval=t.get_float(
            "stats_interval", DEFAULT_STATS_INTERVAL, minimum=0.0, maximum=MAX_STATS_INTERVAL
        ),
        export_stats_interval=t.get_float(
            "export_stats_interval",
            export.STATS_INTERVAL,
            minimum=MIN_EXPORT_STATS_INTERVAL,
            maximum=MAX_STATS_INTERVAL,
        ),
        snaplen=t.get_int("snaplen", DEFAULT_SNAPLEN, minimum=MIN_SNAPLEN, maximum=MAX_SNAPLEN),
        buffer_size=t.get_int(
            "buffer_size", DEFAULT_BUFFER_SIZE, minimum=MIN_BUFFER_SIZE, maximum=MAX_BUFFER_SIZE
        ),
        fragment_timeout=t.get_float(
            "fragment_timeout",
            reassembly.DEFAULT_FRAGMENT_TIMEOUT,
            minimum=MIN_TIMEOUT,
            maximum=MAX_TIMEOUT,
        ),
        fragment_max_bytes=t.get_int(
            "fragment_max_bytes",
            reassembly.DEFAULT_FRAGMENT_BYTES,
            minimum=MIN_FRAGMENT_BYTES,
            maximum=MAX_FRAGMENT_BYTES,
        ),
        tcp_idle=t.get_float(
            "tcp_idle", reassembly.DEFAULT_TCP_IDLE, minimum=MIN_TIMEOUT, maximum=MAX_TIMEOUT
        ),
        tcp_max_bytes=t.get_int(
            "tcp_max_bytes",
            reassembly.DEFAULT_TCP_TOTAL_BYTES,
            minimum=MIN_TCP_BYTES,
            maximum=MAX_TCP_BYTES,
        ),
        tcp_max_streams=t.get_int(
            "tcp_max_streams", reassembly.DEFAULT_TCP_STREAMS, maximum=MAX_TCP_STREAMS
        ),
        listen=t.host_port("listen") or DEFAULT_LISTEN,
        metrics_listen=t.listen("metrics_listen"),
    )
    if cfg.interface is not None and cfg.read is not None:
        t.error("read", "interface and read exclude each other: capture live or read a file")
    if cfg.write is not None and cfg.process_count > 1:
        t.error("write", "cannot write one file from several processes (processes/-M)")
    if cfg.read == "-" and cfg.process_count > 1:
        t.error("read", "'-' (standard input) cannot be read by several processes (processes/-M)")
    if cfg.processes is not None and cfg.slot != (1, 1):
        t.error("slot", "slot (-m) and processes (-M) exclude each other")
    metrics = cfg.metrics_listen
    if metrics is not None and metrics.port + cfg.process_count - 1 > MAX_PORT:
        t.error(
            "metrics_listen",
            f"{metrics}: with processes={cfg.process_count}, process i listens on port + i - 1, "
            f"past {MAX_PORT}",
        )
    if cfg.batch_ops > cfg.max_queue_ops:
        t.exceeds("batch_ops", cfg.batch_ops, "max_queue_ops", cfg.max_queue_ops)
    cpus = os.cpu_count() or 1
    if cfg.process_count > cpus:
        t.error(
            "processes",
            f"{cfg.process_count} processes on {cpus} CPUs: more than the CPUs only slows "
            "every process (dnsflow.c refuses it too)",
        )
    t.finish()
    if t.errors:
        raise ConfigError(t.errors, warnings=t.warnings)
    return replace(cfg, warnings=tuple(t.warnings))
