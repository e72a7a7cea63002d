"""Correlator reads on a big Redis, beside a naive KEYS-based reader.

A private redis-server is filled through agents/store.py's RedisWriter (with
the per-client index) with CLIENTS clients of KEYS_PER_CLIENT keys each
(~2M keys at the defaults). Then, in the same run:

- ours, through the correlator's service with the default [correlator]
  bounds: the clients page (one bounded SCAN page of 50 clients with their
  counts), a client view (index, MGET, chains built), and both pivots (who
  talked to an address:port, who resolved a name), each request one bounded
  page that follows the cursor of the one before, as "More" does;
- naive, as ShoDoHFlo's app reads: KEYS client;* + MGET; KEYS <client>;* +
  a GET per key; KEYS *;<address>;<port>;flow + GETs.

Each reports p50/p95 latency, the Redis CPU per request (INFO used_cpu_*),
SLOWLOG entries over 10 ms and the longest (commands that blocked every
other client), and what another client saw meanwhile: a probe process that
PINGs every millisecond reports its worst round trip. An idle row (the probe
alone, nothing else asking Redis) is the machine's own floor.

    .venv/bin/python bench/correlator.py               # 100k clients, ~2M keys
    .venv/bin/python bench/correlator.py --clients 5000 --naive-requests 200
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from benchlib import free_port, stop, wait_until

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents import store  # noqa: E402
from agents.redis_writer import RedisWriter  # noqa: E402
from pcapd.core.config import parse_config  # noqa: E402
from pcapd.correlator.service import Correlator, clients_query  # noqa: E402

CLIENTS = 100_000
KEYS_PER_CLIENT = 20
SERVICES = 5_000
REQUESTS = 200
PIVOT_REQUESTS = 50  # pages of up to scan_budget keys / scan_seconds each
IDLE_SECONDS = 10.0
PROBE_INTERVAL = 0.001
NAIVE_REQUESTS = 20  # each naive request walks all ~2M keys in one command
SLOW_US = 10_000  # SLOWLOG threshold: 10 ms
QUEUE_HIGH = 100_000  # producer waits while the writer holds this many ops


def service(n: int) -> str:
    return f"198.{18 + n // 65536}.{(n // 256) % 256}.{n % 256}"


def client_address(n: int) -> str:
    return f"10.{n // 65536}.{(n // 256) % 256}.{n % 256}"


def fill(writer: RedisWriter, clients: int, rng: random.Random) -> None:
    """KEYS_PER_CLIENT keys per client: counter, 4 dns, 2 cname, 1 nx, 8 flows,
    2 peers, 1 rst, 1 icmp."""
    for n in range(clients):
        c = client_address(n)
        writer.incr(store.client_key(c))
        names = [f"h{rng.randrange(50_000)}.example{n % 97}.test." for _ in range(4)]
        for name in names:
            writer.append(store.dns_key(c, service(rng.randrange(SERVICES))), name)
        writer.append(store.cname_key(c, names[0]), f"www{n % 1000}.example.test.")
        writer.append(store.cname_key(c, names[1]), f"cdn{n % 1000}.example.test.")
        writer.incr(store.nx_key(c, f"nx{n}.example.test."))
        for _ in range(8):
            writer.incr(
                store.flow_key(c, service(rng.randrange(SERVICES)), rng.choice((443, 80, 853)))
            )
        for _ in range(2):
            writer.incr(store.peer_key(c, service(rng.randrange(SERVICES))))
        writer.incr(store.rst_key(c, service(rng.randrange(SERVICES)), 40000, 22))
        writer.incr(store.icmp_key(c, service(rng.randrange(SERVICES)), 40001, 7777, 3))
        while writer.queue_depth > QUEUE_HIGH:
            time.sleep(0.01)


def redis_cpu(r: redis.Redis) -> float:
    info: Any = r.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def command_time(r: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per command: (calls, microseconds spent) since the last CONFIG RESETSTAT."""
    stats: Any = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"]))
            for name, v in stats.items()}  # fmt: skip


def probe(port: int, worst_us: Any, stop_flag: Any) -> None:
    """Another Redis client: PING every PROBE_INTERVAL, keep the worst round trip."""
    r = redis.Redis(port=port, socket_timeout=60)
    while not stop_flag.value:
        start = time.perf_counter()
        r.ping()
        took = int((time.perf_counter() - start) * 1e6)
        if took > worst_us.value:
            worst_us.value = took
        time.sleep(PROBE_INTERVAL)


