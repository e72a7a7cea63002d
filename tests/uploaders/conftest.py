"""Real S3 (`moto_server`, spoken to by boto3 over loopback) and CloudShark fixtures."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pcapd.core.config import CloudsharkConfig, DeliveryConfig, S3Config
from pcapd.core.request import CaptureRequest
from pcapd.core.secret import Secret
from tests.helpers import MotoProcess as MotoProcess  # re-exported: tests import it from here
from tests.helpers import moto_process
from tests.uploaders.cloudshark_server import CloudsharkServer
from uploaders.base import Artifact
from uploaders.s3 import boto3_client_factory

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

CS_TOKEN = "tok-3f9c2a71d5e84b06a1c7"  # distinctive, so a leak is easy to find
S3_KEY_ID = "AKIAPCAPDTEST"
S3_SECRET = "pcapd-test-secret-key-0123456789"


def make_request(**overrides: Any) -> CaptureRequest:
    fields: dict[str, Any] = {
        "id": "req-" + uuid.uuid4().hex[:8], "node": "any", "nodere": None,
        "interfaces": ("lo",), "aliases": (), "bpf": "tcp", "snap": 65535, "packets": 10,
        "bytes": 10_000_000, "duration": 5, "timeout": 5, "format": "pcap",
        "tags": ("web", "alert"), "alertid": 655443, "customer": "acme",
    }  # fmt: skip
    fields.update(overrides)
    return CaptureRequest(**fields)


def make_artifact(size: int = 4096, *, request: CaptureRequest | None = None) -> Artifact:
    # A pcap header then repeatable pseudo-random bytes: content checks mean something.
    data = bytearray(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    seed = uuid.uuid4().bytes
    block = hashlib.sha256(seed).digest() * 2048
    while len(data) < size:
        data += block[: size - len(data)]
    req = request or make_request()
    return Artifact(
        data=data,
        filename=f"node1_lo_20261122T001130.123Z_{req.id}.pcap",
        format="pcap",
        sha256=hashlib.sha256(data).hexdigest(),
        request=req,
        node="node1",
        interface="lo",
    )


def s3_config(endpoint: str, bucket: str, **overrides: Any) -> S3Config:
    fields: dict[str, Any] = {
        "upload": True, "accessid": S3_KEY_ID, "accesskey": Secret(S3_SECRET),
        "endpoint": endpoint, "bucket": bucket, "folder": "pcaps", "region": "us-east-1",
    }  # fmt: skip
    fields.update(overrides)
    return S3Config(**fields)


@dataclass
class MotoS3:
    endpoint: str
    config: S3Config

    def client(self) -> S3Client:
        return boto3_client_factory(self.config)(self.endpoint, "us-east-1")

    def s3_config(self, bucket: str, **overrides: Any) -> S3Config:
        return s3_config(self.endpoint, bucket, **overrides)

    def new_bucket(self) -> str:
        name = "caps-" + uuid.uuid4().hex[:10]
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def moto_s3(moto_session: MotoProcess) -> MotoS3:
    """S3 on the session's `moto_server`; each test makes its own bucket."""
    base = S3Config(
        upload=True, accessid=S3_KEY_ID, accesskey=Secret(S3_SECRET),
        endpoint=moto_session.endpoint, bucket="unused", region="us-east-1",
    )  # fmt: skip
    return MotoS3(moto_session.endpoint, base)


@pytest.fixture
def moto_proc() -> Iterator[MotoProcess]:
    """A `moto_server` of this test's own, for tests that kill and restart it."""
    with moto_process() as server:
        yield server


@pytest.fixture
def cloudshark() -> Iterator[CloudsharkServer]:
    server = CloudsharkServer(token=CS_TOKEN)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def cs_config(server: CloudsharkServer, **overrides: Any) -> CloudsharkConfig:
    fields: dict[str, Any] = {
        "upload": True, "host": "127.0.0.1", "scheme": "http", "port": server.port,
        "token": Secret(server.token), "connect_timeout": 2.0, "read_timeout": 5.0,
    }  # fmt: skip
    fields.update(overrides)
    return CloudsharkConfig(**fields)


def fast_delivery(spool_dir: Path, **overrides: Any) -> DeliveryConfig:
    fields: dict[str, Any] = {
        "attempts": 3, "backoff_initial": 0.01, "backoff_max": 0.05,
        "spool_dir": str(spool_dir), "spool_max_bytes": 64 * 1024 * 1024,
        "drain_interval": 0.2,
    }  # fmt: skip
    fields.update(overrides)
    return DeliveryConfig(**fields)
