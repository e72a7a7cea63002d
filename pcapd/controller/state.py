"""What a controller holds: its parts, bounds, thread pools and counters.

`ControllerState` builds them; the controller's parts (`pcapd.controller`,
`.answers`, `.uploads`) are its subclasses and share them.
"""

from __future__ import annotations

import collections
import functools
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from pcapd.admission import Admission
from pcapd.controller.refusals import RefusalLog
from pcapd.core.config import Config
from pcapd.core.events import ResultEvent
from pcapd.core.redis_conn import Client
from pcapd.core.results import ResultPublisher
from pcapd.daemon_metrics import CaptureMetrics
from pcapd.dedup import seen_ids_and_sigs
from pcapd.engine import HandlePool, available_devices
from pcapd.ring import Ring
from pcapd.ring.watch import Watcher
from pcapd.worker import Worker
from uploaders.base import Artifact, FileNamer
from uploaders.deliver import Deliverer

# Capture threads kept beyond max_concurrent: a capture frees its slot just
# before its thread is free, so the next admitted one never waits for a thread.
CAPTURE_THREADS_SPARE = 4


class ControllerState:
    def __init__(
        self,
        config: Config,
        *,
        publisher: ResultPublisher,
        deliverer: Deliverer,
        pool: HandlePool,
        devices: Callable[[], set[str]] = available_devices,
        clock: Callable[[], float] = time.time,
        dedup_redis: Client | None = None,
        rings: Mapping[str, Ring] | None = None,
    ) -> None:
        """`dedup_redis`: where seen request ids and signatures are kept, so
        they hold across restarts (memory only when None, or while it is away).
        `rings`: the running lookback rings by interface; captures there are
        served from the ring, not from `pool`."""
        self.config = config
        self.node = config.general.node
        self.names = FileNamer(config.general.naming)
        self.publisher = publisher
        self.deliverer = deliverer
        self.pool = pool
        self.devices = devices
        self.clock = clock
        self.rings: Mapping[str, Ring] = rings or {}
        self.recent_ids, self.recent_sigs = seen_ids_and_sigs(
            config.security, self.node, dedup_redis, later=publisher.later
        )
        self._lock = threading.Lock()
        self._capturing: set[Worker] = set()  # admitted, not yet captured: for shutdown
        self._handling = 0  # handle() calls in progress
        # Set under `_lock` by shutdown before it shuts each pool down: work
        # then runs in the caller's thread, chosen under that lock (never
        # both queued and run inline).
        self._captures_closed = False
        self._late: list[Callable[[], None]] = []  # handed over after that (`settle_late`)
        self._late_settled = False  # `settle_late` has run: later ones run at once
        self._uploads_closed = False
        # Monotonic end of shutdown's grace: what is stored after it says so.
        self._grace_end = math.inf
        # (source, status) -> requests: what became of each delivery (/metrics).
        self._requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.metrics = CaptureMetrics()
        self.refusals = RefusalLog()  # the request_rejected warning, summarised under a burst
        self.admission = Admission(
            config.general, deliverer.spool if deliverer.has_remote else None,
            deliverer.disk_targets(), rings=sum(r.memory for r in self.rings.values()),
        )  # fmt: skip
        # Stores under way, with what each holds: spooled if shutdown cannot wait.
        self._uploads: dict[Future[None], tuple[Worker, Artifact, ResultEvent]] = {}
        self._upload_pool = ThreadPoolExecutor(
            max_workers=config.delivery.upload_workers, thread_name_prefix="upload"
        )
        # Captures run on reused threads: starting a thread costs the trigger
        # thread ~0.3-1 ms (it waits for the new thread to run), a submit ~20 us.
        # These threads capture, and take a watched ring capture once it is
        # over (its claims' answer, then its result or store); files are
        # stored on the upload pool. At most max_concurrent captures hold a
        # slot, but a watched one ended by its packets/bytes bound frees its
        # slot before its completion takes a thread, and that completion may
        # wait for its claims (up to dedup.CLAIM_WAIT while Redis is away): so
        # twice max_concurrent, one thread per slot capturing and one per slot
        # completing, plus the spares for a slot freed just before its thread.
        # Only slots turning over faster than claims are answered need more;
        # their tasks queue, each ahead of them waiting at most CLAIM_WAIT.
        # Threads start only when no idle one is there, so the bound costs
        # nothing until it is used.
        self._capture_pool = ThreadPoolExecutor(
            max_workers=2 * config.general.max_concurrent + CAPTURE_THREADS_SPARE,
            thread_name_prefix="capture",
        )
        # The timed bounds of ring captures that no thread waits for.
        self.watcher = Watcher()
        self.capture_stop = threading.Event()  # set on shutdown: captures end now
        self.capture_started = threading.Event()  # for tests and benchmarks

    # -- bounds and threads ------------------------------------------------
    def count_request(self, source: str, status: str) -> None:
        """One more request from `source` that ended `status` (request_counts)."""
        with self._lock:
            self._requests[source, status] += 1

    def free_slots(self) -> int:
        """Captures that would be admitted now (0 once shutting down): what
        durable sources take from their queue at most."""
        return self.admission.free_slots()

    def running(self) -> int:
        """Captures under way now (for the heartbeat)."""
        with self._lock:
            return len(self._capturing)

    def on_capture_thread(self, task: Callable[[str], None], arg: str) -> None:
        """`task(arg)` on a capture thread (never queued behind uploads).
        Once they are shut down, kept for `settle_late`: the caller may hold
        a ring's lock (`Ring.stop` ending its captures), and must not wait.
        After `settle_late`, nobody else would run it: run here."""
        with self._lock:
            if not self._captures_closed:
                self._capture_pool.submit(task, arg)
                return
            if not self._late_settled:
                self._late.append(functools.partial(task, arg))
                return
        task(arg)

    @property
    def captures_closed(self) -> bool:
        """Shutdown has given up waiting for captures: none waits for its claims."""
        with self._lock:
            return self._captures_closed

    def untrack(self, worker: Worker) -> None:
        """`worker`'s capture has ended (or never started)."""
        with self._lock:
            self._capturing.discard(worker)

    def publish(self, result: ResultEvent, reply_to: str | None = None) -> bool:
        """Queue `result`; False when the publisher refuses it (stopped, at
        the end of a shutdown, or Redis unreachable with no thread to wait
        for it): the publisher logs it `result_lost` with the whole event,
        and counts it (`dropped`, exported as results_dropped)."""
        return self.publisher.submit(result, reply_to)
