"""One thread for the timed bounds of every ring capture no thread waits for.

A ring capture with no lookback to copy is served by the ring's reader
alone; what ends it is its packets or bytes bound (the reader sees it), or
time: its duration, its timeout without a packet, its stop signal
(shutdown, or its request's claim answered taken). `Watcher` looks at each
watched capture when its next bound falls due, and at least every
MAX_POLL_WAIT for the stop signals, as a capture's own thread would
(`RingCapture.finish`): one thread and one wake-up for all of them, not a
thread and an event per capture. Memory: one entry per capture running.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pcapd.core.logs import event
from pcapd.engine import MAX_POLL_WAIT, StopSignal
from pcapd.ring.capture import RingCapture

log = logging.getLogger("pcapd.ring")

# The stop reason of a capture the watcher could not look at: ended now, as
# shutdown ends it (the result's stop is one of events.STOPS), with a warning.
WATCH_FAILED = "shutdown"


class Watcher:
    """Thread-safe; its thread starts with the first capture watched and
    sleeps while none is."""

    def __init__(self, name: str = "ring-watch") -> None:
        self._name = name
        self._cond = threading.Condition()
        self._watched: dict[RingCapture, None] = {}  # in the order they came
        self._idle = False  # the thread sleeps until a capture is watched
        self._thread: threading.Thread | None = None

    def watch(self, capture: RingCapture, stop: StopSignal, over: Callable[[str], None]) -> None:
        """`over(stop reason)` is called once when `capture` is over: from
        the ring's reader (a bound, the ring's end), or from this watcher's
        thread (time, `stop`); here if it is over already."""
        if capture.watched(stop, over):
            return
        with self._cond:
            self._watched[capture] = None
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            # Else the thread looks at it within MAX_POLL_WAIT: its bounds are
            # whole seconds away, and a wake-up per capture would cost a
            # turn at the GIL each under a storm.
            if self._idle:
                self._cond.notify()

    def __len__(self) -> int:
        with self._cond:
            return len(self._watched)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._watched:
                    self._idle = True
                    self._cond.wait()
                self._idle = False
            wake = self._round()
            with self._cond:
                self._cond.wait(max(0.0, wake - time.monotonic()))

    def _round(self) -> float:
        """Look at every capture watched: when to look again. A function of
        its own, so no capture is held by this thread's locals while it
        sleeps (its file would stay in memory)."""
        with self._cond:
            captures = list(self._watched)
        now = time.monotonic()
        wake = now + MAX_POLL_WAIT
        over = []
        for capture in captures:
            due = self._look(capture, now)
            if due is None:
                over.append(capture)
            elif due < wake:
                wake = due
        with self._cond:
            for capture in over:
                self._watched.pop(capture, None)
        return wake

    def _look(self, capture: RingCapture, now: float) -> float | None:
        """`capture.look(now)` (it hands itself over if time ended it). A
        capture that raises is logged, cut now and handed over with what it
        has, its result saying why (unless its reader handed it over
        already), and the others are still watched: one bug ends one
        capture, not the thread."""
        try:
            return capture.look(now)
        except Exception as exc:
            event(log, "ring_watch_failed", logging.ERROR, exc_info=True,
                  interface=capture.interface)  # fmt: skip
            capture.fail(WATCH_FAILED, f"ended early: its bounds could not be checked "
                                       f"({exc!r}; log event=ring_watch_failed)")  # fmt: skip
            return None
