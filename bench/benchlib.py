"""What the benchmark scripts share: ports, waiting, ending what they started.

Each script still runs alone (`python bench/x.py`): Python puts the script's
own directory first on sys.path, so `import benchlib` finds this file.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

STOP_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 20.0  # seconds for a server the script starts to answer


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


def internet_checksum(data: bytes) -> int:
    """The one's-complement sum of RFC 1071 (IPv4 header, UDP with its
    pseudo-header), in host order, ready for struct "!H"."""
    if len(data) % 2:
        data += b"\0"
    total = sum(memoryview(data).cast("H"))  # native order; swapped back below
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return socket.ntohs(~total & 0xFFFF)


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
            sh("ip", "-n", ns, "link", "set", "lo", "up")
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


@contextlib.contextmanager
def redis_server(workdir: Path, timeout: float = READY_TIMEOUT) -> Iterator[redis.Redis]:
    """A private redis-server on a free loopback port, and a client of it."""
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
         "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=10)

    def ping() -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    try:
        wait_until("redis-server", ping, timeout)
        yield client
    finally:
        client.close()
        stop(proc)


@contextlib.contextmanager
def redis_cluster(workdir: Path, size: int = 3) -> Iterator[str]:
    """A Redis Cluster of `size` primaries (no replicas) on free loopback
    ports, started as the tests start theirs (tests/helpers.py); yields the
    seed URL pcapd takes (`redis+cluster://`)."""
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from tests.helpers import RedisCluster

    cluster = RedisCluster(workdir / "cluster", size=size)
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


@contextlib.contextmanager
def process(
    args: list[str], ready: Callable[[], bool], what: str, log: Path, timeout: float = READY_TIMEOUT
) -> Iterator[int]:
    """Start `args` (output to `log`), wait until `ready()`, yield its pid, stop it.
    It runs in the tree of the `pcapd` this bench imports (`PYTHONPATH`
    honoured): `python -m pcapd` takes the package from its working
    directory first, so a bench run from one tree against another's code
    would otherwise start this tree's daemon."""
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=code_tree())
        try:

            def up() -> bool:
                if proc.poll() is not None:
                    tail = log.read_text(errors="replace").strip().splitlines()[-5:]
                    raise BenchError(f"{what} exited {proc.returncode}: " + " | ".join(tail))
                return ready()

            wait_until(what, up, timeout)
            yield proc.pid
        finally:
            stop(proc)


def code_tree() -> Path:
    """The directory holding the `pcapd` package this process would import."""
    spec = importlib.util.find_spec("pcapd")
    if spec is None or spec.origin is None:
        raise BenchError("pcapd is not importable: run from the repository or set PYTHONPATH")
    return Path(spec.origin).resolve().parent.parent


def redis_ok(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def http_ok(url: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1):
            return True
    except OSError:
        return False


def ring_rss(pid: int) -> int:
    """Resident bytes of packet-socket mappings (libpcap's TPACKET rings)."""
    total = 0
    in_ring = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and "-" in parts[0] and not parts[0].endswith(":"):
            in_ring = len(parts) > 5 and parts[5].startswith("socket:")
        elif in_ring and parts and parts[0] == "Rss:":
            total += int(parts[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """user + system time of a live process, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def metric_value(url: str, name: str) -> float:
    """The value of one unlabelled series (`name`, e.g. a histogram's
    `..._sum`) on a Prometheus text page at `url`."""
    with urllib.request.urlopen(url, timeout=10) as page:
        text = page.read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise BenchError(f"{url}: no {name}")


def summary(name: str, values: list[float]) -> str:
    """One line of latency percentiles, in ms."""
    return (
        f"{name}: n={len(values)} p50={percentile(values, 0.5):.2f} ms "
        f"p90={percentile(values, 0.9):.2f} ms p99={percentile(values, 0.99):.2f} ms "
        f"max={max(values):.2f} ms mean={statistics.fmean(values):.2f} ms"
    )


def result_waiter(
    pubsub: Any, request_id: str, timeout: float
) -> tuple[Callable[[], bool], dict[str, Any]]:
    """done() that is true once `request_id`'s result event came on `pubsub`
    (or `timeout` passed: then the dict holds timeout=True), and that dict."""
    got: dict[str, Any] = {}
    deadline = time.monotonic() + timeout

    def done() -> bool:
        if time.monotonic() > deadline:
            got["timeout"] = True
            return True
        message = pubsub.get_message(timeout=0)
        if message and message.get("type") == "message":
            event = json.loads(message["data"])
            if event.get("id") == request_id:
                got.update(event)
                return True
        return False

    return done, got


def peer_figures(tcpdump: subprocess.Popen[bytes], replay_stdout: str) -> tuple[float, int, int]:
    """After tcpdump (stopped) and tcpreplay: the rate tcpreplay reached (pps,
    nan if it printed none) and tcpdump's received and dropped counts (-1 if
    absent)."""
    assert tcpdump.stderr is not None
    err = tcpdump.stderr.read().decode()
    tcpdump.stderr.close()
    sent = re.search(r"Rated: [\d.]+ Bps, [\d.]+ Mbps, ([\d.]+) pps", replay_stdout)
    seen = re.search(r"(\d+) packets received by filter", err)
    dropped = re.search(r"(\d+) packets dropped by kernel", err)
    return (
        float(sent.group(1)) if sent else float("nan"),
        int(seen.group(1)) if seen else -1,
        int(dropped.group(1)) if dropped else -1,
    )
