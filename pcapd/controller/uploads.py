"""After the capture: the bounded upload pool, and shutdown (captures ended,
uploads waited for, the ones still hanging spooled for the next run)."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from typing import Any

from pcapd.controller.state import ControllerState
from pcapd.core.events import ResultEvent
from pcapd.core.logs import event
from pcapd.worker import Worker
from uploaders.base import Artifact

log = logging.getLogger("pcapd.controller")

ABANDON_WAIT = 2.0  # seconds for abandoned uploads to record what is pending
SHUTDOWN_POLL = 0.01  # s between looks at the captures still running, on shutdown


class Uploads(ControllerState):
    # -- after the capture -------------------------------------------------
    def submit(self, worker: Worker, artifact: Artifact, result: ResultEvent) -> None:
        """Hand a captured file to the bounded upload pool, so a slow sink
        never holds up capturing; tracked until stored, for shutdown. It
        leaves `_capturing` as it enters `_uploads`, under one lock, so
        shutdown always finds it in one of them (and spools it if it must)."""
        future: Future[None] | None = None
        with self._lock:
            # Chosen under the lock shutdown closes the pool under: a submit
            # that raises (a thread that cannot start) has queued the task
            # already, so it is never run here as well; it propagates.
            if not self._uploads_closed:
                future = self._upload_pool.submit(worker.store, artifact, result)
                self._uploads[future] = (worker, artifact, result)
                self._capturing.discard(worker)
        if future is None:
            # Shut down: stored from this thread, still in `_capturing` (so
            # shutdown reports it unfinished) until settle() untracks it: a
            # ring capture its ring's stop ended (`settle_late`), or one that
            # would not stop in time. Past the grace, said as queued ones are.
            if time.monotonic() >= self._grace_end:
                self._past_grace(1, id=result.id, interface=result.interface)
            worker.store(artifact, result)
            return
        future.add_done_callback(self._upload_done)

    def _upload_done(self, future: Future[None]) -> None:
        with self._lock:
            self._uploads.pop(future, None)

    # -- lifecycle -------------------------------------------------------
    def shutdown(self, timeout: float, grace: float | None = None) -> bool:
        """Stop taking requests, end running captures (stop=shutdown), wait for
        them to be stored. True if everything finished within `timeout`.
        `grace`: what is left of the whole stop's (`shutdown_grace`, which
        also covers sending the results), past which storing is logged as
        late; `timeout` if not given."""
        deadline = time.monotonic() + timeout
        grace_end = deadline if grace is None else time.monotonic() + grace
        self._grace_end = grace_end
        self.admission.close()
        self.capture_stop.set()
        while time.monotonic() < deadline:
            # A handle() already past admission may still add a capture.
            with self._lock:
                if not self._capturing and not self._handling:
                    break
            time.sleep(SHUTDOWN_POLL)
        with self._lock:
            captured = not self._capturing
        # Idle capture threads end now; busy ones (a capture that would not
        # stop) are left to the process's exit.
        with self._lock:
            self._captures_closed = True
        self._capture_pool.shutdown(wait=captured)
        with self._lock:
            uploads = list(self._uploads)
        _, hanging = wait_futures(uploads, max(0.0, deadline - time.monotonic()))
        if hanging:
            # Remote attempts give up now; their captures are in the spool
            # already, unless it had no room for the write-ahead (the store
            # then says `partial` or `failed`, and why).
            self.deliverer.abandon.set()
            wait_futures(hanging, ABANDON_WAIT)
        with self._lock:
            self._uploads_closed = True
        self._upload_pool.shutdown(wait=False)
        self._spool_unfinished(grace_end)
        with self._lock:
            return not self._capturing and not self._uploads

    def settle_late(self) -> int:
        """Ring captures handed over after shutdown closed the capture pool
        (`Ring.stop` ends them): taken here, off the ring's lock, with no
        wait for their claims, and stored (spooled: the remote sinks are
        abandoned by now) or answered. How many there were; one handed over
        later runs at once, in its caller's thread (`on_capture_thread`)."""
        with self._lock:
            late, self._late = self._late, []
            self._late_settled = True
        for task in late:
            task()  # `Worker._complete`: never raises
        return len(late)

    def _spool_unfinished(self, grace_end: float) -> None:
        """Uploads still queued or hanging when shutdown can wait no longer:
        their captures are kept (the drainer of the next run delivers what
        is spooled), not taken away with the process. A running one keeps
        (or takes) its one spool entry, `spooled` is published, and a
        delivery it still makes follows as `delivered`. A queued one is
        cancelled, so the pool never runs it, and stored here as any store
        at shutdown is: local disk, then the spool for the remote sinks,
        which are not tried (`abandon`)."""
        with self._lock:
            unfinished = [item for item in self._uploads.items() if not item[0].done()]
        queued: list[tuple[Worker, Artifact, ResultEvent]] = []
        error = "shutdown: upload still running, spooled for the next run"
        for future, (worker, artifact, result) in unfinished:
            if future.cancel():  # False once running (or done meanwhile)
                queued.append((worker, artifact, result))
                continue
            if not future.running():
                continue
            spooled = replace(result, status="spooled", error=error)
            if worker.spool_at_shutdown(artifact, spooled) != "spooled":
                continue  # it has its outcome, or it is lost (logged `capture_lost`)
            with self._lock:
                self._uploads.pop(future, None)
            worker.settle(durable=True)
        # After the running ones, which only need their entry: these write
        # files. Done before shutdown returns, so nothing else tracks them.
        # No remote sink is tried, whether or not one hung.
        self.deliverer.abandon.set()
        late = False
        for index, (worker, artifact, result) in enumerate(queued):
            if not late and time.monotonic() >= grace_end:
                late = True  # said once for all those left
                self._past_grace(len(queued) - index)
            worker.store(artifact, result)

    def _past_grace(self, captures: int, **which: Any) -> None:
        """`captures` are stored past the grace rather than lost with the
        process: said, so an operator knows why the stop took longer, with
        where this node writes them once the remote sinks are abandoned."""
        places = dict.fromkeys(
            "the spool" if label == "spool" else "local disk"
            for label, _ in self.deliverer.disk_targets()
        )
        storing = ", then ".join(places) or "nowhere: no local disk, no spool"
        event(
            log, "shutdown_past_grace", logging.WARNING,
            captures=captures, storing=storing, **which,
        )  # fmt: skip
