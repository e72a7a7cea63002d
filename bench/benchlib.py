"""What the benchmark scripts share: ports, waiting, ending what they started.

Each script still runs alone (`python bench/x.py`): Python puts the script's
own directory first on sys.path, so `import benchlib` finds this file.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable

STOP_TIMEOUT = 30.0


class BenchError(Exception):
    """The setup failed; the message says which part."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(what: str, predicate: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise BenchError(f"{what}: not ready within {timeout} s")


def stop(
    proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT
) -> None:
    """End a process this script started: `sig`, then SIGKILL after `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
