"""Prometheus metrics and health checks on one listener per process.

Every process (`pcapd serve`, each agent) builds its own `CollectorRegistry`
(never prometheus_client's global one: tests run several in one process)
and serves it with `MetricsServer` at `/metrics`, beside `/healthz` (the
process answers: 200) and `/readyz` (200 when every `Check` passes, else
503), both JSON naming each check and what is wrong.

Counters the components keep already (agents' `snapshot()`, the writer's
`WriterStats`, the admission's reservations, the sources' error counts) are
read at scrape time by a `Collector` built from a function, so nothing is
counted twice; only what nobody counted before (latency histograms, say)
uses prometheus_client's own metric objects.

Memory: the registry's metrics, plus one thread per connection, at most
MAX_HANDLERS of them; a connection over that is closed at once, and one that
sends nothing for HANDLER_TIMEOUT seconds is dropped (idle connections must
not pile up threads).
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from pcapd.core.configread import ConfigError, HostPort
from pcapd.core.logs import event

log = logging.getLogger("pcapd.core.metrics")

PREFIX = "pcapd_"
# Histogram buckets in seconds: captures run from milliseconds to an hour;
# trigger latency and Redis writes are milliseconds; uploads seconds.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UPLOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
SERVER_JOIN = 2.0  # s: stopping waits at most this for the listener thread
HANDLER_TIMEOUT = 5.0  # s: a connection silent this long (reading or writing) is closed
MAX_HANDLERS = 16  # connections served at once; more are closed unanswered
# Connections the kernel queues before they are accepted: socketserver's 5
# drops the SYNs of a burst of scrapers and health checks, each then waiting
# a 1 s retransmit.
LISTEN_BACKLOG = 128


class MetricsError(ConfigError):
    """The metrics listener cannot start; the message names the config field."""


@dataclass(frozen=True, slots=True)
class Check:
    """One readiness check: `detail` says what is wrong (or what was seen)."""

    name: str
    ok: bool
    detail: str = ""


Checks = Callable[[], Iterable[Check]]
Samples = Mapping[Any, float]  # a tuple of label values -> value


# -- families read from existing counters -------------------------------------
def counter(name: str, doc: str, samples: Samples | float, labels: tuple[str, ...] = ()) -> Metric:
    """A counter family `pcapd_<name>_total`; `samples` is one value, or
    label values -> value."""
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels or None)
    _fill(family, samples)
    return family


def gauge(name: str, doc: str, samples: Samples | float, labels: tuple[str, ...] = ()) -> Metric:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=labels or None)
    _fill(family, samples)
    return family


def _fill(family: CounterMetricFamily | GaugeMetricFamily, samples: Samples | float) -> None:
    if isinstance(samples, Mapping):
        for values, value in samples.items():
            family.add_metric(list(values), value)
    else:
        family.add_metric([], samples)


class FunctionCollector(Collector):
    """A collector whose families come from `collect()` at each scrape."""

    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        yield from self._collect()


# -- the listener ---------------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up shutdown
    block_on_close = False
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handlers = threading.BoundedSemaphore(MAX_HANDLERS)

    def process_request(self, request: Any, client_address: Any) -> None:
        """A thread for the connection if one of MAX_HANDLERS is free; else closed now."""
        if not self._handlers.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._handlers.release()
            raise

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], OSError):  # a client timed out or went: not news
            return
        super().handle_error(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._handlers.release()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    timeout = HANDLER_TIMEOUT  # socket timeout: an idle client is let go

    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
        pass


def readiness(checks: Checks) -> tuple[bool, dict[str, Any]]:
    """(ready, the JSON body): every check, a crashed one failing with its error."""
    try:
        found = list(checks())
    except Exception as exc:  # a bug in a check must answer 503, not kill the thread
        found = [Check("checks", False, f"checking failed: {exc!r}")]
    ready = all(c.ok for c in found)
    body = {"ready": ready, "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in found}}
    return ready, body


class MetricsServer:
    """`/metrics`, `/healthz` and `/readyz` on `address`, served from a daemon thread."""

    def __init__(
        self, address: HostPort, registry: CollectorRegistry, checks: Checks, field: str
    ) -> None:
        """`field` is the config key `address` came from, named in errors."""
        self.address = address
        self.field = field
        self._metrics = make_wsgi_app(registry)
        self._checks = checks
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind now (so a port in use is a clear error at start-up) and serve."""
        cls = _Server6 if ":" in self.address.host else _Server
        try:
            self._server = make_server(
                self.address.host, self.address.port, self._app,
                server_class=cls, handler_class=_QuietHandler,
            )  # fmt: skip
        except OSError as exc:
            raise MetricsError(
                [f"{self.field}: cannot listen on {self.address}: {exc.strerror or exc}"]
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name="metrics", daemon=True,
        )  # fmt: skip
        self._thread.start()
        event(log, "metrics_listening", address=str(self.address), field=self.field)

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(SERVER_JOIN)
        self._server = None

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body: Iterable[bytes] = self._metrics(environ, start_response)
            return body
        if path == "/healthz":
            return _json(start_response, "200 OK", {"alive": True})
        if path == "/readyz":
            ready, report = readiness(self._checks)
            return _json(start_response, "200 OK" if ready else "503 Service Unavailable", report)
        return _json(
            start_response, "404 Not Found", {"error": "not found: /metrics, /healthz, /readyz"}
        )


def _json(start_response: Callable[..., Any], status: str, body: object) -> list[bytes]:
    data = json.dumps(body, sort_keys=True).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start_response(status, headers)
    return [data]


def serve_metrics(
    address: HostPort | None,
    field: str,
    collectors: Iterable[Collector],
    checks: Checks,
) -> MetricsServer | None:
    """Register `collectors` on a fresh registry and serve them on `address`
    (None: metrics off, nothing started). Raises MetricsError naming `field`."""
    if address is None:
        return None
    registry = CollectorRegistry()
    for collector in collectors:
        registry.register(collector)
    server = MetricsServer(address, registry, checks, field)
    server.start()
    return server
