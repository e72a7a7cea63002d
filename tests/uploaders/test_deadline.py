"""A remote attempt ends at its deadline, or at once on abandon, whatever the peer does."""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import silent_server
from tests.uploaders.conftest import MotoS3, make_artifact, s3_config
from uploaders.base import UploadError
from uploaders.deadline import Deadlined
from uploaders.s3 import S3Uploader


def test_an_s3_that_never_answers_fails_the_attempt_at_the_deadline() -> None:
    with silent_server() as hung:
        sink = Deadlined(S3Uploader(s3_config(hung.endpoint, "caps")), 1.0, threading.Event())
        with pytest.raises(UploadError):
            sink.upload(make_artifact())  # the first one also builds the boto3 client
        start = time.monotonic()
        with pytest.raises(UploadError, match=r"no answer within delivery.attempt_timeout=1 s"):
            sink.upload(make_artifact())
        took = time.monotonic() - start
        assert hung.accepted >= 1  # connected, sent, and was never answered
    assert 1.0 <= took < 2.0  # botocore alone would have waited 120 s


def test_abandon_ends_a_hung_attempt_at_once_and_refuses_new_ones() -> None:
    abandon = threading.Event()
    with silent_server() as hung:
        sink = Deadlined(S3Uploader(s3_config(hung.endpoint, "caps")), 60.0, abandon)
        threading.Timer(0.3, abandon.set).start()
        start = time.monotonic()
        with pytest.raises(UploadError, match=r"abandoned after .* shutting down") as info:
            sink.upload(make_artifact())
        assert time.monotonic() - start < 1.0 and not info.value.retryable
        with pytest.raises(UploadError, match="not attempted, shutting down"):
            sink.upload(make_artifact())


def test_a_healthy_sink_is_untouched(moto_s3: MotoS3) -> None:
    bucket = moto_s3.new_bucket()
    sink = Deadlined(S3Uploader(moto_s3.s3_config(bucket)), 10.0, threading.Event())
    artifact = make_artifact()
    assert sink.upload(artifact).url == f"s3://{bucket}/pcaps/{artifact.filename}"
    assert (sink.name, sink.remote, sink.target(artifact)) == (
        "s3",
        True,
        (bucket, f"pcaps/{artifact.filename}"),
    )
