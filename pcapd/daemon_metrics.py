"""`pcapd serve`'s metrics and readiness (docs/operations.md has the table).

Two kinds, so nothing is counted twice:
- `CaptureMetrics`: what nobody counted before, observed as it happens
  (captures by stop reason, packets, bytes, kernel drops, durations,
  trigger-to-active latency, uploads by sink and outcome);
- `DaemonCollector`: read at scrape time from the state the components keep
  (the controller's request counts, admission's reservations, the spool, the
  result publisher's queue and drops, the sources' reconnects, the spare
  handles).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import redis
from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pcapd.core.logs import event
from pcapd.core.metrics import (
    DURATION_BUCKETS,
    LATENCY_BUCKETS,
    UPLOAD_BUCKETS,
    Check,
    counter,
    gauge,
)
from pcapd.core.redis_conn import Client

log = logging.getLogger("pcapd.daemon_metrics")

if TYPE_CHECKING:
    from pcapd.controller import Controller
    from pcapd.engine import CaptureOutcome, HandlePool
    from pcapd.ring import Ring
    from triggers.base import TriggerSource


class CaptureMetrics:
    """Observed by the workers and the deliverer; each process has its own
    (registry=None: the daemon registers them on its registry, if metrics are on)."""

    def __init__(self) -> None:
        self.captures = Counter(
            "pcapd_captures", "Captures ended, by stop reason", ["stop"], registry=None
        )
        self.packets = Counter("pcapd_packets_captured", "Packets captured", registry=None)
        self.bytes = Counter(
            "pcapd_captured_bytes", "Bytes of capture files written (headers included)",
            registry=None,
        )  # fmt: skip
        # Engine captures' drops; the collector adds the rings' own (see above).
        self._lock = threading.Lock()
        self.engine_dropped = 0
        self.duration = Histogram(
            "pcapd_capture_duration_seconds", "Capture length, first to last poll",
            buckets=DURATION_BUCKETS, registry=None,
        )  # fmt: skip
        self.trigger_latency = Histogram(
            "pcapd_trigger_latency_seconds",
            "From a request leaving its source to its capture being active",
            buckets=LATENCY_BUCKETS, registry=None,
        )  # fmt: skip
        self.uploads = Counter(
            "pcapd_uploads", "Uploads to a sink (retries inside one), by outcome",
            ["sink", "outcome"], registry=None,
        )  # fmt: skip
        self.upload_seconds = Histogram(
            "pcapd_upload_duration_seconds", "One upload to a sink, retries included",
            ["sink"], buckets=UPLOAD_BUCKETS, registry=None,
        )  # fmt: skip

    def collectors(self) -> list[Collector]:
        return [
            self.captures, self.packets, self.bytes, self.duration,
            self.trigger_latency, self.uploads, self.upload_seconds,
        ]  # fmt: skip

    def captured(self, outcome: CaptureOutcome) -> None:
        self.captures.labels(outcome.stop).inc()
        self.packets.inc(outcome.packets)
        self.bytes.inc(len(outcome.data) if outcome.packets else 0)
        if not outcome.ring:
            with self._lock:
                self.engine_dropped += outcome.kernel_dropped
        self.duration.observe(max(0.0, outcome.ended - outcome.started))

    def active(self, seconds: float) -> None:
        self.trigger_latency.observe(seconds)

    def uploaded(self, sink: str, outcome: str, seconds: float) -> None:
        self.uploads.labels(sink, outcome).inc()
        self.upload_seconds.labels(sink).observe(seconds)


class DaemonCollector(Collector):
    """Gauges and counters read from the daemon's parts at each scrape."""

    def __init__(
        self,
        controller: Controller,
        sources: Sequence[TriggerSource],
        pool: HandlePool,
    ) -> None:
        self.controller = controller
        self.sources = tuple(sources)
        self.pool = pool
        # Highest drop count seen per ring: a failed handle answers no stats,
        # and a counter must not go back.
        self._ring_drops: dict[str, int] = {}
        self._unreadable: str | None = None  # the last reason logged

    def collect(self) -> Iterator[Metric]:
        ctl = self.controller
        yield counter(
            "requests", "Requests taken from a source, by what became of them",
            ctl.request_counts(), ("source", "status"),
        )  # fmt: skip
        adm = ctl.admission
        yield gauge("captures_running", "Captures running now", adm.active)
        yield gauge("captures_limit", "Captures allowed at once (max_concurrent)",
                    adm.max_concurrent)  # fmt: skip
        yield gauge("memory_reserved_bytes",
                    "Bytes of max_memory held by captures running or awaiting upload",
                    adm.reserved)  # fmt: skip
        yield gauge("memory_limit_bytes", "max_memory", adm.max_memory)
        publisher = ctl.publisher
        yield gauge("results_queue_depth", "Result events waiting to be sent to Redis",
                    publisher.queue_depth)  # fmt: skip
        yield counter("results_dropped", "Result events lost: queue full or Redis away at exit",
                      publisher.dropped)  # fmt: skip
        yield counter(
            "source_reconnects", "Times a source lost its connection and tried again",
            {(s.name,): s.reconnects for s in self.sources}, ("source",),
        )  # fmt: skip
        yield gauge(
            "source_connected", "1 while a source is subscribed or polling",
            {(s.name,): int(s.connected) for s in self.sources}, ("source",),
        )  # fmt: skip
        yield gauge(
            "spare_handles", "Capture handles opened ahead, by interface",
            {(name,): int(ready) for name, ready in self.pool.spares().items()}, ("interface",),
        )  # fmt: skip
        yield from self._rings(ctl.rings, adm.rings, ctl.metrics.engine_dropped)
        spool = ctl.deliverer.spool
        if spool is not None:
            yield gauge("spool_bytes", "Bytes on disk in the spool", spool.used_bytes())
            yield gauge("spool_limit_bytes", "spool_max_bytes", spool.max_bytes)
            try:
                entries, oldest = spool.depth()
            except OSError as exc:
                self._cannot_read("spool", exc)
                return
            yield gauge("spool_entries", "Captures in the spool waiting for a sink", entries)
            yield gauge(
                "spool_oldest_age_seconds", "Age of the oldest spooled capture (0: empty)",
                max(0.0, time.time() - oldest) if oldest is not None else 0.0,
            )  # fmt: skip
        self._unreadable = None

    def _rings(
        self, rings: Mapping[str, Ring], reserved: int, engine_dropped: int
    ) -> Iterator[Metric]:
        """Each ring's state from `Ring.stats()`, and the kernel drops counted once."""
        yield gauge("lookback_reserved_bytes",
                    "Bytes of max_memory the lookback rings hold for good", reserved)  # fmt: skip
        stats = {name: ring.stats() for name, ring in rings.items()}
        for name, st in stats.items():
            self._ring_drops[name] = max(self._ring_drops.get(name, 0), st.kernel_dropped)
        yield counter(
            "kernel_dropped", "Packets the kernel dropped: during engine captures, and on "
            "each lookback ring's handle (counted once, however many captures it serves)",
            engine_dropped + sum(self._ring_drops.values()),
        )  # fmt: skip
        yield gauge(
            "ring_up", "1 while a lookback ring reads its interface, 0 once it failed",
            {(n,): int(r.error is None) for n, r in rings.items()}, ("interface",),
        )  # fmt: skip
        yield gauge("ring_packets", "Packets a lookback ring holds now",
                    {(n,): st.packets for n, st in stats.items()}, ("interface",))  # fmt: skip
        yield gauge("ring_bytes", "Bytes of packets a lookback ring holds now (record heads too)",
                    {(n,): st.bytes for n, st in stats.items()}, ("interface",))  # fmt: skip
        now = time.time()
        yield gauge(
            "ring_oldest_age_seconds", "Age of the oldest packet a lookback ring holds (0: empty)",
            {(n,): 0.0 if st.oldest is None else max(0.0, now - st.oldest)
             for n, st in stats.items()}, ("interface",),
        )  # fmt: skip
        yield counter(
            "ring_evicted", "Packets a lookback ring dropped, by cause: overflow (lookback_bytes "
            "full) or age (older than lookback)",
            {key: value for n, st in stats.items() for key, value in
             (((n, "overflow"), st.evicted_overflow), ((n, "age"), st.evicted_age))},
            ("interface", "cause"),
        )  # fmt: skip
        yield counter(
            "ring_kernel_dropped", "Packets the kernel dropped on a lookback ring's handle",
            {(n,): self._ring_drops[n] for n in stats}, ("interface",),
        )  # fmt: skip

    def _cannot_read(self, part: str, exc: OSError) -> None:
        reason = f"{part}: {exc}"
        if reason != self._unreadable:
            event(log, "metrics_partial", logging.WARNING, part=part, error=str(exc))
            self._unreadable = reason


def _writable(directory: str) -> str | None:
    """None when a file can be made in `directory` (or in the nearest parent
    that exists, as the sinks make it), else why not."""
    path = os.path.abspath(directory)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def daemon_checks(
    controller: Controller, sources: Sequence[TriggerSource], ping: Client
) -> Iterator[Check]:
    """Every source connected, Redis answering, every lookback ring reading
    (a failed one refuses every capture on its interface), every directory
    captures are written to writable. `ping` is a client with short timeouts and no retries."""
    for source in sources:
        yield Check(
            f"source:{source.name}", source.connected,
            "subscribed or polling" if source.connected
            else f"not connected ({source.reconnects} reconnects so far)",
        )  # fmt: skip
    try:
        ping.ping()
        yield Check("redis", True, "reachable")
    except (redis.RedisError, OSError) as exc:
        yield Check("redis", False, f"unreachable: {exc}")
    for name, ring in controller.rings.items():
        yield Check(f"ring:{name}", ring.error is None, ring.error or "reading its interface")
    for label, directory in controller.deliverer.disk_targets():
        why = _writable(directory)
        yield Check(f"disk:{label}", why is None, why or f"{directory} writable")
