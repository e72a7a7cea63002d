"""S3 sink: pcapdaemon's `[s3]` options, boto3, multipart straight from memory.

The capture's bytearray is wrapped in a read-only seekable reader and handed
to `upload_fileobj`: no temporary file, no whole-file copy. Below
`multipart_threshold` it is one PutObject streamed from the buffer; above it,
s3transfer reads one part at a time, so the extra memory per upload is at
most `UPLOAD_CHUNKS_IN_MEMORY * multipart_threshold` (4 x 8 MiB by default).

A message's `bucket`/`folder`/`acl`/`region`/`endpoint`/`encryption` are
used here as given: `uploaders.policy.check_overrides` has already decided
whether the site allows them, before the capture was taken.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from pcapd.config import S3Config
from uploaders.base import Artifact, Location, UploadError
from uploaders.policy import normalize_endpoint

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

log = logging.getLogger("pcapd.uploaders.s3")

UPLOAD_CHUNKS_IN_MEMORY = 4  # parts s3transfer may hold at once (its default is 10)
UPLOAD_CONCURRENCY = 4
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 120.0
CONTENT_TYPES = {"pcap": "application/vnd.tcpdump.pcap", "pcapng": "application/x-pcapng"}
# HTTP statuses worth another try; the rest (403, 404 NoSuchBucket, ...) need a human.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# (endpoint_url or None, region or None) -> a client. Tests hand in one for moto.
ClientFactory = Callable[[str | None, str | None], S3Client]


class MemoryReader(io.RawIOBase):
    """A read-only, seekable file over a buffer, without copying the buffer.

    `read(n)` returns a copy of n bytes (what s3transfer keeps per part);
    `readinto` fills the caller's buffer straight from the capture.
    """

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        chunk = self._view[self._pos : self._pos + len(target)]
        target[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos : end])
        self._pos += len(chunk)
        return chunk

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        # The capture outlives the reader: only drop our view of it.
        self._view.release()
        super().close()


def endpoint_url(endpoint: str | None) -> str | None:
    """boto3 wants a URL; pcapdaemon configs say `s3.amazonaws.com`."""
    return normalize_endpoint(endpoint) if endpoint else None


def boto3_client_factory(config: S3Config) -> ClientFactory:
    """Clients signed with `accessid`/`accesskey`, or boto3's own chain when unset
    (environment, shared config, instance role). Our retry layer retries, so
    botocore makes one attempt per call and gives up on a dead peer quickly."""

    def make(endpoint: str | None, region: str | None) -> S3Client:
        session = boto3.session.Session(
            aws_access_key_id=config.accessid,
            aws_secret_access_key=config.accesskey.reveal() if config.accesskey else None,
            region_name=region,
        )
        client: S3Client = session.client(
            "s3",
            endpoint_url=endpoint,
            config=botocore.config.Config(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"mode": "standard", "max_attempts": 1},
            ),
        )
        return client

    return make


class S3Uploader:
    """`upload(artifact)` -> `s3://bucket/folder/filename`; thread-safe."""

    name = "s3"
    remote = True

    def __init__(self, config: S3Config, client_factory: ClientFactory | None = None) -> None:
        if not config.bucket:
            raise ValueError("s3.bucket: required for the S3 uploader")
        self.config = config
        self._factory = client_factory or boto3_client_factory(config)
        self._clients: dict[tuple[str | None, str | None], S3Client] = {}
        self._lock = threading.Lock()
        chunk = config.multipart_threshold
        self._transfer = TransferConfig(
            multipart_threshold=chunk,
            multipart_chunksize=chunk,
            max_concurrency=UPLOAD_CONCURRENCY,
            use_threads=True,
        )
        # boto3's TransferConfig has no argument for this; s3transfer reads it.
        self._transfer.max_in_memory_upload_chunks = UPLOAD_CHUNKS_IN_MEMORY

    def __repr__(self) -> str:
        return f"S3Uploader(bucket={self.config.bucket!r}, endpoint={self.config.endpoint!r})"

    def _client(self, endpoint: str | None, region: str | None) -> S3Client:
        key = (endpoint, region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._factory(endpoint, region)
            return self._clients[key]

    def target(self, artifact: Artifact) -> tuple[str, str]:
        """(bucket, key) for this artifact, message overrides applied."""
        request = artifact.request
        bucket = request.bucket or self.config.bucket
        assert bucket is not None
        folder = (request.folder if request.folder is not None else self.config.folder).strip("/")
        key = f"{folder}/{artifact.filename}" if folder else artifact.filename
        return bucket, key

    def extra_args(self, artifact: Artifact) -> dict[str, Any]:
        request = artifact.request
        extra: dict[str, Any] = {
            "Metadata": artifact.metadata(),
            "ContentType": CONTENT_TYPES.get(artifact.format, "application/octet-stream"),
        }
        acl = request.acl or self.config.acl
        if acl:
            extra["ACL"] = acl
        if self.config.sse is not None:
            extra["ServerSideEncryption"] = self.config.sse
            if self.config.kms_key_id:
                extra["SSEKMSKeyId"] = self.config.kms_key_id
        elif self.config.encryption or request.encryption:
            extra["ServerSideEncryption"] = "AES256"
        return extra

    def upload(self, artifact: Artifact) -> Location:
        bucket, key = self.target(artifact)
        endpoint = endpoint_url(artifact.request.endpoint or self.config.endpoint)
        region = artifact.request.region or self.config.region
        url = f"s3://{bucket}/{key}"
        try:
            client = self._client(endpoint, region)
            with MemoryReader(artifact.data) as reader:
                client.upload_fileobj(
                    cast(IO[Any], reader), bucket, key, ExtraArgs=self.extra_args(artifact),
                    Config=self._transfer,
                )  # fmt: skip
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise UploadError(
                f"{url}: {error.get('Code', 'error')} (HTTP {status}): {error.get('Message', exc)}",
                retryable=status in RETRYABLE_STATUSES or status == 0,
            ) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise UploadError(f"{url}: {exc}") from exc
        except Exception as exc:
            # s3transfer wraps failures of its part uploads in its own types.
            raise UploadError(f"{url}: {type(exc).__name__}: {exc}") from exc
        log.info("uploaded sink=s3 url=%s bytes=%d", url, artifact.size)
        return Location("s3", url)
