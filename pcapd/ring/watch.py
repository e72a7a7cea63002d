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

import threading
import time
from collections.abc import Callable

from pcapd.engine import MAX_POLL_WAIT, StopSignal
from pcapd.ring.capture import RingCapture


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
                captures = list(self._watched)
            now = time.monotonic()
            wake = now + MAX_POLL_WAIT
            over = []
            for capture in captures:
                due = capture.look(now)  # hands it over itself if time ended it
                if due is None:
                    over.append(capture)
                elif due < wake:
                    wake = due
            with self._cond:
                for capture in over:
                    self._watched.pop(capture, None)
                self._cond.wait(max(0.0, wake - time.monotonic()))
