"""pcapd/core/lifecycle.py in a real process: the first signal is warm (the
process finishes its work and exits 0), the second is cold (exit 1 at once)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from pcapd.core.lifecycle import EXIT_COLD, EXIT_OK

# Each program's start: StopSignals, its lines logged as the daemon logs them.
LOGGED = """
import logging, signal, sys, time
from pcapd.core.lifecycle import StopSignals
from pcapd.core.logs import KeyValueFormatter
handler = logging.StreamHandler()
handler.setFormatter(KeyValueFormatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])
"""

PROGRAM = (
    LOGGED
    + """
warm = []
signals = StopSignals("test", on_warm=(lambda: warm.append(1),))
signals.install()
print("ready", flush=True)
signals.stop.wait()
print("warm", len(warm), flush=True)
time.sleep(float(sys.argv[1]))  # the flush a cold stop skips
print("flushed", flush=True)
"""
)

# The signal lands while the main thread holds the stop event's own lock, as
# it does for an instant inside every `stop.wait(timeout)` of a serving loop.
SIGNALLED_INSIDE_WAIT = """
import os, signal, sys, time
from pcapd.core.lifecycle import StopSignals
signals = StopSignals("test")
signals.install()
with getattr(signals.stop, "_cond"):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
print("stopped", signals.stop.wait(10), flush=True)
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:  # a test that failed leaves none running
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def start(started: list[subprocess.Popen[str]], program: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", program, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    started.append(proc)
    return proc


def start_ready(
    started: list[subprocess.Popen[str]], flush_seconds: float
) -> subprocess.Popen[str]:
    proc = start(started, PROGRAM, str(flush_seconds))
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_first_signal_stops_warm(processes: list[subprocess.Popen[str]]) -> None:
    proc = start_ready(processes, 0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_OK
    assert out.splitlines() == ["warm 1", "flushed"]
    assert "shutdown_requested" in err and "signal=SIGTERM" in err


def test_second_signal_leaves_at_once(processes: list[subprocess.Popen[str]]) -> None:
    proc = start_ready(processes, 60.0)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None and proc.stdout.readline() == "warm 1\n"
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_COLD
    assert "flushed" not in out and time.monotonic() - began < 20
    assert "exit_now" in err


def test_a_signal_while_the_main_thread_holds_the_stop_lock_still_stops_warm(
    processes: list[subprocess.Popen[str]],
) -> None:
    # Setting the event in the handler itself deadlocked here: the handler ran
    # in the thread holding the lock it needed.
    proc = start(processes, SIGNALLED_INSIDE_WAIT)
    out, err = proc.communicate(timeout=20)
    assert (proc.returncode, out) == (EXIT_OK, "stopped True\n"), err


# One callback raises; the next still runs, and a second signal still exits.
RAISING_CALLBACK = (
    LOGGED
    + """
def boom():
    raise RuntimeError("loop closed")
after = []
signals = StopSignals("test", on_warm=(boom, lambda: after.append(1)))
signals.install()
signals.install()  # a second install adds no second reader
print("ready", flush=True)
signals.stop.wait()
while not after:  # the callbacks run after stop is set
    time.sleep(0.01)
print("after", len(after), flush=True)
time.sleep(60)
"""
)


def test_a_raising_warm_callback_is_logged_and_the_next_signal_still_leaves_at_once(
    processes: list[subprocess.Popen[str]],
) -> None:
    proc = start(processes, RAISING_CALLBACK)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "after 1\n"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_COLD
    assert err.count("shutdown_requested") == 1 and "exit_now" in err
    assert "warm_callback_failed" in err and "RuntimeError: loop closed" in err


# A supervisor's passed-on stop (SIGUSR1, warm_only) after the process had
# its own SIGTERM: still warm; a second SIGTERM is the cold one.
WARM_ONLY = (
    LOGGED
    + """
signals = StopSignals("test", warm_only=(signal.SIGUSR1,))
signals.install()
print("ready", flush=True)
signals.stop.wait()
print("warm", flush=True)
time.sleep(60)
"""
)


def test_a_warm_only_signal_never_counts_toward_the_cold_exit(
    processes: list[subprocess.Popen[str]],
) -> None:
    proc = start(processes, WARM_ONLY)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.stdout.readline() == "warm\n"
    for _ in range(3):  # the supervisor's, as often as it may come
        proc.send_signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert proc.poll() is None  # still flushing
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_COLD
    assert err.count("shutdown_requested") == 1 and "exit_now" in err
