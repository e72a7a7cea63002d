"""A real `moto_server` subprocess on a free loopback port, for SQS through boto3."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.helpers import free_port, stop_process, wait_for

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient

REGION = "us-east-1"
TEST_KEY_ID = "testing"
TEST_SECRET = "testing-secret"
MOTO_START_TIMEOUT = 30.0


@dataclass
class MotoServer:
    endpoint: str
    proc: subprocess.Popen[bytes]

    def client(self, key_id: str = TEST_KEY_ID, secret: str = TEST_SECRET) -> SQSClient:
        client: SQSClient = boto3.client(
            "sqs",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
            config=BotoConfig(retries={"mode": "standard", "max_attempts": 1}),
        )
        return client

    def new_queue(self, visibility: int = 30) -> str:
        """A fresh queue for one test; returns its URL."""
        reply = self.client().create_queue(
            QueueName=f"pcapd-{uuid.uuid4().hex[:12]}",
            Attributes={"VisibilityTimeout": str(visibility)},
        )
        return reply["QueueUrl"]


def _moto_server_bin() -> str:
    return str(Path(sys.executable).with_name("moto_server"))


def _up(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1) as reply:
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[MotoServer]:
    port = free_port()
    proc = subprocess.Popen(
        [_moto_server_bin(), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(endpoint) or proc.poll() is not None, timeout=MOTO_START_TIMEOUT)
        assert proc.poll() is None, f"moto_server exited with {proc.returncode}"
        yield MotoServer(endpoint, proc)
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def moto_sqs() -> Iterator[MotoServer]:
    """One moto_server for the session; each test makes its own queue."""
    with moto_server() as server:
        yield server


@pytest.fixture(scope="session")
def moto_sqs_auth() -> Iterator[MotoServer]:
    """A moto_server that checks credentials like AWS: unknown keys are refused."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        yield server
