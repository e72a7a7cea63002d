"""A storm of capture requests through each source of one `pcapd serve`: Redis
pub/sub, a Redis stream and SQS (moto_server), side by side.

For each source in turn, N requests are sent evenly over one second. Every
request captures one packet on `lo` with a BPF matching a UDP port that a
sender thread keeps busy, so a capture lasts a few milliseconds and what is
measured is the daemon: admission, sources, captures and result events.
The daemon holds `MAX_CONCURRENT` captures at once. Pub/sub has no
back-pressure, so what does not fit is rejected with a reason, as the issue
asks. The stream and SQS sources read only when a slot is free, so their
requests wait in Redis or the queue and are all served, later.

Printed per source: requests sent, accepted (a capture result), rejected (and
why), duplicates, requests with no result or with more than one; accepted
and rejected per second over the time from the first send to the last result;
end-to-end latency p50/p99 from send to result event; the daemon's CPU per
request sent (first send to last result). Each source's storm starts once
the daemon's start-up is over (it idles). Each other source is
also given as a ratio against the first (pub/sub by default: pcapdaemon's
only Redis source), measured in the same run against the same daemon. At
the end: the daemon's peak RSS and whether it survived the storm.

`--ring`: `lo` keeps a lookback ring (pcapd/ring/), so captures are served
from its one handle and open no socket (issue 14's target: >= 500 captures
started per second; each capture opening its own handle manages ~27).

Run as root (capturing on lo): `.venv/bin/python bench/trigger_storm.py [--quick] [-n N] [--ring]`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import redis
from benchlib import (
    BenchError,
    cpu_seconds,
    free_port,
    http_ok,
    proc_status_kb,
    process,
    redis_ok,
    require,
    stop_on_sigterm,
    wait_until,
)
from storm_report import Figures, report

from pcapd.client import fresh, seen_events
from pcapd.core.config import load_config
from pcapd.daemon import MEMORY_OVERHEAD, memory_bound
from triggers.redis_stream import publish_stream

REQUESTS = 600  # per source, sent within SEND_SECONDS
QUICK_REQUESTS = 200
SEND_SECONDS = 1.0
WARMUP = 5  # per source, not counted: connections, first handles
RESULT_WAIT = 90.0  # s after the last send for every result to arrive
READY_TIMEOUT = 20.0
MAX_CONCURRENT = 16
MAX_MEMORY = 32 * 1024 * 1024  # as in the storm (185 MB RSS then)
REQUEST_BYTES = 65_536  # per capture: memory is not the bound here, slots are
BLAST_PORT = 39_999
BLAST_SLEEP = 200e-6  # s between packets of the sender thread (~ a few k pps)
SETTLE = 3.0  # s after the storm before RSS is read again
# Before the storm the daemon's start-up is over (the SQS source makes its
# boto3 client, ~0.3 s of CPU, after pub/sub is subscribed): it uses less
# than IDLE_CPU of a core over IDLE_WINDOW, within IDLE_TIMEOUT.
IDLE_CPU = 0.15
IDLE_WINDOW = 0.5
IDLE_TIMEOUT = 30.0
SQS_BATCH = 10  # SendMessageBatch's limit
STREAM_MAXLEN = 100_000
REGION = "us-east-1"
KEY_ID, SECRET = "bench", "bench-secret"
NODE = "pcapd-storm"
CHANNEL = "pcapd-storm-capture"
STREAM = "pcapd-storm-requests"
RESULTS = "pcapd-storm-results"
CAPTURED = ("ok", "empty")
SOURCES = ("pubsub", "stream", "sqs")


RING = f"""lookback = 5
lookback_bytes = {8 * 1024 * 1024}
lookback_bpf = "udp and dst port {BLAST_PORT}"
"""


def write_config(
    path: Path, redis_port: int, queue_url: str, endpoint: str, out: Path, ring: bool
) -> None:
    path.write_text(
        f"""[general]
node = "{NODE}"
writelocal = true
localdir = "{out}"
max_concurrent = {MAX_CONCURRENT}
max_memory = {MAX_MEMORY}
maxbytes = {REQUEST_BYTES}
log_level = "warning"

[redis]
listen = true
port = {redis_port}
channel = "{CHANNEL}"
results_channel = "{RESULTS}"
stream_listen = true
stream = "{STREAM}"

[sqs]
listen = true
url = "{queue_url}"
endpoint = "{endpoint}"
region = "{REGION}"
accessid = "{KEY_ID}"
accesskey = "{SECRET}"
waitseconds = 20

