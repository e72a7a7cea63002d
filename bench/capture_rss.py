"""The peak-RSS part of bench/trigger_latency.py: the daemon's VmHWM while it
holds one 200 MB capture, against 1.1 x the file + 40 MB.

/proc/PID/clear_refs resets VmHWM, one request with bytes=200_000_000 on `lo`
is fed large UDP datagrams until it stops, then VmHWM is compared with the
target. The daemon's config must allow it: `maxbytes = RSS_BYTES`,
`maxpackets = RSS_MAX_PACKETS`, `maxduration = RSS_DURATION`.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import redis
from benchlib import BenchError, proc_status_kb, result_waiter, ring_rss, wait_until

RSS_PORT = 29_999
RSS_BYTES = 200_000_000
RSS_TARGET_FACTOR = 1.1
RSS_TARGET_EXTRA = 40 * 1024 * 1024
RSS_DATAGRAM = 32_768  # payload per datagram on lo (MTU 65536: one packet each)
RSS_DURATION = 60
RSS_MAX_PACKETS = 1_000_000
READY_TIMEOUT = 15.0
RESULT_TIMEOUT = 5.0  # s for the result once the capture stopped


@dataclass(frozen=True, slots=True)
class RssFigures:
    baseline: int  # bytes, VmRSS before the request
    baseline_rings: int  # bytes of it in pcap's mmapped kernel rings
    peak: int  # bytes, VmHWM after it
    file_size: int
    stop: str
    packets: int

    @property
    def limit(self) -> float:
        return RSS_TARGET_FACTOR * self.file_size + RSS_TARGET_EXTRA


def measure_rss(
    client: redis.Redis, pid: int, *, node: str, channel: str, results: str
) -> RssFigures:
    """One 200 MB request to the daemon `pid` (subscribed to `channel`, as
    `node`, its results on `results`), fed until it stops."""
    pubsub = client.pubsub()
    pubsub.subscribe(results)
    wait_until("results subscription", lambda: pubsub.get_message(timeout=0.1), READY_TIMEOUT)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    baseline = proc_status_kb(pid, "VmRSS") * 1024
    rings = ring_rss(pid)
    request_id = uuid.uuid4().hex
    client.publish(
        channel,
        json.dumps(
            {"id": request_id, "node": node, "interface": "lo", "bytes": RSS_BYTES,
             "packets": RSS_MAX_PACKETS, "bpf": f"udp and dst port {RSS_PORT}",
             "duration": RSS_DURATION, "timeout": 10}
        ),
    )  # fmt: skip
    finished = threading.Event()

    def send() -> None:
        payload = b"\xab" * RSS_DATAGRAM
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not finished.is_set():
                sock.sendto(payload, ("127.0.0.1", RSS_PORT))
                time.sleep(0)  # let the daemon's reader keep up a little

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    done, got = result_waiter(pubsub, request_id, RESULT_TIMEOUT)
    deadline = time.monotonic() + RSS_DURATION + 30
    while not got and time.monotonic() < deadline:
        if done():
            break
        time.sleep(0.01)
    finished.set()
    sender.join()
    pubsub.close()
    if got.get("status") != "ok":
        raise BenchError(f"200 MB capture: {got.get('status', 'no result')} {got.get('error')}")
    peak = proc_status_kb(pid, "VmHWM") * 1024
    path = Path(got["locations"]["local"])
    size = path.stat().st_size
    path.unlink()
    return RssFigures(baseline, rings, peak, size, got["stop"], got["packets"])


# -- report ----------------------------------------------------------------------------
def report_rss(rss: RssFigures) -> bool:
    mib = 1024 * 1024
    met = rss.peak <= rss.limit
    print(f"peak RSS holding a {rss.file_size / 1e6:.1f} MB capture ({rss.packets} packets, "
          f"stop={rss.stop}): {rss.peak / mib:.1f} MiB")  # fmt: skip
    print(f"  idle before: {rss.baseline / mib:.1f} MiB, of which kernel capture rings "
          f"{rss.baseline_rings / mib:.1f} MiB; growth {(rss.peak - rss.baseline) / mib:.1f} MiB "
          f"= {(rss.peak - rss.baseline) / rss.file_size:.3f} x file")  # fmt: skip
    print(f"  target <= 1.1 x file + 40 MiB = {rss.limit / mib:.1f} MiB: "
          f"{'met' if met else 'MISSED'} (peak/file {rss.peak / rss.file_size:.3f})")  # fmt: skip
    return met
