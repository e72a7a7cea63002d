"""Run until signalled, the same way in the daemon and in every agent.

The first SIGTERM or SIGINT asks for a warm stop: `stop` is set and each
`on_warm` callback runs, so the process finishes what it holds (captures
delivered or spooled, queued Redis writes sent) and exits `EXIT_OK`. A second
signal is cold: the process leaves at once with `EXIT_COLD`, skipping every
flush. A stop asked for over Redis should signal the process itself, so there
is one shutdown path.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from pcapd.core.logs import event

EXIT_OK = 0
EXIT_FAILURE = 1  # the run ended badly: a failed capture handle, work lost at stop
EXIT_COLD = 1  # a second signal: left at once, queued work not flushed
EXIT_CONFIG = 2  # the config or command line cannot be run; nothing was started
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

log = logging.getLogger("pcapd.lifecycle")


class StopRequested(BaseException):
    """A stop signal inside `stops_interrupt`: a BaseException, as
    KeyboardInterrupt is, so no `except Exception` on the way swallows it."""

    def __init__(self, signum: int) -> None:
        self.signal = signal.Signals(signum).name
        super().__init__(self.signal)


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signum)


@contextmanager
def stops_interrupt() -> Iterator[None]:
    """For the block, SIGTERM and SIGINT raise `StopRequested` in the main
    thread: for a wait before `StopSignals` has anything to stop (the daemon
    waiting for a cluster's slot map), which the two must end alike."""
    before = {signum: signal.signal(signum, _raise_stop) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


class StopSignals:
    """Installs the handlers; `stop` is the event every loop watches.

    The handler only writes the signal's number to a pipe: it runs in the
    main thread between bytecodes, possibly while that thread holds `stop`'s
    own lock (inside `stop.wait`), so setting the event there could deadlock.
    A thread reading the pipe sets `stop`, runs each `on_warm` callback (each
    must only set events or schedule work, never block) and, on a second
    SIGTERM/SIGINT, leaves the process at once.

    `warm_only` signals (a supervisor's forwarded stop) ask for the warm stop
    too but never count toward the cold one: a worker signalled by its whole
    process group (Ctrl-C, systemd's control-group kill) and then by its
    supervisor still flushes.
    """

    def __init__(
        self,
        process: str,
        on_warm: tuple[Callable[[], object], ...] = (),
        warm_only: tuple[signal.Signals, ...] = (),
    ) -> None:
        self.process = process
        self.stop = threading.Event()
        self._on_warm = on_warm
        self._warm_only = frozenset(warm_only)
        self._signalled, self._notify = os.pipe()
        self._installed = False

    def install(self) -> None:
        """Idempotent: a second reader would take the second signal for a first."""
        if self._installed:
            return
        self._installed = True
        threading.Thread(target=self._serve, name="pcapd-signals", daemon=True).start()
        for signum in (*STOP_SIGNALS, *self._warm_only):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        os.write(self._notify, bytes((signum,)))

    def _serve(self) -> None:
        warm, stops = False, 0
        while signums := os.read(self._signalled, 16):
            for signum in signums:
                name = signal.Signals(signum).name
                if signum not in self._warm_only:
                    stops += 1
                    if stops > 1:
                        event(log, "exit_now", logging.WARNING, process=self.process, signal=name)
                        os._exit(EXIT_COLD)
                if warm:
                    continue
                warm = True
                event(log, "shutdown_requested", process=self.process, signal=name)
                self.stop.set()
                for callback in self._on_warm:
                    try:
                        callback()
                    except Exception:  # the others still run; a second signal still exits
                        event(log, "warm_callback_failed", logging.ERROR, exc_info=True,
                              process=self.process)  # fmt: skip