[[interface]]
name = "lo"
"""
        + (RING if ring else "")
    )


@dataclass
class Results:
    """Result events by request id, with the time each arrived; a resent one
    (its event_id seen already) is not counted twice."""

    events: dict[str, list[tuple[float, dict[str, Any]]]] = field(
        default_factory=lambda: collections.defaultdict(list)
    )
    lock: threading.Lock = field(default_factory=threading.Lock)

    def listen(self, client: redis.Redis, stop: threading.Event, ready: threading.Event) -> None:
        pubsub = client.pubsub()
        pubsub.subscribe(RESULTS)
        ready.set()
        ids = seen_events()
        while not stop.is_set():
            message = pubsub.get_message(timeout=0.1)
            if not message or message.get("type") != "message":
                continue
            event = json.loads(message["data"])
            if not fresh(event, ids):
                continue
            with self.lock:
                self.events[str(event.get("id"))].append((time.monotonic(), event))
        pubsub.close()

    def first(self, request_id: str) -> tuple[float, dict[str, Any]] | None:
        with self.lock:
            got = self.events.get(request_id)
            return got[0] if got else None

    def count(self, request_id: str) -> int:
        with self.lock:
            return len(self.events.get(request_id, ()))


def blast(stop: threading.Event) -> None:
    """Keep packets flowing to BLAST_PORT so every capture ends on its first packet."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        while not stop.is_set():
            sock.sendto(b"storm", ("127.0.0.1", BLAST_PORT))
            time.sleep(BLAST_SLEEP)


def request_body(request_id: str) -> bytes:
    return json.dumps(
        {"id": request_id, "node": NODE, "interface": ["lo"], "packets": 1,
         "bytes": REQUEST_BYTES, "bpf": f"udp and dst port {BLAST_PORT}",
         "duration": 10, "timeout": 10}
    ).encode()  # fmt: skip


Sender = Callable[[list[bytes]], None]


def senders(client: redis.Redis, sqs: Any, queue_url: str) -> dict[str, tuple[Sender, int]]:
    """Per source: a function sending a group of bodies, and its group size."""

    def pubsub(bodies: list[bytes]) -> None:
        for body in bodies:
            client.publish(CHANNEL, body)

    def stream(bodies: list[bytes]) -> None:
        for body in bodies:
            publish_stream(client, STREAM, body, STREAM_MAXLEN)

    def sqs_send(bodies: list[bytes]) -> None:
        entries: Any = [{"Id": str(i), "MessageBody": b.decode()} for i, b in enumerate(bodies)]
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)

    return {"pubsub": (pubsub, 1), "stream": (stream, 1), "sqs": (sqs_send, SQS_BATCH)}


def wait_idle(pid: int) -> float:
    """Until the daemon's start-up is over: the CPU it used over the last
    IDLE_WINDOW, as a fraction of a core."""
    deadline = time.monotonic() + IDLE_TIMEOUT
    while True:
        before = cpu_seconds(pid)
        time.sleep(IDLE_WINDOW)
        busy = (cpu_seconds(pid) - before) / IDLE_WINDOW
        if busy < IDLE_CPU:
            return busy
        if time.monotonic() > deadline:
            raise BenchError(f"the daemon still used {busy:.2f} of a core {IDLE_TIMEOUT} s in")


