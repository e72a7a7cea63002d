"""`pcapd serve` delivering to local disk, S3 (moto_server) and CloudShark at once,
spooling when S3 is down and delivering after S3 (or the daemon) comes back."""

from __future__ import annotations

import hashlib
import queue
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RedisServer, SilentServer, free_port, silent_server, wait_for
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import S3_KEY_ID, S3_SECRET, MotoProcess, MotoS3, s3_config
from uploaders.spool import Spool


def sections(
    s3: MotoProcess | MotoS3 | SilentServer,
    bucket: str,
    spool: Path,
    cloudshark: CloudsharkServer | None,
    delivery: str = "",
) -> str:
    text = f"""
[s3]
upload = true
endpoint = "{s3.endpoint}"
bucket = "{bucket}"
folder = "pcaps"
region = "us-east-1"
accessid = "{S3_KEY_ID}"
accesskey = "{S3_SECRET}"

[delivery]
attempts = 2
backoff_initial = 0.05
backoff_max = 0.1
spool_dir = "{spool}"
drain_interval = 0.3
{delivery}
"""
    if cloudshark is not None:
        text += f"""
[cloudshark]
upload = true
scheme = "http"
host = "127.0.0.1"
port = {cloudshark.port}
token = "{cloudshark.token}"
"""
    return text


