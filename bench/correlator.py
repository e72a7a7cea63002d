"""Correlator reads on a big Redis, beside a naive KEYS-based reader.

A private redis-server is filled through agents/store.py's RedisWriter (with
the per-client index) with CLIENTS clients of KEYS_PER_CLIENT keys each
(~2M keys at the defaults). Then, in the same run:

- ours: the clients page (one bounded SCAN page of 50 clients with their
  counts), a client view (index, MGET, chains built), a pivot (who talked to
  an address:port, one bounded SCAN page);
- naive, as ShoDoHFlo's app reads: KEYS client;* + MGET; KEYS <client>;* +
  a GET per key; KEYS *;<address>;<port>;flow + GETs.

Each reports p50/p95 latency, the Redis CPU per request (INFO used_cpu_*),
and SLOWLOG entries over 10 ms (commands that blocked every other client).

    .venv/bin/python bench/correlator.py               # 100k clients, ~2M keys
    .venv/bin/python bench/correlator.py --clients 5000 --naive-requests 200
"""

from __future__ import annotations

import argparse
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
from agents.reader import StoreReader  # noqa: E402
from agents.redis_writer import RedisWriter  # noqa: E402
from pcapd.core.config import parse_config  # noqa: E402
from pcapd.correlator.service import Correlator, clients_query  # noqa: E402

CLIENTS = 100_000
KEYS_PER_CLIENT = 20
SERVICES = 5_000
REQUESTS = 200
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


def measure(
    name: str, r: redis.Redis, requests: int, call: Callable[[int], object]
) -> dict[str, Any]:
    r.slowlog_reset()
    r.config_resetstat()
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
        cursors = [0]

        def clients_page(i: int) -> object:
            page = correlator.clients(clients_query({"cursor": str(cursors[-1])}, config))
            cursors.append(page["cursor"])
            return page

        pivot_reader = StoreReader(r, budget=20_000)
        results = [
            measure("clients page", r, args.requests, clients_page),
            measure("client view", r, args.requests, lambda i: correlator.client_view(picks[i])),
            measure(
                "pivot (20k-key page)",
                r,
                args.requests,
                lambda i: pivot_reader.talkers_to(*flows[i]),
            ),
            measure("naive clients page", r, args.naive_requests, lambda i: naive_clients(r)),
            measure(
                "naive client view", r, args.naive_requests, lambda i: naive_client(r, picks[i])
            ),
            measure("naive pivot", r, args.naive_requests, lambda i: naive_pivot(r, *flows[i])),
        ]
        print(f"\n{'read':<22} {'n':>4} {'p50 ms':>8} {'p95 ms':>8} {'redis cpu ms':>12} "
              f"{'cmds>10ms':>9} {'worst cmd ms':>12} {'slowest kind, mean ms':>22}")  # fmt: skip
        for x in results:
            print(f"{x['name']:<22} {x['n']:>4} {x['p50']:>8.1f} {x['p95']:>8.1f} "
                  f"{x['cpu_ms']:>12.2f} {x['slow']:>9} {x['worst_ms']:>12.1f} "
                  f"{x['mean_cmd']:>22} {','.join(x['kinds'])}")  # fmt: skip
        ours = {x["name"]: x for x in results[:3]}
        naive = {x["name"].removeprefix("naive "): x for x in results[3:]}
        print("\nnaive / ours, p50:", ", ".join(
            f"{k} {naive[k.split(' (')[0]]['p50'] / ours[k]['p50']:.0f}x" for k in ours
        ))  # fmt: skip
        ok = (ours["client view"]["p95"] <= 100 and ours["clients page"]["p95"] <= 300
              and all(x["slow"] == 0 for x in ours.values()))  # fmt: skip
        print("targets (client view p95 <= 100 ms, clients page p95 <= 300 ms, no command "
              f"over 10 ms): {'met' if ok else 'NOT met'}")  # fmt: skip
        return 0 if ok else 1
    finally:
        stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)


def _ping(r: redis.Redis) -> bool:
    try:
        return bool(r.ping())
    except redis.RedisError:
        return False


if __name__ == "__main__":
    raise SystemExit(main())
