"""CloudShark sink: `POST /api/v1/<token>/upload`, multipart, TLS verified.

pcapdaemon turned certificate checks off; here they are on, with an optional
CA bundle for a private CloudShark. The token is part of the URL path, so the
path is never logged or put in an error: everything we print says
`/api/v1/***/upload`. The capture is sent from its buffer in one `send`,
not copied into the request body.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import ssl
import uuid
from typing import Any

from pcapd.core.config import CloudsharkConfig
from pcapd.core.logs import event
from uploaders.base import Artifact, Location, Sink, UploadError

log = logging.getLogger("pcapd.uploaders.cloudshark")

MAX_RESPONSE_BYTES = 1024 * 1024  # a JSON answer; anything bigger is not CloudShark
MAX_ERROR_TEXT = 500
SHOWN_PATH = "/api/v1/***/upload"
# Worth another try; 4xx (bad token, bad file) will fail the same way again.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def additional_tags(artifact: Artifact) -> str:
    """CloudShark's comma-separated tags: the request's tags plus where it came from."""
    request = artifact.request
    tags = list(request.tags)
    if request.alertid is not None:
        tags.append(f"alertid:{request.alertid}")
    if request.customer:
        tags.append(f"customer:{request.customer}")
    tags.append(f"node:{artifact.node}")
    tags.append(f"interface:{artifact.interface}")
    tags.extend(f"alias:{alias}" for alias in request.aliases)
    # A comma would split one tag into two.
    return ",".join(tag.replace(",", " ") for tag in tags)


def _field(boundary: str, name: str, value: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    ).encode()


class CloudsharkUploader(Sink):
    """`upload(artifact)` -> the capture's view URL; one connection per upload."""

    name = "cloudshark"
    remote = True

    def __init__(self, config: CloudsharkConfig) -> None:
        if not config.token:
            raise ValueError("cloudshark.token: required for the CloudShark uploader")
        self.config = config
        self._ssl: ssl.SSLContext | None = None
        if config.scheme == "https":
            # create_default_context verifies the certificate and the host name.
            self._ssl = ssl.create_default_context(cafile=config.ca_bundle)

    def __repr__(self) -> str:
        return f"CloudsharkUploader(base={self.base_url!r}, token={self.config.token!r})"

    @property
    def base_url(self) -> str:
        port = f":{self.config.port}" if self.config.port else ""
        return f"{self.config.scheme}://{self.config.host}{port}"

    def view_url(self, capture_id: str) -> str:
        return f"{self.base_url}/captures/{capture_id}"

    def _connect(self) -> http.client.HTTPConnection:
        cfg = self.config
        conn: http.client.HTTPConnection
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(
                cfg.host, cfg.port, timeout=cfg.connect_timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(cfg.host, cfg.port, timeout=cfg.connect_timeout)
        conn.connect()
        assert conn.sock is not None
        # Connect may take connect_timeout; each read after that read_timeout.
        conn.sock.settimeout(cfg.read_timeout)
        return conn

    def upload(self, artifact: Artifact) -> Location:
        token = self.config.token
        assert token is not None
        boundary = "pcapd-" + uuid.uuid4().hex
        filename = artifact.filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = (
            _field(boundary, "filename", artifact.filename)
            + _field(boundary, "additional_tags", additional_tags(artifact))
            + (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
        )
        tail = f"\r\n--{boundary}--\r\n".encode()
        where = f"{self.base_url}{SHOWN_PATH}"
        try:
            conn = self._connect()
        except (OSError, http.client.HTTPException) as exc:
            raise UploadError(f"{where}: cannot connect: {_describe(exc)}") from None
        try:
            conn.putrequest("POST", f"/api/v1/{token.reveal()}/upload", skip_accept_encoding=True)
            conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
            conn.putheader("Content-Length", str(len(head) + artifact.size + len(tail)))
            conn.putheader("Accept", "application/json")
            conn.endheaders()
            conn.send(head)
            conn.send(memoryview(artifact.data))
            conn.send(tail)
            response = conn.getresponse()
            body = response.read(MAX_RESPONSE_BYTES)
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            # `from None`: the chained exception must not carry anything token-bearing.
            raise UploadError(f"{where}: {_describe(exc)}") from None
        finally:
            conn.close()
        answer = _json(body)
        if status == 200:
            capture_id = answer.get("id")
            if not isinstance(capture_id, str | int) or not str(capture_id):
                # It may have stored the file: trying again at once could duplicate it.
                raise UploadError(
                    f"{where}: HTTP 200 without a capture id: {_excerpt(body)}", retryable=False
                )
            url = self.view_url(str(capture_id))
            event(log, "uploaded", sink="cloudshark", url=url, bytes=artifact.size)
            return Location("cloudshark", url)
        exceptions = answer.get("exceptions")
        detail = (
            "; ".join(str(e) for e in exceptions)
            if isinstance(exceptions, list)
            else str(exceptions)
            if exceptions
            else _excerpt(body)
        )
        raise UploadError(
            f"{where}: HTTP {status}: {_scrub(detail, token.reveal())}",
            retryable=status in RETRYABLE_STATUSES,
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _excerpt(body: bytes) -> str:
    return body[:MAX_ERROR_TEXT].decode("utf-8", "replace") or "(empty body)"


def _scrub(text: str, token: str) -> str:
    # A server may echo the request path back; the token must still not show.
    return text.replace(token, "***") if token else text


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    return f"{type(exc).__name__}: {exc}"