def run_source(
    name: str, send: Sender, group: int, count: int, results: Results, wait: float, pid: int
) -> Figures:
    tag = uuid.uuid4().hex[:8]
    warm = [f"{name}-warm-{tag}-{i}" for i in range(WARMUP)]
    for request_id in warm:
        send([request_body(request_id)])
    wait_until(f"{name} warm-up results", lambda: all(results.first(i) for i in warm), wait)
    ids = [f"{name}-{tag}-{i}" for i in range(count)]
    sent_at: dict[str, float] = {}
    cpu_begin = cpu_seconds(pid)
    begin = time.monotonic()
    for start in range(0, count, group):
        due = begin + SEND_SECONDS * start / count
        time.sleep(max(0.0, due - time.monotonic()))
        chunk = ids[start : start + group]
        now = time.monotonic()
        send([request_body(i) for i in chunk])
        sent_at.update(dict.fromkeys(chunk, now))
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and not all(results.first(i) for i in ids):
        time.sleep(0.1)
    cpu = cpu_seconds(pid) - cpu_begin
    time.sleep(0.5)  # let any second result for a request show itself
    figures = Figures(name, count, 0, 0, 0, 0, 0, 0.0, [], collections.Counter(), cpu)
    last = begin
    for request_id in ids:
        got = results.first(request_id)
        if got is None:
            figures.missing += 1
            continue
        when, event = got
        last = max(last, when)
        figures.extra += results.count(request_id) > 1
        status = event.get("status")
        if status in CAPTURED:
            figures.accepted += 1
            figures.latencies.append((when - sent_at[request_id]) * 1000)
        elif status == "duplicate":
            figures.duplicate += 1
        else:
            figures.rejected += 1
            figures.reasons[f"{status}: {event.get('error')}"] += 1
    figures.span = last - begin
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_REQUESTS} per source")
    parser.add_argument("-n", "--requests", type=int, help=f"per source (default {REQUESTS})")
    parser.add_argument("--sources", default=",".join(SOURCES), help="comma list, in order")
    parser.add_argument("--ring", action="store_true", help="lo keeps a lookback ring")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("trigger_storm: needs root (capturing on lo)", file=sys.stderr)
        return 2
    try:
        moto = Path(require(("redis-server",), {"moto_server": "moto[server]"})["moto_server"])
    except BenchError as exc:
        print(f"trigger_storm: {exc}", file=sys.stderr)
        return 2
    stop_on_sigterm("trigger_storm")
    count = args.requests or (QUICK_REQUESTS if args.quick else REQUESTS)
    chosen = [s for s in args.sources.split(",") if s]
    if unknown := set(chosen) - set(SOURCES):
        parser.error(f"--sources: unknown {sorted(unknown)}; known {', '.join(SOURCES)}")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None  # fsync is not what is timed
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pcapd-storm-", dir=base) as tmp:
        work = Path(tmp)
        redis_port, moto_port = free_port(), free_port()
        client = redis.Redis(port=redis_port, socket_timeout=10)
        endpoint = f"http://127.0.0.1:{moto_port}"
        stop_threads = threading.Event()
        with (
            process(
                [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                 "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
                lambda: redis_ok(client), "redis-server", work / "redis.log",
            ),
            process(
                [str(moto), "-H", "127.0.0.1", "-p", str(moto_port)],
                lambda: http_ok(endpoint), "moto_server", work / "moto.log",
            ),
        ):  # fmt: skip
            sqs = boto3.client(
                "sqs", region_name=REGION, endpoint_url=endpoint,
                aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
            )  # fmt: skip
            queue_url = sqs.create_queue(QueueName="pcapd-storm")["QueueUrl"]
            config = work / "pcapd.toml"
            (work / "captures").mkdir()
            write_config(config, redis_port, queue_url, endpoint, work / "captures", args.ring)
            results = Results()
            listening = threading.Event()
            threads = [
                threading.Thread(target=results.listen, args=(client, stop_threads, listening)),
                threading.Thread(target=blast, args=(stop_threads,)),
            ]
            for thread in threads:
                thread.start()
            listening.wait(READY_TIMEOUT)

            def subscribed() -> bool:
                return int(dict(client.pubsub_numsub(CHANNEL)).get(CHANNEL.encode(), 0)) > 0

            try:
                with process(
                    [sys.executable, "-m", "pcapd", "serve", "-c", str(config)],
                    subscribed, "pcapd serve", work / "pcapd.log",
                ) as pid:  # fmt: skip
                    idle = proc_status_kb(pid, "VmRSS") * 1024
                    bound = memory_bound(load_config(str(config)), idle)
                    quiet = wait_idle(pid)
                    send = senders(client, sqs, queue_url)
                    figures = [
                        run_source(name, *send[name], count, results, RESULT_WAIT, pid)
                        for name in chosen
                    ]
                    alive = Path(f"/proc/{pid}").exists()
                    peak = proc_status_kb(pid, "VmHWM") * 1024
                    time.sleep(SETTLE)
                    after = proc_status_kb(pid, "VmRSS") * 1024
            finally:
                stop_threads.set()
                for thread in threads:
                    thread.join()
    print(f"{count} requests per source within {SEND_SECONDS:.0f} s; "
          f"max_concurrent={MAX_CONCURRENT}; {os.cpu_count()} CPUs; captures "
          f"{'from a lookback ring on lo' if args.ring else 'each on its own handle'}; "
          f"daemon at {quiet:.2f} of a core before the storm; load average "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    ok = report(figures)
    mb = 2**20
    print(f"daemon alive after the storm: {'yes' if alive else 'NO'}; RSS idle {idle / mb:.0f} MB, "
          f"peak {peak / mb:.0f} MB, {SETTLE:.0f} s after {after / mb:.0f} MB; "
          f"bound {bound / mb:.0f} MB = idle + max_memory {MAX_MEMORY // mb} + "
          f"pubsub_queue_bytes + overhead {MEMORY_OVERHEAD // mb}: "
          f"{'within' if peak <= bound else 'OVER'}")  # fmt: skip
    print(f"total {time.monotonic() - began:.0f} s")
    return 0 if ok and alive and peak <= bound else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"trigger_storm: {exc}", file=sys.stderr)
        sys.exit(2)
