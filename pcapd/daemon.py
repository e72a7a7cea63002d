"""`pcapd serve`: bootstrap, signal handlers, source loops, warm shutdown.

First SIGTERM/SIGINT (`pcapd.core.lifecycle`): stop taking requests, end
running captures with stop=shutdown, deliver them and publish their results,
exit 0. A second signal exits at once (status 1).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pcapd.controller import Controller
from pcapd.core import redis_conn
from pcapd.core.config import Config
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, StopSignals
from pcapd.core.logs import event, setup_logging
from pcapd.core.results import ResultPublisher
from pcapd.engine import HandlePool, available_devices
from triggers.base import TriggerSource
from triggers.redis_pubsub import RedisPubSubSource
from uploaders.base import Uploader
from uploaders.deliver import Deliverer, build_remote_uploaders
from uploaders.local import LocalUploader
from uploaders.retry import RetryPolicy
from uploaders.spool import Spool, SpoolDrainer

log = logging.getLogger("pcapd.daemon")

SHUTDOWN_GRACE = 60.0  # seconds to deliver captures ended by shutdown
RESULTS_GRACE = 10.0  # then seconds to send the results still queued


def build_deliverer(config: Config, stop: threading.Event) -> Deliverer:
    """Local disk first (fast, durable), then S3 and CloudShark in the order
    of their sections in the config file; a spool for the remote ones."""
    uploaders: list[Uploader] = []
    if config.general.writelocal:
        uploaders.append(LocalUploader(config.general.localdir))
    remote = build_remote_uploaders(config)
    uploaders.extend(remote)
    spool = Spool(config.delivery.spool_dir, config.delivery.spool_max_bytes) if remote else None
    return Deliverer(uploaders, RetryPolicy.from_config(config.delivery, stop=stop), spool)


def build_sources(config: Config, free_slots: Callable[[], int]) -> list[TriggerSource]:
    sources: list[TriggerSource] = []
    if config.redis.listen:

        def connect_once() -> redis.Redis:
            # No silent retries inside redis-py: the source's own loop logs the
            # outage and backs off, so an operator sees Redis is down.
            return redis_conn.connect(config.redis, retry=Retry(NoBackoff(), 0))

        sources.append(
            RedisPubSubSource(connect_once, config.redis.channel, config.redis.describe())
        )
    if config.redis.stream_listen:
        from triggers.redis_stream import RedisStreamSource

        sources.append(RedisStreamSource(config.redis, config.general.node, free_slots=free_slots))
    if config.sqs.listen:
        from triggers.sqs import SqsSource

        sources.append(
            SqsSource(
                config.sqs,
                free_slots=free_slots,
                max_request_bytes=config.general.max_request_bytes,
            )
        )
    return sources


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config

        def connect() -> redis.Redis:
            return redis_conn.connect(config.redis)

        devices = available_devices()
        configured = tuple(i.name for i in config.interfaces if i.name in devices)
        self.pool = HandlePool(configured, config.general.buffer_size)
        self.publisher = ResultPublisher(connect, config.redis)
        # Set at the first signal: retries stop waiting, what fails is spooled.
        self.retry_stop = threading.Event()
        deliverer = build_deliverer(config, self.retry_stop)
        self.controller = Controller(
            config, publisher=self.publisher, deliverer=deliverer, pool=self.pool
        )
        self.drainer = (
            SpoolDrainer(
                deliverer.spool,
                [u for u in deliverer.uploaders if u.remote],
                lambda result, _locations: self.publisher.submit(result),
                config.delivery.drain_interval,
            )
            if deliverer.spool is not None
            else None
        )
        self.sources = build_sources(config, self.controller.free_slots)
        # The first signal stops the sources; retries stop waiting and running
        # captures end with stop=shutdown.
        self.signals = StopSignals(
            "serve", on_warm=(self.retry_stop.set, self.controller.capture_stop.set)
        )
        self.stop_sources = self.signals.stop
        for missing in sorted({i.name for i in config.interfaces} - devices):
            event(log, "interface_missing", logging.WARNING, interface=missing)

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
                log.exception("event=source_crashed source=%s", source.name)
                self.stop_sources.wait(1.0)

    def run(self) -> int:
        general = self.config.general
        event(
            log, "starting", node=general.node, pid=os.getpid(),
            sources=[s.name for s in self.sources],
            uploaders=[u.name for u in self.controller.deliverer.uploaders],
            max_concurrent=general.max_concurrent, max_memory=general.max_memory,
        )  # fmt: skip
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
        try:
            while not self.stop_sources.wait(0.5):
                pass
        finally:
            self.stop_sources.set()
            # Sources first, so no request is admitted behind the controller's back.
            for thread in threads:
                thread.join(timeout=2.0)
            clean = self.controller.shutdown(timeout=SHUTDOWN_GRACE)
            for source in self.sources:
                close = getattr(source, "close", None)
                if close is not None:
                    close()
            if self.drainer is not None:
                self.drainer.stop()
            self.pool.stop()
            clean = self.publisher.stop(RESULTS_GRACE) == 0 and clean
        event(log, "stopped", clean=clean)
        return EXIT_OK if clean else EXIT_FAILURE


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
        for problem in problems:
            event(log, "config_error", logging.ERROR, path=config_path, error=problem)
        return EXIT_CONFIG
    daemon = Daemon(config)
    daemon.signals.install()
    return daemon.run()
