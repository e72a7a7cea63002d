"""SQS through boto3 against a real `moto_server` (started by `tests.helpers.moto_process`)."""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.config import Config as BotoConfig

from tests.helpers import MotoProcess, moto_process

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient

REGION = "us-east-1"
TEST_KEY_ID = "testing"
TEST_SECRET = "testing-secret"


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


@contextlib.contextmanager
def moto_server(env: dict[str, str] | None = None) -> Iterator[MotoServer]:
    with moto_process(env) as server:
        assert server.proc is not None
        yield MotoServer(server.endpoint, server.proc)


@pytest.fixture(scope="session")
def moto_sqs(moto_session: MotoProcess) -> MotoServer:
    """SQS on the session's `moto_server`; each test makes its own queue."""
    assert moto_session.proc is not None
    return MotoServer(moto_session.endpoint, moto_session.proc)


@pytest.fixture(scope="session")
def moto_sqs_auth() -> Iterator[MotoServer]:
    """A moto_server that checks credentials like AWS: unknown keys are refused."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as server:
        yield server
