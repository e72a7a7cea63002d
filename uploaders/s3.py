"""S3 sink: pcapdaemon's `[s3]` options, boto3, multipart straight from memory.

The capture is never copied, nor written to a temporary file. Below
`multipart_threshold` it is one PutObject whose body is a read-only reader
over the capture's buffer; above it, a multipart upload whose parts are
views of that buffer, `UPLOAD_CONCURRENCY` in flight. So the memory an
upload adds is a few socket buffers, whatever the capture's size. (boto3's
`upload_fileobj` was the first design: s3transfer copies every part out of
a file object, up to 10 parts held at once, ~80 MiB more; see bench/upload.py.)

A message's `bucket`/`folder`/`acl`/`region`/`endpoint`/`encryption` are
used here as given: `S3Uploader.check` (`uploaders.policy`) has already
decided whether the site allows them, before the capture was taken.
"""

from __future__ import annotations

import contextlib
import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
import botocore.config
import botocore.exceptions

from pcapd.core.config import S3Config
from pcapd.core.logs import event
from pcapd.core.request import CaptureRequest
from uploaders.base import Artifact, Location, Sink, UploadError, pcapdaemon_key
from uploaders.policy import check_overrides, normalize_endpoint

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef
else:
    S3Client = Any
    CompletedPartTypeDef = dict

log = logging.getLogger("pcapd.uploaders.s3")

UPLOAD_CONCURRENCY = 4  # parts in flight per multipart upload
MAX_PARTS = 10_000  # S3's limit: bigger captures get bigger parts
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


class S3Uploader(Sink):
    """`upload(artifact)` -> `s3://bucket/folder/filename`; thread-safe."""

    name = "s3"
    remote = True

    def __init__(
        self,
        config: S3Config,
        client_factory: ClientFactory | None = None,
        *,
        naming: str = "pcapd",
    ) -> None:
        if not config.bucket:
            raise ValueError("s3.bucket: required for the S3 uploader")
        self.config = config
        self.naming = naming  # [general] naming: "pcapdaemon" keeps its key layout
        self._factory = client_factory or boto3_client_factory(config)
        self._clients: dict[tuple[str | None, str | None], S3Client] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Uploader(bucket={self.config.bucket!r}, endpoint={self.config.endpoint!r})"

    def _client(self, endpoint: str | None, region: str | None) -> S3Client:
        key = (endpoint, region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._factory(endpoint, region)
            return self._clients[key]

    def check(self, request: CaptureRequest) -> None:
        """The message's S3 fields within what `[s3]` allows (uploaders.policy)."""
        check_overrides(request, self.config)

    def target(self, artifact: Artifact) -> tuple[str, str]:
        """(bucket, key) for this artifact, message overrides applied."""
        request = artifact.request
        bucket = request.bucket or self.config.bucket
        assert bucket is not None
        folder = request.folder if request.folder is not None else self.config.folder
        if self.naming == "pcapdaemon":
            return bucket, pcapdaemon_key(folder, artifact.filename)
        folder = folder.strip("/")
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
            extra = self.extra_args(artifact)
            with memoryview(artifact.data).cast("B") as view:
                if len(view) < self.config.multipart_threshold:
                    with MemoryReader(view) as reader:
                        client.put_object(
                            Bucket=bucket, Key=key, Body=cast(IO[Any], reader), **extra
                        )
                else:
                    self._multipart(client, bucket, key, view, extra)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            raise UploadError(
                f"{url}: {error.get('Code', 'error')} (HTTP {status}): {error.get('Message', exc)}",
                retryable=status in RETRYABLE_STATUSES or status == 0,
            ) from exc
        except (botocore.exceptions.BotoCoreError, OSError) as exc:
            raise UploadError(f"{url}: {exc}") from exc
        event(log, "uploaded", sink="s3", url=url, bytes=artifact.size)
        return Location("s3", url)

    def _multipart(
        self, client: S3Client, bucket: str, key: str, view: memoryview, extra: dict[str, Any]
    ) -> None:
        """Parts are views of the capture, sent `UPLOAD_CONCURRENCY` at a time:
        no part is ever copied, so memory stays at the capture plus socket buffers."""
        part_size = max(self.config.multipart_threshold, -(-len(view) // MAX_PARTS))
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        try:
            with ThreadPoolExecutor(UPLOAD_CONCURRENCY, thread_name_prefix="pcapd-s3") as pool:
                futures = []
                for number, offset in enumerate(range(0, len(view), part_size), start=1):
                    chunk = view[offset : offset + part_size]
                    futures.append(
                        pool.submit(self._part, client, bucket, key, upload_id, number, chunk)
                    )
                parts = [future.result() for future in futures]
            client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # Parts of an unfinished upload are billed until aborted; the peer may be gone.
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            raise

    @staticmethod
    def _part(
        client: S3Client, bucket: str, key: str, upload_id: str, number: int, chunk: memoryview
    ) -> CompletedPartTypeDef:
        with MemoryReader(chunk) as reader:
            answer = client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                Body=cast(IO[Any], reader),
            )  # fmt: skip
        return {"PartNumber": number, "ETag": answer["ETag"]}