class Probe:
    """The probe process; `worst_ms()` since the last `reset()`."""

    def __init__(self, port: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._worst = context.Value("q", 0)
        self._stop = context.Value("b", 0)
        self._proc = context.Process(target=probe, args=(port, self._worst, self._stop))
        self._proc.start()

    def reset(self) -> None:
        self._worst.value = 0

    def worst_ms(self) -> float:
        return float(self._worst.value) / 1000

    def close(self) -> None:
        self._stop.value = 1
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()


def measure(
    name: str, r: redis.Redis, requests: int, call: Callable[[int], object], watch: Probe
) -> dict[str, Any]:
    r.slowlog_reset()
    r.config_resetstat()
    watch.reset()
    cpu0 = redis_cpu(r)
    times = []
    for i in range(requests):
        start = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - start) * 1000)
    cpu = (redis_cpu(r) - cpu0) / requests * 1000
    slow: Any = r.slowlog_get(1024)
    worst = max((entry["duration"] for entry in slow), default=0) / 1000
    kinds = sorted({_command_name(entry) for entry in slow})
    per_call = {k: usec / calls for k, (calls, usec) in command_time(r).items()
                if calls and k.split("|")[0] not in ("info", "slowlog", "config")}  # fmt: skip
    heaviest = max(per_call, key=lambda k: per_call[k], default="-")
    times.sort()
    return {
        "name": name, "p50": statistics.median(times),
        "p95": times[min(len(times) - 1, int(len(times) * 0.95))],
        "cpu_ms": cpu, "slow": len(slow), "worst_ms": worst, "n": requests, "kinds": kinds,
        "mean_cmd": f"{heaviest} {per_call.get(heaviest, 0) / 1000:.2f}",
        "probe_ms": watch.worst_ms(),
        "calls": sum(calls for k, (calls, _) in command_time(r).items()
                     if k.split("|")[0] not in ("info", "slowlog", "config", "ping")),
    }  # fmt: skip


