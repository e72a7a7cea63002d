"""What the benchmark scripts share: ports, waiting, ending what they started.

Each script still runs alone (`python bench/x.py`): Python puts the script's
own directory first on sys.path, so `import benchlib` finds this file.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

STOP_TIMEOUT = 30.0


class BenchError(Exception):
    """The setup failed; the message says which part."""


def require(
    tools: Sequence[str] = (), python_peers: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Paths of the programs a benchmark runs, or BenchError naming each missing one.

    A figure without its peer is not the ratio it claims, so a missing peer
    fails the run instead of skipping it. `tools` are looked up on PATH
    (system packages, `make setup`); `python_peers` (console script -> pip
    requirement) next to this interpreter, where `pip install -e '.[bench]'`
    puts them.
    """
    found: dict[str, str] = {}
    missing: list[str] = []
    for tool in tools:
        path = shutil.which(tool)
        if path is None:
            missing.append(f"{tool} (not on PATH; `make setup` installs it)")
        else:
            found[tool] = path
    here = str(Path(sys.executable).parent)
    for script, requirement in (python_peers or {}).items():
        path = shutil.which(script, path=here)
        if path is None:
            missing.append(f"{script} (pip install '{requirement}', or -e '.[bench]')")
        else:
            found[script] = path
    if missing:
        raise BenchError("missing " + "; ".join(missing))
    return found


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


def sh(*args: str, check: bool = True) -> None:
    subprocess.run(args, check=check, capture_output=True)


@contextlib.contextmanager
def veth_namespaces(prefix: str, subnet: int) -> Iterator[tuple[str, str, str, str]]:
    """(ns_a, ns_b, dev_a, dev_b): two namespaces of this run joined by a veth
    pair, 10.200.`subnet`.1 and .2; deleted on the way out."""
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"{prefix}-a-{tag}", f"{prefix}-b-{tag}"
    dev_a, dev_b = f"{prefix[:3]}a{tag}", f"{prefix[:3]}b{tag}"
    sh("ip", "netns", "add", ns_a)
    sh("ip", "netns", "add", ns_b)
    try:
        sh("ip", "link", "add", dev_a, "netns", ns_a, "type", "veth", "peer", "name", dev_b,
           "netns", ns_b)  # fmt: skip
        for ns, dev, host in ((ns_a, dev_a, 1), (ns_b, dev_b, 2)):
            sh("ip", "-n", ns, "addr", "add", f"10.200.{subnet}.{host}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield ns_a, ns_b, dev_a, dev_b
    finally:
        sh("ip", "netns", "del", ns_a, check=False)
        sh("ip", "netns", "del", ns_b, check=False)


def stop_on_sigterm(script: str) -> None:
    """SIGTERM raises SystemExit, so the script's finally blocks end what it
    started (servers, namespaces) instead of leaving them behind."""

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(f"{script}: stopped by signal {signum}")

    signal.signal(signal.SIGTERM, terminate)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value `fraction` of the way up `values` (0.0 when there are none)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


def proc_status_kb(pid: int, field: str) -> int:
    """A /proc/<pid>/status figure in kB (VmRSS now, VmHWM the peak); 0 if absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0
