"""Talking to SQS: the boto3 client `[sqs]` describes, where its calls go,
the one thread that makes a source's ReceiveMessage calls, what an AWS error
means for an operator, and the SNS envelope a request may come in."""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import ClientError, NoCredentialsError

from pcapd.core.config import DEFAULT_MAX_REQUEST_BYTES, SqsConfig

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT_MARGIN = 10.0  # beyond waitseconds, before a long poll counts as hung
CLIENT_ATTEMPTS = 3  # botocore's own retries for throttling and 5xx

_AUTH_ERRORS = frozenset(
    {
        "InvalidClientTokenId", "SignatureDoesNotMatch", "AccessDenied",
        "AccessDeniedException", "UnrecognizedClientException", "InvalidAccessKeyId",
        "ExpiredToken", "InvalidSecurity",
    }
)  # fmt: skip
_MISSING_QUEUE = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)
_XML_CODE = re.compile(r"<Code>([^<]{1,100})</Code>")
_XML_MESSAGE = re.compile(r"<Message>([^<]{0,500})</Message>")
_MAX_MESSAGE = 300  # characters of an error message kept in a log line
# boto3 builds these itself from the region: sqs.<region>.amazonaws.com[.cn],
# and the legacy <region>.queue.amazonaws.com / queue.amazonaws.com.
_AWS_SQS_HOST = re.compile(
    r"(sqs\.[a-z0-9-]+|([a-z0-9-]+\.)?queue)\.amazonaws\.com(\.cn)?", re.IGNORECASE
)
_URL_REGION = re.compile(r"(?:^|\.)sqs\.([a-z]{2}(?:-[a-z]+)+-\d+)\.", re.IGNORECASE)
DEFAULT_REGION = "us-east-1"


class Receive:
    """One ReceiveMessage call, run on the source's receiver thread."""

    def __init__(self, call: Callable[[], list[MessageTypeDef]]) -> None:
        self.done = threading.Event()
        self.messages: list[MessageTypeDef] = []
        self.error: Exception | None = None
        self.abandoned = False
        self.on_abandoned: Callable[[list[MessageTypeDef]], None] | None = None
        self._lock = threading.Lock()
        self._call = call

    def run(self) -> None:
        try:
            self.messages = self._call()
        except Exception as exc:  # handed to the caller, which logs and backs off
            self.error = exc
        with self._lock:
            self.done.set()
            hand_back = self.abandoned and bool(self.messages)
        if hand_back and self.on_abandoned is not None:
            self.on_abandoned(self.messages)

    def abandon(self, on_abandoned: Callable[[list[MessageTypeDef]], None]) -> bool:
        """Give up waiting; messages that still arrive go to `on_abandoned`.

        False if the call had already finished (the caller handles its result).
        """
        with self._lock:
            if self.done.is_set():
                return False
            self.abandoned = True
            self.on_abandoned = on_abandoned
            return True


class Receiver:
    """The one thread that makes every ReceiveMessage call of a source, so
    `stop` need not wait for a long poll, and no thread is started per call.
    Calls run one at a time, in order; at most one is queued behind another
    (a restarted `deliveries` while an abandoned poll finishes)."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Receive | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], list[MessageTypeDef]]) -> Receive:
        pending = Receive(call)
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sqs-receive", daemon=True)
                self._thread.start()
        self._calls.put(pending)
        return pending

    def _run(self) -> None:
        while (pending := self._calls.get()) is not None:
            pending.run()

    def close(self) -> None:
        """The thread ends after the call it is making (at most waitseconds)."""
        self._calls.put(None)


def make_client(config: SqsConfig) -> SQSClient:
    """A boto3 SQS client for `[sqs]`: explicit keys if set, else boto3's chain.

    With no `endpoint`, calls go where `url` points unless it names AWS's own
    regional SQS host (boto3's default): pcapdaemon's [sqs] has no endpoint
    key, and a VPC endpoint or an SQS-compatible server is named in `url`.
    """
    endpoint = config.endpoint or endpoint_from_url(config.url)
    region = config.region or region_from_url(config.url)
    if region is None and endpoint is not None:
        region = DEFAULT_REGION  # signing needs one; a non-AWS server ignores it
    client: SQSClient = boto3.client(
        "sqs",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=config.accessid,
        aws_secret_access_key=config.accesskey.reveal() if config.accesskey else None,
        config=BotoConfig(
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=config.waitseconds + READ_TIMEOUT_MARGIN,
            retries={"mode": "standard", "max_attempts": CLIENT_ATTEMPTS},
        ),
    )
    return client


def endpoint_from_url(url: str | None) -> str | None:
    """`scheme://host[:port]` of a queue URL, or None for AWS's regional SQS hosts."""
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.hostname or _AWS_SQS_HOST.fullmatch(parts.hostname):
        return None
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def region_from_url(url: str | None) -> str | None:
    """`https://sqs.eu-west-1.amazonaws.com/...` (or a VPC endpoint's
    `vpce-....sqs.eu-west-1.vpce.amazonaws.com`) names its region."""
    found = _URL_REGION.search(urlsplit(url).hostname or "") if url else None
    return found.group(1) if found else None


def describe_error(exc: Exception) -> str:
    """One line for the log: the AWS code, its message, and a hint for the usual causes."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), error.get("Message", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code.isdigit():
            # An endpoint that answered the JSON protocol in XML (some
            # SQS-compatible servers do): botocore leaves the XML as the message.
            found = _XML_CODE.search(message)
            code = found.group(1) if found else f"HTTP {code}"
            found = _XML_MESSAGE.search(message)
            message = found.group(1) if found else message
        message = " ".join(message.split())[:_MAX_MESSAGE]
        text = f"{code}: {message}".rstrip(": ")
        if code in _AUTH_ERRORS or status in (401, 403):
            text += " (check sqs.accessid/sqs.accesskey or boto3's credential chain)"
        elif code in _MISSING_QUEUE:
            text += " (check sqs.url and sqs.region)"
        return text
    if isinstance(exc, NoCredentialsError):
        return f"{exc} (set sqs.accessid/sqs.accesskey or configure boto3's credential chain)"
    return f"{type(exc).__name__}: {exc}"


def unwrap_sns(body: str, max_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> str:
    """The request inside an SNS notification envelope, or `body` unchanged.

    SNS delivers `{"Type": "Notification", "Message": "<request>", ...}` unless
    the subscription has raw message delivery; accept both. A body over
    `max_bytes` is not parsed here but handed on as it is, for the parser to
    reject by its size before any JSON is read.
    """
    if '"TopicArn"' not in body or len(body.encode(errors="surrogatepass")) > max_bytes:
        return body
    try:
        envelope = json.loads(body)
    except ValueError:
        return body
    if (
        isinstance(envelope, dict)
        and envelope.get("Type") == "Notification"
        and isinstance(envelope.get("Message"), str)
    ):
        message: str = envelope["Message"]
        return message
    return body
