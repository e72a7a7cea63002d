"""`pcapd serve` delivering to local disk, S3 (moto_server) and CloudShark at once,
spooling when S3 is down and delivering after S3 (or the daemon) comes back."""

from __future__ import annotations

import hashlib
import re
import signal
import time
from pathlib import Path

from tests.helpers import RedisServer, free_port
from tests.pcapd.daemon_fixture import Daemon, Results
from tests.pcapd.test_daemon import traffic, udp_request
from tests.uploaders.cloudshark_server import CloudsharkServer
from tests.uploaders.conftest import S3_KEY_ID, S3_SECRET, MotoProcess, MotoS3, s3_config


def sections(endpoint: str, bucket: str, spool: Path, cloudshark: CloudsharkServer | None) -> str:
    text = f"""
[s3]
upload = true
endpoint = "{endpoint}"
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


def test_local_s3_and_cloudshark_all_get_the_capture(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_s3: MotoS3,
    cloudshark: CloudsharkServer,
) -> None:  # fmt: skip
    bucket = moto_s3.new_bucket()
    config = sections(moto_s3.endpoint, bucket, tmp_path / "spool", cloudshark)
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
    config = sections(moto_proc.endpoint, "caps", spool, None)
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
    restarted = Daemon(redis_srv, tmp_path, extra_sections=config)
    restarted.start()
    try:
        delivered = results.for_id("later", timeout=20)
    finally:
        restarted.stop()
    assert delivered["status"] == "delivered", delivered
    key = delivered["locations"]["s3"].removeprefix("s3://caps/")
    body, _ = s3_object(moto_proc.endpoint, "caps", key)
    assert hashlib.sha256(body).hexdigest() == spooled["sha256"] == delivered["sha256"]
    assert list(spool.glob("*.cap")) == []


def test_message_naming_a_bucket_the_site_does_not_allow_is_rejected(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_s3: MotoS3
) -> None:
    config = sections(moto_s3.endpoint, "caps", tmp_path / "spool", None)
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


def test_pcapdaemon_naming_keeps_its_names_on_disk_s3_and_cloudshark(
    redis_srv: RedisServer, results: Results, tmp_path: Path, moto_proc: MotoProcess,
    cloudshark: CloudsharkServer,
) -> None:  # fmt: skip
    make_bucket(moto_proc.endpoint, "legacy")
    config = sections(moto_proc.endpoint, "legacy", tmp_path / "spool", cloudshark)
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
    assert event["locations"]["s3"] == f"s3://legacy/pcaps/{name}"
    body, _ = s3_object(moto_proc.endpoint, "legacy", f"pcaps/{name}")
    assert body == Path(event["locations"]["local"]).read_bytes()
    assert [upload.filename for upload in cloudshark.uploads] == [name]
