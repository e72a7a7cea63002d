"""`pcapd serve`: bootstrap, signal handlers, source loops, warm shutdown.

First SIGTERM/SIGINT (`pcapd.core.lifecycle`): stop taking requests, end
running captures with stop=shutdown, deliver them and publish their results,
exit 0. A second signal exits at once (status 1).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import threading
import time
from collections.abc import Sequence

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisClusterException
from redis.retry import Retry

from pcapd.controller import Controller
from pcapd.core import redis_conn
from pcapd.core.backoff import Backoff
from pcapd.core.config import Config
from pcapd.core.events import ResultEvent
from pcapd.core.lifecycle import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    StopRequested,
    StopSignals,
    stops_interrupt,
)
from pcapd.core.logs import event, setup_logging
from pcapd.core.metrics import MetricsError, MetricsServer, serve_metrics
from pcapd.core.results import ResultPublisher
from pcapd.daemon_build import build_deliverer, build_sources
from pcapd.daemon_metrics import DaemonCollector, daemon_checks
from pcapd.engine import CaptureError, HandlePool, available_devices
from pcapd.fleet import Heartbeat, NodeState, node_state
from pcapd.ring import Ring, RingFilterError
from triggers.base import TriggerSource
from uploaders.drain import SpoolDrainer
from uploaders.spool_entry import SpoolEntry

log = logging.getLogger("pcapd.daemon")

# glibc malloc: at most this many arenas (default 8 per core, one taken by
# each thread that allocates: captures, uploads, sources); and blocks from
# this size on are mmapped and given back when freed (glibc otherwise raises
# the threshold after each freed 1 MB body, and keeps the next ones in a
# heap it never shrinks). MALLOC_ARENA_MAX / MALLOC_MMAP_THRESHOLD_ in the
# environment win. See README, "Memory".
MALLOC_ARENAS = 2
MALLOC_MMAP_THRESHOLD = 256 * 1024
_M_MMAP_THRESHOLD, _M_ARENA_MAX = -3, -8  # from glibc's malloc.h

# What the process may hold beyond its RSS when idle, captures (max_memory)
# and the pub/sub queue: requests being parsed (up to 1 MB each unread),
# queued result events (MAX_PENDING of ~1 KB), thread stacks touched, and
# allocator slack. Measured by the daemon fuzz and bench/trigger_storm.py.
MEMORY_OVERHEAD = 64 * 1024 * 1024

RESULTS_GRACE = 10.0  # of delivery.shutdown_grace, at most, kept to send queued results
RESULTS_FLOOR = 1.0  # s the queued results get at the end, even past the grace
SOURCE_JOIN = 2.0  # seconds for all trigger sources to stop together
DEDUP_TIMEOUT = 1.0  # a request waits at most this on Redis for its dedup check


# What redis-py says when no seed answered CLUSTER SLOTS: none reachable, or
# each refusing it (an ACL without it, a server not in cluster mode).
CLUSTER_HINT = ("every seed ([redis] nodes, url or host) must be a cluster node that answers "
                "CLUSTER SLOTS: with an ACL the daemon's user needs +cluster|slots +command "
                "on every node (docs/operations.md)")  # fmt: skip
# What it says instead when the last seed tried refused the credentials: no
# ACL rule is missing, the [redis] username/auth do not match a user there.
AUTH_HINT = ("the seeds refuse [redis] username and auth: check them against the user on "
             "every node (ACL GETUSER; requirepass: auth alone; docs/operations.md)")  # fmt: skip


def _dedup_client(config: Config) -> redis_conn.Client:
    """The seen ids' client: short timeouts and no retries, since a request
    waits on it. A cluster's client reads its slot map as it is made, and
    the daemon cannot start without one: until a seed answers, this says why
    and tries again (the other clients connect when first used)."""
    tracker = Backoff().tracker()
    while True:
        try:
            with redis_conn.connecting():
                return redis_conn.connect(
                    config.redis, socket_timeout=DEDUP_TIMEOUT,
                    socket_connect_timeout=DEDUP_TIMEOUT, retry=Retry(NoBackoff(), 0),
                )  # fmt: skip
        except (RedisClusterException, redis.ConnectionError) as exc:
            wait = tracker.failed()
            event(log, "redis_cluster_unreachable", logging.ERROR,
                  redis=config.redis.describe(), error=str(exc), retry_in=f"{wait:.1f}s",
                  hint=_unreachable_hint(exc))  # fmt: skip
            time.sleep(wait)


def _unreachable_hint(exc: Exception) -> str:
    # redis-py's RedisClusterException carries the last seed's error as its cause.
    refused = isinstance(exc.__cause__ or exc, AuthenticationError)
    return AUTH_HINT if refused else CLUSTER_HINT


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config

        def connect() -> redis_conn.Client:
            return redis_conn.connect(config.redis)

        devices = available_devices()
        # Interfaces with a lookback ring read its one handle; the rest keep
        # a spare handle each.
        self.rings = {
            i.name: Ring(i.name, i.lookback, i.lookback_bytes, i.lookback_bpf,
                         config.general.buffer_size, origin=f"interface[{index}]")
            for index, i in enumerate(config.interfaces) if i.lookback and i.name in devices
        }  # fmt: skip
        configured = tuple(
            i.name for i in config.interfaces if i.name in devices and i.name not in self.rings
        )
        self.pool = HandlePool(configured, config.general.buffer_size)
        self.publisher = ResultPublisher(connect, config.redis)
        # Set at the first signal: retries stop waiting, what fails is spooled.
        self.retry_stop = threading.Event()
        deliverer = build_deliverer(config, self.retry_stop)
        # Seen ids and signatures outlive this process; short timeouts and no
        # retries, since a request waits on it (memory only while it is away).
        dedup = _dedup_client(config)
        self.dedup = dedup
        self.controller = Controller(
            config, publisher=self.publisher, deliverer=deliverer, pool=self.pool,
            dedup_redis=dedup, rings=self.rings,
        )  # fmt: skip
        deliverer.observe = self.controller.metrics.uploaded
        self.drainer = None
        if deliverer.spool is not None:
            # `delivered` to the request's reply_to too; queued, so it waits
            # for Redis while the daemon runs (lost only past MAX_PENDING or
            # at shutdown, logged with the result as the others).
            self.drainer = SpoolDrainer(
                deliverer.spool, [u for u in deliverer.uploaders if u.remote],
                self._queue_delivered, config.delivery.drain_interval,
            )  # fmt: skip
            self.drainer.observe = self.controller.metrics.uploaded
        self.sources = build_sources(config, self.controller.free_slots, self.controller.refuse)
        # The first signal stops the sources; retries stop waiting and running
        # captures end with stop=shutdown.
        self.started = time.time()
        # The heartbeat's last readings, kept when a later one fails.
        self._devices_seen = devices
        self._spool_files = 0
        self._state_problem: str | None = None
        self.heartbeat = Heartbeat(
            lambda: redis_conn.connect(
                config.redis, retry=Retry(NoBackoff(), 0),
                socket_timeout=min(redis_conn.SOCKET_TIMEOUT, config.fleet.heartbeat_interval),
                socket_connect_timeout=min(
                    redis_conn.CONNECT_TIMEOUT, config.fleet.heartbeat_interval
                ),
            ),
            config.fleet, config.general.node, self._node_state,
        )  # fmt: skip
        self.signals = StopSignals(
            "serve", on_warm=(self.retry_stop.set, self.controller.capture_stop.set)
        )
        self.stop_sources = self.signals.stop
        for missing in sorted({i.name for i in config.interfaces} - devices):
            event(log, "interface_missing", logging.WARNING, interface=missing)

    def _queue_delivered(self, result: ResultEvent, entry: SpoolEntry) -> bool:
        """The drainer's `on_delivered`: the entry goes once its result is
        queued; not once the publisher is stopping (the entry is kept)."""
        return self.publisher.submit(result, entry.capture_request().reply_to)

    def _node_state(self) -> NodeState:
        """What the heartbeat says (pcapd/fleet/): read in its own thread.
        A part that cannot be read (the device list, the spool directory)
        keeps its last value, logged once per reason: the node still beats."""
        spool = self.controller.deliverer.spool
        problems: list[str] = []
        try:
            self._devices_seen = available_devices()
        except OSError as exc:
            problems.append(f"devices: {exc}")
        spool_files = self._spool_files
        if spool is not None:
            try:
                spool_files = self._spool_files = spool.depth()[0]
            except OSError as exc:
                problems.append(f"spool: {exc}")
        reason = "; ".join(problems) or None
        if reason != self._state_problem:
            if reason is not None:
                event(log, "heartbeat_partial", logging.WARNING, error=reason)
            self._state_problem = reason
        # Ring interfaces are not in the pool: their link type is the ring's;
        # and they are devices to the controller even once gone (`_KnownDevices`).
        linktypes = {**self.pool.linktypes(), **{n: r.linktype for n, r in self.rings.items()}}
        return node_state(
            self.config, instance=self.heartbeat.instance, started=self.started,
            devices=self._devices_seen | set(self.rings), linktypes=linktypes,
            sources=[s.name for s in self.sources], captures=self.controller.running(),
            spool_files=spool_files,
            spool_bytes=spool.used_bytes() if spool is not None else 0,
            rings={name: ring.error for name, ring in self.rings.items()},
        )  # fmt: skip

    def start_metrics(self) -> MetricsServer | None:
        """/metrics, /healthz, /readyz on `[metrics] listen` (None: off);
        MetricsError naming the field if it cannot listen."""
        collectors = [
            *self.controller.metrics.collectors(),
            DaemonCollector(self.controller, self.sources, self.pool),
        ]
        return serve_metrics(
            self.config.metrics.listen, "metrics.listen", collectors,
            lambda: daemon_checks(self.controller, self.sources, self.dedup),
        )  # fmt: skip

    def _source_loop(self, source: TriggerSource) -> None:
        # One failing source never stops the others; it restarts after a pause.
        while not self.stop_sources.is_set():
            try:
                for delivery in source.deliveries(self.stop_sources):
                    if self.stop_sources.is_set():
                        delivery.release()
                        break
                    self.controller.handle(delivery)
            except Exception:
                event(log, "source_crashed", logging.ERROR, exc_info=True, source=source.name)
                self.stop_sources.wait(1.0)

    def run(self) -> int:
        general = self.config.general
        event(
            log, "starting", node=general.node, pid=os.getpid(),
            sources=[s.name for s in self.sources],
            uploaders=[u.name for u in self.controller.deliverer.uploaders],
            max_concurrent=general.max_concurrent, max_memory=general.max_memory,
        )  # fmt: skip
        try:
            for ring in self.rings.values():
                ring.start()
        except CaptureError as exc:
            event(log, "ring_failed", logging.ERROR, error=str(exc))
            for ring in self.rings.values():
                ring.stop()
            # A filter the link type refuses fails every start: systemd must
            # not restart it (RestartPreventExitStatus=2).
            return EXIT_CONFIG if isinstance(exc, RingFilterError) else EXIT_FAILURE
        self.publisher.start()
        self.pool.start()
        if self.drainer is not None:
            self.drainer.start()
        threads = [
            threading.Thread(target=self._source_loop, args=(s,), name=s.name, daemon=True)
            for s in self.sources
        ]
        for thread in threads:
            thread.start()
        self.heartbeat.start()
        try:
            while not self.stop_sources.wait(0.5):
                pass
        finally:
            # Everything below fits in shutdown_grace, except writing the
            # captures still queued for upload (local disk, the spool), which
            # is done rather than lose them (`shutdown_past_grace`); a hung
            # sink cannot keep the process past it (systemd would SIGKILL it;
            # nothing would be lost even then: uploads are written ahead).
            grace = self.config.delivery.shutdown_grace
            deadline = time.monotonic() + grace
            self.stop_sources.set()
            # The node takes no more requests: it leaves the fleet view now.
            self.heartbeat.stop()
            # Sources first, so no request is admitted behind the controller's back.
            for thread in threads:
                thread.join(timeout=max(0.0, min(SOURCE_JOIN, deadline - time.monotonic())))
            reserve = min(RESULTS_GRACE, grace / 4)
            clean = False
            try:
                try:
                    now = time.monotonic()
                    clean = self.controller.shutdown(
                        timeout=max(0.0, deadline - reserve - now), grace=deadline - now
                    )
                    for source in self.sources:
                        self._close_source(source)
                    if self.drainer is not None:
                        self.controller.deliverer.abandon.set()  # the drainer's attempt, too
                        self.drainer.stop(
                            timeout=max(0.1, min(reserve / 2, deadline - time.monotonic()))
                        )
                finally:
                    try:
                        self.pool.stop()
                        for ring in self.rings.values():
                            clean = self._stop_ring(ring) and clean
                    finally:
                        try:
                            # Ring captures the stops ended, past the controller's wait: stored now.
                            self.controller.settle_late()
                            self.controller.refusals.flush()  # the last burst's summary
                        finally:
                            # Past the grace (stores above), the results still get a moment.
                            left = max(min(RESULTS_FLOOR, reserve), deadline - time.monotonic())
                            clean = self.publisher.stop(left) == 0 and clean
            except Exception:
                # Whatever failed, the rest of the tail ran (finally) and
                # `stopped` is still said, so serve() exits as it should.
                event(log, "shutdown_failed", logging.ERROR, exc_info=True)
                clean = False
        event(log, "stopped", clean=clean)
        return EXIT_OK if clean else EXIT_FAILURE

    @staticmethod
    def _close_source(source: object) -> None:
        """Close `source` if it has a close; one that fails is logged, and
        the others are still closed."""
        close = getattr(source, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            event(log, "source_close_failed", logging.ERROR, exc_info=True, source=repr(source))

    @staticmethod
    def _stop_ring(ring: Ring) -> bool:
        """Stop `ring`; one that fails is logged, and the others still stop."""
        try:
            ring.stop()
        except Exception:
            event(log, "ring_stop_failed", logging.ERROR, exc_info=True, interface=ring.interface)
            return False
        return True


def memory_bound(config: Config, idle_rss: int) -> int:
    """The RSS the daemon stays under, whatever arrives (README, "Memory")."""
    queue = config.redis.pubsub_queue_bytes if config.redis.listen else 0
    return idle_rss + config.general.max_memory + queue + MEMORY_OVERHEAD


def bound_malloc() -> None:
    """Apply MALLOC_ARENAS and MALLOC_MMAP_THRESHOLD; before any thread starts."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(_M_ARENA_MAX, MALLOC_ARENAS)
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(_M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)