def _command_name(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    text = command.decode() if isinstance(command, bytes) else str(command)
    return text.split(" ", 1)[0].upper()


KINDS = (";dns", ";cname", ";nx", ";flow")  # what ShoDoHFlo's app GETs


def naive_client(r: redis.Redis, client: str) -> list[Any]:
    keys: list[bytes] = r.keys(f"{client};*")  # type: ignore[assignment]
    return [r.get(k) for k in keys if k.decode().endswith(KINDS)]


def naive_clients(r: redis.Redis) -> list[Any]:
    keys = r.keys("client;*")
    return list(r.mget(keys[:50])) if keys else []


def naive_pivot(r: redis.Redis, address: str, port: int) -> list[Any]:
    return [r.get(k) for k in r.keys(f"*;{address};{port};flow")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--pivot-requests", type=int, default=PIVOT_REQUESTS)
    parser.add_argument("--naive-requests", type=int, default=NAIVE_REQUESTS)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-correlator-"))
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--slowlog-log-slower-than", str(SLOW_US), "--slowlog-max-len", "1024"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        r = redis.Redis(port=port, socket_timeout=60)
        wait_until("redis-server", lambda: _ping(r), 10)
        rng = random.Random(13)
        url = f"redis://127.0.0.1:{port}/0"
        writer = RedisWriter(lambda: redis.Redis.from_url(url, socket_timeout=60),
                                   index=True, max_queue_ops=4 * QUEUE_HIGH)  # fmt: skip
        writer.start()
        r.slowlog_reset()
        start = time.monotonic()
        fill(writer, args.clients, rng)
        writer.stop(timeout=600)
        filled = time.monotonic() - start
        keys = int(r.dbsize())
        write_slow: Any = r.slowlog_get(1024)
        memory: Any = r.info("memory")
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"filled {args.clients} clients, {keys} keys (with {args.clients} index sets) in "
              f"{filled:.0f} s; used_memory {memory['used_memory_human']}; writer batches over "
              f"10 ms: {len(write_slow)} (worst "
              f"{max((e['duration'] for e in write_slow), default=0) / 1000:.1f} ms); "
              f"dropped {writer.stats.dropped_ops}")  # fmt: skip
        config = parse_config({"redis": {"port": port}})
        correlator = Correlator(r, config)
        picks = [client_address(rng.randrange(args.clients)) for _ in range(args.requests)]
        flows = [(service(rng.randrange(SERVICES)), 443) for _ in range(args.requests)]
        names = [f"h{rng.randrange(50_000)}.example{rng.randrange(97)}.test."
                 for _ in range(args.pivot_requests)]  # fmt: skip
        cursors = [0]

        def clients_page(i: int) -> object:
            page = correlator.clients(clients_query({"cursor": str(cursors[-1])}, config))
            cursors.append(page["cursor"])
            return page

        walks: dict[str, Walks] = {"address": Walks(), "name": Walks()}

        def pivot_address(i: int) -> object:
            walk = walks["address"]
            address, port = flows[walk.target]
            return walk.page(lambda c: correlator.who_talked(address, str(port), str(c)))

        def pivot_name(i: int) -> object:
            walk = walks["name"]
            return walk.page(lambda c: correlator.who_resolved(names[walk.target], str(c)))

        watch = Probe(port)
        try:
            idle = measure("idle (probe only)", r, 1, lambda i: time.sleep(IDLE_SECONDS), watch)
            results = [
                measure("clients page", r, args.requests, clients_page, watch),
                measure("client view", r, args.requests,
                        lambda i: correlator.client_view(picks[i]), watch),
                measure("pivot address", r, args.pivot_requests, pivot_address, watch),
                measure("pivot name", r, args.pivot_requests, pivot_name, watch),
                measure("naive clients page", r, args.naive_requests,
                        lambda i: naive_clients(r), watch),
                measure("naive client view", r, args.naive_requests,
                        lambda i: naive_client(r, picks[i]), watch),
                measure("naive pivot address", r, args.naive_requests,
                        lambda i: naive_pivot(r, *flows[i]), watch),
            ]  # fmt: skip
        finally:
            watch.close()
        c = config.correlator
        print(f"bounds: scan_count {c.scan_count}, scan_budget {c.scan_budget}, scan_seconds "
              f"{c.scan_seconds}, keys_per_command {c.keys_per_command}, keys_per_pipeline "
              f"{c.keys_per_pipeline}")  # fmt: skip
        print(f"\n{'read':<20} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'redis cpu ms':>12} "
              f"{'commands':>9} {'>10ms':>5} {'worst cmd ms':>12} {'probe worst ms':>14} "
              f"{'slowest kind, mean ms':>22}")  # fmt: skip
        for x in [idle, *results]:
            print(f"{x['name']:<20} {x['n']:>4} {x['p50']:>8.1f} {x['p95']:>8.1f} "
                  f"{x['cpu_ms']:>12.2f} {x['calls']:>9} {x['slow']:>5} {x['worst_ms']:>12.1f} "
                  f"{x['probe_ms']:>14.1f} {x['mean_cmd']:>22} {','.join(x['kinds'])}")  # fmt: skip
        for kind, walk in walks.items():
            print(
                f"pivot {kind}: {len(walk.done)} full walks of the keyspace, "
                f"{summary_of(walk.done, 'pages')}, {summary_of(walk.seconds, 's')} each"
            )
        ours = {x["name"]: x for x in results[:4]}
        naive = {x["name"].removeprefix("naive "): x for x in results[4:]}
        full_walk = statistics.median(walks["address"].seconds or [math.nan]) * 1000
        print("\nnaive / ours, p50: " + ", ".join(
            f"{k} {naive[k]['p50'] / ours[k]['p50']:.0f}x" for k in naive
        ) + f"; naive pivot / our full walk of every page: "
            f"{naive['pivot address']['p50'] / full_walk:.2f}x ({full_walk:.0f} ms)")  # fmt: skip
        ok = (ours["client view"]["p95"] <= 100 and ours["clients page"]["p95"] <= 300
              and all(x["slow"] == 0 for x in ours.values()))  # fmt: skip
        print("targets (client view p95 <= 100 ms, clients page p95 <= 300 ms, no command "
              f"over 10 ms): {'met' if ok else 'NOT met'}")  # fmt: skip
        return 0 if ok else 1
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


class Walks:
    """A pivot paged as a person pressing "More": each page goes on from the
    last cursor; at cursor 0 the walk is done and the next target starts."""

    def __init__(self) -> None:
        self.cursor = 0
        self.target = 0
        self.pages = 0
        self.started = time.perf_counter()
        self.done: list[float] = []  # pages per full walk
        self.seconds: list[float] = []

    def page(self, read: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        if self.pages == 0:
            self.started = time.perf_counter()
        found = read(self.cursor)
        self.pages += 1
        self.cursor = found["cursor"]
        if self.cursor == 0:
            self.done.append(self.pages)
            self.seconds.append(time.perf_counter() - self.started)
            self.pages, self.target = 0, self.target + 1
        return found


def summary_of(values: list[float], unit: str) -> str:
    if not values:
        return f"- {unit}"
    return f"median {statistics.median(values):.1f} {unit} (max {max(values):.1f})"


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
