from __future__ import annotations

import hashlib
import logging
import random
import ssl
import threading
import time
from pathlib import Path

import pytest

from pcapd.core.config import CloudsharkConfig
from pcapd.core.secret import Secret
from tests.helpers import free_port
from tests.uploaders.cloudshark_server import CloudsharkServer, self_signed
from tests.uploaders.conftest import CS_TOKEN, cs_config, make_artifact, make_request
from uploaders.base import UploadError
from uploaders.cloudshark import CloudsharkUploader, additional_tags
from uploaders.retry import RetryPolicy


def test_upload_returns_the_view_url_and_the_server_gets_everything(
    cloudshark: CloudsharkServer,
) -> None:
    artifact = make_artifact(200_000, request=make_request(aliases=("public",), interfaces=()))
    location = CloudsharkUploader(cs_config(cloudshark)).upload(artifact)

    assert location.kind == "cloudshark"
    prefix = f"http://127.0.0.1:{cloudshark.port}/captures/"
    assert location.url.startswith(prefix) and len(location.url) > len(prefix)
    [got] = cloudshark.uploads
    assert got.path == f"/api/v1/{CS_TOKEN}/upload"
    assert got.filename == got.file_name == artifact.filename
    assert hashlib.sha256(got.data).hexdigest() == artifact.sha256
    assert got.additional_tags == (
        "web,alert,alertid:655443,customer:acme,node:node1,interface:lo,alias:public"
    )


def test_view_url_without_port() -> None:
    uploader = CloudsharkUploader(
        CloudsharkConfig(upload=True, host="cs.example", token=Secret("t"))
    )
    assert uploader.view_url("abc") == "https://cs.example/captures/abc"


def test_tags_cannot_smuggle_a_comma() -> None:
    artifact = make_artifact(request=make_request(tags=(), customer="a,b", alertid="x"))
    assert additional_tags(artifact) == "alertid:x,customer:a b,node:node1,interface:lo"


def test_wrong_token_is_a_permanent_error_without_the_token(
    cloudshark: CloudsharkServer,
) -> None:
    wrong = "tok-wrong-7d1e"
    uploader = CloudsharkUploader(cs_config(cloudshark, token=Secret(wrong)))
    with pytest.raises(UploadError) as info:
        uploader.upload(make_artifact())
    message = str(info.value)
    assert message == (
        f"http://127.0.0.1:{cloudshark.port}/api/v1/***/upload: "
        "HTTP 401: api_token_invalid: bad token"
    )
    assert info.value.retryable is False
    assert wrong not in message and wrong not in repr(uploader)


def test_500_then_200_succeeds_on_retry(cloudshark: CloudsharkServer) -> None:
    cloudshark.fail_next(500, ["api_error_internal"])
    uploader = CloudsharkUploader(cs_config(cloudshark))
    with pytest.raises(UploadError) as info:
        uploader.upload(make_artifact())
    assert "HTTP 500: api_error_internal" in str(info.value)
    assert info.value.retryable is True

    cloudshark.fail_next(503, ["busy"])
    slept: list[float] = []
    retry = RetryPolicy(3, 0.01, 0.02, sleep=slept.append, rng=random.Random(1))
    location = retry.run(lambda: uploader.upload(make_artifact()), "cloudshark")
    assert location.kind == "cloudshark"
    assert cloudshark.requests == 3 and len(slept) == 1 and len(cloudshark.uploads) == 1


def test_hanging_server_times_out(cloudshark: CloudsharkServer) -> None:
    cloudshark.hang = threading.Event()
    cloudshark.hang.set()
    uploader = CloudsharkUploader(cs_config(cloudshark, read_timeout=0.3))
    started = time.monotonic()
    with pytest.raises(UploadError, match="timed out") as info:
        uploader.upload(make_artifact())
    assert time.monotonic() - started < 3
    assert info.value.retryable is True


def test_nobody_listening() -> None:
    config = CloudsharkConfig(
        upload=True, host="127.0.0.1", scheme="http", port=free_port(), token=Secret(CS_TOKEN)
    )
    with pytest.raises(UploadError, match="cannot connect: ConnectionRefusedError"):
        CloudsharkUploader(config).upload(make_artifact())


def test_token_cannot_change_the_path(cloudshark: CloudsharkServer) -> None:
    uploader = CloudsharkUploader(cs_config(cloudshark))
    uploader_path_wrong = CloudsharkUploader(cs_config(cloudshark, token=Secret("a/b")))
    with pytest.raises(UploadError, match="HTTP 404: api_error_not_found"):
        uploader_path_wrong.upload(make_artifact())
    assert uploader.upload(make_artifact()).kind == "cloudshark"


@pytest.fixture
def tls_cloudshark(tmp_path: Path) -> tuple[CloudsharkServer, Path]:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = CloudsharkServer(token=CS_TOKEN, tls=context)
    server.start()
    return server, cert


def test_tls_is_verified(tls_cloudshark: tuple[CloudsharkServer, Path]) -> None:
    server, cert = tls_cloudshark
    try:
        untrusted = CloudsharkUploader(cs_config(server, scheme="https"))
        with pytest.raises(UploadError, match="TLS certificate not trusted"):
            untrusted.upload(make_artifact())
        assert server.uploads == []

        trusted = CloudsharkUploader(cs_config(server, scheme="https", ca_bundle=str(cert)))
        location = trusted.upload(make_artifact())
        assert location.url.startswith(f"https://127.0.0.1:{server.port}/captures/")
        assert len(server.uploads) == 1
    finally:
        server.stop()


def test_token_never_logged(cloudshark: CloudsharkServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = CloudsharkUploader(cs_config(cloudshark))
    good.upload(make_artifact())
    cloudshark.fail_next(500, [f"echo of /api/v1/{CS_TOKEN}/upload"])
    retry = RetryPolicy(2, 0.0, 0.0)
    retry.run(lambda: good.upload(make_artifact()), "cloudshark")
    with pytest.raises(UploadError) as info:
        cloudshark.fail_next(500, [f"echo of /api/v1/{CS_TOKEN}/upload"])
        RetryPolicy(1, 0.0, 0.0).run(lambda: good.upload(make_artifact()), "cloudshark")
    assert CS_TOKEN not in str(info.value) and "***" in str(info.value)
    logging.getLogger("test").error("repr %r %s", good, good.config)

    assert len(caplog.records) >= 3  # uploads and the retry warning were logged
    for record in caplog.records:
        text = caplog.handler.format(record)  # the event's fields and any traceback
        assert CS_TOKEN not in text, text


@pytest.mark.parametrize(
    ("status", "body", "message", "retryable"),
    [
        (200, b"<html>ok</html>", "HTTP 200 without a capture id: <html>ok</html>", False),
        (200, b'{"filename": "x.pcap"}', 'HTTP 200 without a capture id: {"filename"', False),
        (502, b"<h1>Bad Gateway</h1>", "HTTP 502: <h1>Bad Gateway</h1>", True),
        (403, b"", "HTTP 403: (empty body)", False),
    ],
)
def test_malformed_answers_are_errors_and_the_next_upload_works(
    cloudshark: CloudsharkServer, status: int, body: bytes, message: str, retryable: bool
) -> None:
    cloudshark.raw_answers.append((status, body))
    uploader = CloudsharkUploader(cs_config(cloudshark))
    with pytest.raises(UploadError) as info:
        uploader.upload(make_artifact())
    assert message in str(info.value)
    assert info.value.retryable is retryable
    assert uploader.upload(make_artifact()).kind == "cloudshark"
