"""pcapd/core/lifecycle.py in a real process: the first signal is warm (the
process finishes its work and exits 0), the second is cold (exit 1 at once)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from pcapd.core.lifecycle import EXIT_COLD, EXIT_OK

PROGRAM = """
import logging, sys, time
from pcapd.core.lifecycle import StopSignals
from pcapd.core.logs import KeyValueFormatter
handler = logging.StreamHandler()
handler.setFormatter(KeyValueFormatter())
logging.basicConfig(level=logging.INFO, handlers=[handler])
warm = []
signals = StopSignals("test", on_warm=(lambda: warm.append(1),))
signals.install()
print("ready", flush=True)
signals.stop.wait()
print("warm", len(warm), flush=True)
time.sleep(float(sys.argv[1]))  # the flush a cold stop skips
print("flushed", flush=True)
"""


def start(flush_seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, str(flush_seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_first_signal_stops_warm() -> None:
    proc = start(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_OK
    assert out.splitlines() == ["warm 1", "flushed"]
    assert "shutdown_requested" in err and "signal=SIGTERM" in err


def test_second_signal_leaves_at_once() -> None:
    proc = start(60.0)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None and proc.stdout.readline() == "warm 1\n"
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == EXIT_COLD
    assert "flushed" not in out and time.monotonic() - began < 20
    assert "exit_now" in err