def s3_object(endpoint: str, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
    from uploaders.s3 import boto3_client_factory

    client = boto3_client_factory(s3_config(endpoint, bucket))(endpoint, "us-east-1")
    reply = client.get_object(Bucket=bucket, Key=key)
    return reply["Body"].read(), reply["Metadata"]


def make_bucket(endpoint: str, name: str) -> None:
    from uploaders.s3 import boto3_client_factory

    client = boto3_client_factory(s3_config(endpoint, name))(endpoint, "us-east-1")
    client.create_bucket(Bucket=name)


def restart_until_delivered(
    redis_srv: RedisServer, results: Results, workdir: Path, config: str, request_id: str
) -> dict[str, Any]:
    """Start a new daemon on `workdir` and return the `delivered` event its drainer sends."""
    restarted = Daemon(redis_srv, workdir, extra_sections=config)
    restarted.start()
    try:
        delivered = results.for_id(request_id, timeout=20)
    finally:
        restarted.stop()
    assert delivered["status"] == "delivered", delivered
    return delivered


def test_local_s3_and_cloudshark_all_get_the_capture(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_s3: MotoS3,
    cloudshark: CloudsharkServer,
) -> None:  # fmt: skip
    bucket = moto_s3.new_bucket()
    config = sections(moto_s3, bucket, tmp_path / "spool", cloudshark)
    daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
    daemon.start()
    try:
        port = free_port()
        daemon.publish(udp_request(port, id="everywhere", packets=3, tags="t1", alertid=9))
        traffic(port, 3, ready=lambda: daemon.started("everywhere"))
        event = results.for_id("everywhere", timeout=20)
    finally:
        daemon.stop()
    assert event["status"] == "ok", event
    locations = event["locations"]
    assert set(locations) == {"local", "s3", "cloudshark"}
    local = Path(locations["local"]).read_bytes()
    key = locations["s3"].removeprefix(f"s3://{bucket}/")
    assert key.startswith("pcaps/testnode_lo_") and key.endswith("_everywhere.pcap")
    body, metadata = s3_object(moto_s3.endpoint, bucket, key)
    assert body == local and hashlib.sha256(body).hexdigest() == event["sha256"]
    assert metadata["request-id"] == "everywhere" and metadata["alertid"] == "9"
    assert locations["cloudshark"].startswith(f"http://127.0.0.1:{cloudshark.port}/captures/")
    assert cloudshark.token not in (tmp_path / "pcapd.log").read_text()


def test_s3_down_spools_then_delivers_after_a_daemon_kill_and_restart(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_proc: MotoProcess
) -> None:
    spool = tmp_path / "spool"
    config = sections(moto_proc, "caps", spool, None)
    moto_proc.kill()
    daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
    daemon.start()
    port = free_port()
    daemon.publish(udp_request(port, id="later", packets=3))
    traffic(port, 3, ready=lambda: daemon.started("later"))
    spooled = results.for_id("later", timeout=20)
    assert spooled["status"] == "spooled", spooled
    assert "s3:" in spooled["error"] and "local" in spooled["locations"]
    assert len(list(spool.glob("*.cap"))) == 1
    # The daemon dies with the capture in the spool; S3 comes back.
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.wait()
    moto_proc.start()
    make_bucket(moto_proc.endpoint, "caps")
    delivered = restart_until_delivered(redis_srv, results, tmp_path, config, "later")
    key = delivered["locations"]["s3"].removeprefix("s3://caps/")
    body, _ = s3_object(moto_proc.endpoint, "caps", key)
    assert hashlib.sha256(body).hexdigest() == spooled["sha256"] == delivered["sha256"]
    assert list(spool.glob("*.cap")) == []


def test_message_naming_a_bucket_the_site_does_not_allow_is_rejected(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_s3: MotoS3
) -> None:
    config = sections(moto_s3, "caps", tmp_path / "spool", None)
    daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
    daemon.start()
    try:
        daemon.publish(udp_request(free_port(), id="exfil", bucket="attacker-bucket"))
        daemon.publish(udp_request(free_port(), id="climb", folder="../../etc"))
        exfil, climb = results.for_id("exfil"), results.for_id("climb")
    finally:
        daemon.stop()
    assert exfil["status"] == climb["status"] == "rejected"
    assert "bucket='attacker-bucket'" in exfil["error"]
    assert "folder" in climb["error"] and ".." in climb["error"]


def test_hung_s3_then_sigkill_leaves_the_capture_spooled_and_a_restart_delivers_it(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_s3: MotoS3
) -> None:
    spool, bucket = tmp_path / "spool", moto_s3.new_bucket()
    with silent_server() as hung:
        config = sections(hung, bucket, spool, None, "attempt_timeout = 60.0")
        daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
        daemon.start()
        port = free_port()
        daemon.publish(udp_request(port, id="hung", packets=3))
        traffic(port, 3, ready=lambda: daemon.started("hung"))
        wait_for(lambda: hung.accepted >= 1, timeout=20)  # the upload is under way, and hangs
        time.sleep(1.0)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.wait()
    with pytest.raises(queue.Empty):  # the killed daemon said nothing about it
        while results.events.get(timeout=0.5).get("id") != "hung":
            pass
    [entry] = Spool(spool, 64 << 20).list()
    assert entry.pending == ("s3",) and entry.request["id"] == "hung"
    config = sections(moto_s3, bucket, spool, None)
    delivered = restart_until_delivered(redis_srv, results, tmp_path, config, "hung")
    key = delivered["locations"]["s3"].removeprefix(f"s3://{bucket}/")
    body, metadata = s3_object(moto_s3.endpoint, bucket, key)
    assert body == Path(delivered["locations"]["local"]).read_bytes()
    assert hashlib.sha256(body).hexdigest() == entry.sha256 == delivered["sha256"]
    assert metadata["request-id"] == "hung"
    assert list(spool.iterdir()) == []


def test_sigterm_with_a_hung_upload_exits_within_shutdown_grace_having_spooled_it(
    redis_srv: RedisServer, results: Results, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    with silent_server() as hung:
        delivery = "attempt_timeout = 60.0\nshutdown_grace = 4.0"
        daemon = Daemon(
            redis_srv, tmp_path, extra_sections=sections(hung, "caps", spool, None, delivery)
        )
        daemon.start()
        try:
            port = free_port()
            daemon.publish(udp_request(port, id="stuck", packets=3))
            traffic(port, 3, ready=lambda: daemon.started("stuck"))
            wait_for(lambda: hung.accepted >= 1, timeout=20)
            start = time.monotonic()
            daemon.signal(signal.SIGTERM)
            daemon.wait(timeout=30)
            took = time.monotonic() - start
        finally:
            daemon.stop()
    assert took < 4.0 + 1.5, f"exited {took:.1f} s after SIGTERM:\n{daemon.log()}"
    event = results.for_id("stuck")
    assert event["status"] == "spooled", event
    assert "s3: abandoned after" in event["error"] and "local" in event["locations"]
    [entry] = Spool(spool, 64 << 20).list()
    assert entry.pending == ("s3",) and entry.sha256 == event["sha256"]
    assert "event=stopped" in daemon.log()


def test_pcapdaemon_naming_keeps_its_names_on_disk_s3_and_cloudshark(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_s3: MotoS3,
    cloudshark: CloudsharkServer,
) -> None:  # fmt: skip
    bucket = moto_s3.new_bucket()
    config = sections(moto_s3, bucket, tmp_path / "spool", cloudshark)
    daemon = Daemon(
        redis_srv, tmp_path, extra_general='naming = "pcapdaemon"', extra_sections=config
    )
    daemon.start()
    began = int(time.time())
    try:
        port = free_port()
        daemon.publish(udp_request(port, id="old-style", packets=2))
        traffic(port, 3, ready=lambda: daemon.started("old-style"))
        event = results.for_id("old-style", timeout=20)
    finally:
        daemon.stop()
    assert event["status"] == "ok", event
    name = Path(event["locations"]["local"]).name
    found = re.fullmatch(r"testnode-lo-(\d+)\.pcap", name)
    assert found and began <= int(found[1]) <= time.time(), name
    assert event["locations"]["s3"] == f"s3://{bucket}/pcaps/{name}"
    body, _ = s3_object(moto_s3.endpoint, bucket, f"pcaps/{name}")
    assert body == Path(event["locations"]["local"]).read_bytes()
    assert [upload.filename for upload in cloudshark.uploads] == [name]


def test_a_capture_delivered_from_the_spool_reaches_reply_to(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_proc: MotoProcess
) -> None:
    """The drainer's `delivered` goes to the request's reply_to as well, so
    `pcapd trigger --wait` sees it."""
    config = sections(moto_proc, "caps", tmp_path / "spool", None)
    moto_proc.kill()
    replies = Results(redis_srv, channel="mine")
    daemon = Daemon(redis_srv, tmp_path, extra_sections=config)
    daemon.start()
    try:
        port = free_port()
        daemon.publish(udp_request(port, id="replied", packets=3, reply_to="mine"))
        traffic(port, 3, ready=lambda: daemon.started("replied"))
        assert replies.for_id("replied", timeout=20)["status"] == "spooled"
        moto_proc.start()
        make_bucket(moto_proc.endpoint, "caps")
        delivered = replies.for_id("replied", timeout=30)
    finally:
        daemon.stop()
        replies.close()
    assert delivered["status"] == "delivered", delivered
    assert delivered["locations"]["s3"].startswith("s3://caps/pcaps/")
    assert list((tmp_path / "spool").glob("*.cap")) == []