def serve(config: Config, config_path: str | None, flag_warnings: Sequence[str] = ()) -> int:
    """Run with `config`, loaded from `config_path` (None: defaults) and the
    command line by `pcapd serve`, until signalled."""
    setup_logging(config.general, config.syslog)
    for warning in flag_warnings:
        event(log, "flag_warning", logging.WARNING, warning=warning)
    for warning in config.warnings:
        event(log, "config_warning", logging.WARNING, path=config_path, warning=warning)
    problems = config.serve_problems()
    if problems:
        # Without a file the defaults enable no destination: say the file is what is missing.
        hint = "" if config_path is not None else "; no config file was given (-c FILE)"
        for problem in problems:
            event(log, "config_error", logging.ERROR, path=config_path, error=problem + hint)
        return EXIT_CONFIG
    bound_malloc()
    try:
        with stops_interrupt():  # waiting for a cluster: nothing taken yet, nothing to finish
            daemon = Daemon(config)
    except StopRequested as stop:
        event(log, "stopped", clean=True, reason="stopped before serving", signal=stop.signal)
        return EXIT_OK
    daemon.signals.install()
    try:
        metrics = daemon.start_metrics()
    except MetricsError as exc:
        for problem in exc.errors:
            event(log, "config_error", logging.ERROR, path=config_path, error=problem)
        return EXIT_CONFIG
    try:
        code = daemon.run()
    finally:
        if metrics is not None:
            metrics.stop()
    # Everything durable is done: the interpreter's last collections walk
    # every object boto3 and the rest left (~0.45 s idle, 2.5 s seen on a
    # loaded 2-core machine, past shutdown_grace). Frozen, they are skipped.
    gc.freeze()
    lingering = [
        t.name for t in threading.enumerate() if t.is_alive() and not t.daemon
        and t is not threading.current_thread()
    ]  # fmt: skip
    if lingering:
        # An abandoned upload's helper threads (s3 parts) may sit in a socket
        # read for botocore's 120 s, and the interpreter joins them at exit.
        # Everything durable is done: leave now, as shutdown_grace promises.
        event(log, "exit_abandoning", logging.WARNING, threads=lingering)
        logging.shutdown()
        os._exit(code)
    return code
