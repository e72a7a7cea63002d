"""Upload throughput and peak memory: pcapd's S3Uploader against a naive peer.

Starts `moto_server` on a free loopback port (a separate process, so its
memory is not counted), then runs each variant in a fresh child process:
100 captures of 1 MiB, then one of 200 MiB. Prints MB/s and the child's peak
RSS against the largest capture. Target (issue 3): peak RSS <= 1.2 x the
largest capture + 60 MiB, i.e. the capture is not copied again for upload.

  pcapd  S3Uploader: PutObject / multipart parts straight from the capture's buffer
  wal    pcapd's whole hand-off: Deliverer with a spool, so each capture is
         written ahead (data + sidecar, fsynced, renamed) before the upload
         and removed after it; the spool is on the disk under /tmp
  peer   what a straightforward port does: put_object(Body=bytes(capture))
  boto3  boto3's managed transfer: upload_fileobj(io.BytesIO(capture)), 8 MiB parts

The write-ahead cost per capture is the difference of the 1 MiB times of
wal and pcapd, in the same run.

moto assembles multipart uploads slowly, so on loopback a single PutObject
(peer) often has the higher large-file MB/s; boto3 is the like-for-like peer.

Usage: .venv/bin/python bench/upload.py [--large-mib 200] [--small 100]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchlib import BenchError, free_port, require

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
SMALL_SIZE = 1 * MIB
TARGET_FACTOR = 1.2
TARGET_SLACK_MIB = 60
STARTUP_TIMEOUT = 30.0
KEY_ID, SECRET = "AKIABENCH", "bench-secret"
VARIANTS = ("pcapd", "wal", "peer", "boto3")


def rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def capture(size: int) -> bytearray:
    """Pseudo-random, incompressible bytes, built without a second full copy."""
    data = bytearray(size)
    block = os.urandom(MIB)
    for offset in range(0, size, MIB):
        chunk = block[: min(MIB, size - offset)]
        data[offset : offset + len(chunk)] = chunk
    return data


def child(variant: str, endpoint: str, bucket: str, small: int, large_mib: int) -> None:
    from boto3.s3.transfer import TransferConfig

    from pcapd.core.config import S3Config
    from pcapd.core.request import CaptureRequest
    from pcapd.core.secret import Secret
    from uploaders.base import Artifact
    from uploaders.deliver import Deliverer
    from uploaders.retry import RetryPolicy
    from uploaders.s3 import S3Uploader, boto3_client_factory
    from uploaders.spool import Spool

    config = S3Config(
        upload=True, accessid=KEY_ID, accesskey=Secret(SECRET), endpoint=endpoint,
        bucket=bucket, folder=variant, region="us-east-1",
    )  # fmt: skip
    uploader = S3Uploader(config)
    client = boto3_client_factory(config)(endpoint, "us-east-1")
    spool_dir = Path(tempfile.mkdtemp(prefix="pcapd-bench-spool-"))
    deliverer = Deliverer([uploader], RetryPolicy(1, 0.0, 0.0), Spool(spool_dir, 1 << 40))
    request = CaptureRequest(
        id="bench", node="any", nodere=None, interfaces=("lo",), aliases=(), bpf="",
        snap=65535, packets=1, bytes=1000, duration=1, timeout=1, format="pcap",
    )  # fmt: skip

    def send(data: bytearray, name: str) -> None:
        if variant in ("pcapd", "wal"):
            artifact = Artifact(
                data=data, filename=name, format="pcap",
                sha256=hashlib.sha256(data).hexdigest(), request=request, node="n", interface="lo",
            )  # fmt: skip
            if variant == "pcapd":
                uploader.upload(artifact)
            elif deliverer.deliver(artifact).status != "ok":
                raise SystemExit(f"wal: {name} was not delivered")
        elif variant == "peer":
            client.put_object(Bucket=bucket, Key=f"{variant}/{name}", Body=bytes(data))
        else:
            client.upload_fileobj(
                io.BytesIO(data), bucket, f"{variant}/{name}",
                Config=TransferConfig(multipart_threshold=8 * MIB, multipart_chunksize=8 * MIB),
            )  # fmt: skip

    send(capture(SMALL_SIZE), "warmup.pcap")  # imports, connection pool, first signing
    baseline = rss_mib()
    started = time.perf_counter()
    for index in range(small):
        send(capture(SMALL_SIZE), f"small-{index}.pcap")
    small_seconds = time.perf_counter() - started

    large = capture(large_mib * MIB)
    started = time.perf_counter()
    send(large, "large.pcap")
    large_seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    shutil.rmtree(spool_dir)
    print(
        json.dumps(
            {
                "small_ms": small_seconds / small * 1000,
                "small_mbps": small * SMALL_SIZE / MIB / small_seconds,
                "large_mbps": large_mib / large_seconds,
                "baseline_mib": baseline,
                "peak_mib": peak,
            }
        )
    )


def start_moto(exe: str, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("moto_server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--large-mib", type=int, default=200)
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "ENDPOINT", "BUCKET"))
    args = parser.parse_args()
    if args.child:
        variant, endpoint, bucket = args.child
        child(variant, endpoint, bucket, args.small, args.large_mib)
        return 0

    try:
        moto_server = require(python_peers={"moto_server": "moto[server]"})["moto_server"]
    except BenchError as exc:
        print(f"upload: {exc}", file=sys.stderr)
        return 2
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    moto = start_moto(moto_server, port)
    try:
        import boto3

        bucket = "bench-" + uuid.uuid4().hex[:8]
        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
        ).create_bucket(Bucket=bucket)  # fmt: skip
        results = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", variant, endpoint, bucket,
                 "--small", str(args.small), "--large-mib", str(args.large_mib)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        moto.terminate()
        moto.wait(10)

    target = TARGET_FACTOR * args.large_mib + TARGET_SLACK_MIB
    print(f"moto S3 on loopback; {args.small} x 1 MiB, then 1 x {args.large_mib} MiB")
    print(f"{'variant':8} {'1MiB MB/s':>10} {'large MB/s':>11} {'base RSS':>9} {'peak RSS':>9}")
    for variant, r in results.items():
        print(
            f"{variant:8} {r['small_mbps']:10.1f} {r['large_mbps']:11.1f} "
            f"{r['baseline_mib']:8.0f}M {r['peak_mib']:8.0f}M"
        )
    ours = results["pcapd"]
    wal = results["wal"]
    print(
        f"write-ahead: {wal['small_ms'] - ours['small_ms']:.1f} ms per 1 MiB capture "
        f"({wal['small_ms']:.1f} vs {ours['small_ms']:.1f} ms, ratio wal/pcapd "
        f"{wal['small_ms'] / ours['small_ms']:.2f}x); peak RSS {wal['peak_mib']:.0f} MiB "
        f"vs {ours['peak_mib']:.0f} MiB"
    )
    for name in VARIANTS[2:]:
        peer = results[name]
        print(
            f"ratio pcapd/{name}: peak RSS {ours['peak_mib'] / peer['peak_mib']:.2f}x, "
            f"1 MiB throughput {ours['small_mbps'] / peer['small_mbps']:.2f}x, "
            f"large throughput {ours['large_mbps'] / peer['large_mbps']:.2f}x"
        )
    verdict = "PASS" if ours["peak_mib"] <= target else "FAIL"
    print(
        f"target peak RSS <= {TARGET_FACTOR} x {args.large_mib} MiB + {TARGET_SLACK_MIB} MiB "
        f"= {target:.0f} MiB: pcapd {ours['peak_mib']:.0f} MiB -> {verdict}"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    raise SystemExit(main())
