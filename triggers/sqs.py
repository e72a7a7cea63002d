"""Requests from an SQS queue, delivered at least once.

pcapdaemon deleted each message before capturing (a crash lost it) and took
`chunksize` messages whatever it was doing. Here a message is received only
when a capture slot is free (`free_slots`), stays invisible while its captures
run (a heartbeat extends its visibility), and is deleted by `Delivery.ack`
once they are stored. A node that dies mid-capture leaves the message in the
queue: it becomes visible again after `visibility_timeout` and is taken anew.

Bounds: at most min(chunksize, free_slots(), 10) messages per receive, so the
messages held in flight never exceed the capture slots the controller offers
(plus one batch received just before `stop`, which is released at once).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from pcapd.core.backoff import RECONNECT_INITIAL, RECONNECT_MAX, Backoff
from pcapd.core.config import DEFAULT_MAX_REQUEST_BYTES, SqsConfig
from pcapd.core.logs import event
from triggers.base import Delivery
from triggers.sqs_client import Receiver, describe_error, make_client, unwrap_sns

if TYPE_CHECKING:
    from mypy_boto3_sqs.client import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

SOURCE = "sqs"
MAX_BATCH = 10  # SQS's limit for ReceiveMessage and the *Batch calls
MAX_VISIBILITY = 43_200  # SQS keeps a message invisible at most 12 h after receipt
BACKPRESSURE_POLL = 0.05  # seconds between looks at free_slots() when none is free
STOP_POLL = 0.05  # seconds between looks at `stop` while a long poll runs
# Extend when this share of the visibility timeout has passed, leaving two
# thirds of it for the call to succeed (or be retried) before the message shows.
HEARTBEAT_FRACTION = 1 / 3
HEARTBEAT_IDLE = 1.0  # seconds the heartbeat sleeps when nothing is in flight
ACK_ATTEMPTS = 3
ACK_RETRY_DELAY = 0.2

_GONE = frozenset({"ReceiptHandleIsInvalid", "AWS.SimpleQueueService.MessageNotInflight"})


@dataclass
class _InFlight:
    visibility: float
    next_beat: float
    received: float


class SqsSource:
    """Long-polls one queue; `deliveries` yields until `stop` is set.

    The heartbeat thread starts with the first `deliveries` call and runs until
    `close()`, so messages still in flight when `deliveries` returns (captures
    finishing during shutdown) stay invisible until acked or released.
    """

    name = SOURCE

    def __init__(
        self,
        config: SqsConfig,
        client_factory: Callable[[SqsConfig], SQSClient] = make_client,
        free_slots: Callable[[], int] = lambda: MAX_BATCH,
        *,
        clock: Callable[[], float] = time.monotonic,
        backoff_initial: float = RECONNECT_INITIAL,
        backoff_max: float = RECONNECT_MAX,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.max_request_bytes = max_request_bytes
        if not config.url:
            raise ValueError("sqs.url: required for the SQS source")
        self.config = config
        self.url: str = config.url
        self.receive_errors = 0  # failed receive calls, for metrics
        self.connected = False  # the last receive call worked (readiness)
        self._factory = client_factory
        self._free_slots = free_slots
        self._clock = clock
        self._backoff = Backoff(backoff_initial, backoff_max)
        self._client: SQSClient | None = None
        self._in_flight: dict[str, _InFlight] = {}  # receipt handle -> heartbeat state
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self._receiver = Receiver()

    # -- the receive loop -------------------------------------------------

    @property
    def reconnects(self) -> int:
        return self.receive_errors

    def deliveries(self, stop: threading.Event) -> Generator[Delivery, None, None]:
        self._start_heartbeat()
        failures = 0
        waiting: list[MessageTypeDef] = []  # received, not yet handed out
        try:
            while not stop.is_set():
                want = min(self.config.chunksize, MAX_BATCH, self._free_slots())
                if want <= 0:
                    stop.wait(BACKPRESSURE_POLL)
                    continue
                try:
                    messages = self._receive(want, stop)
                except _Stopped:
                    return
                except (BotoCoreError, ClientError) as exc:
                    failures += 1
                    self.receive_errors += 1
                    self.connected = False
                    delay = self._backoff.delay(failures)
                    event(
                        log, "sqs_receive_failed", logging.ERROR, url=self.url,
                        error=describe_error(exc), retry_in=round(delay, 2), failures=failures,
                    )  # fmt: skip
                    stop.wait(delay)
                    continue
                self.connected = True
                if failures:
                    event(log, "sqs_receiving_again", url=self.url, failures=failures)
                    failures = 0
                waiting.extend(messages)
                while waiting and not stop.is_set():
                    yield self._delivery(waiting.pop(0))
        finally:
            # Received but never handed out (stop, or the consumer went away):
            # give them straight back rather than leave them invisible.
            for message in waiting:
                self._release(message["ReceiptHandle"])

    def _receive(self, want: int, stop: threading.Event) -> list[MessageTypeDef]:
        client = self._get_client()

        def call() -> list[MessageTypeDef]:
            reply = client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=want,
                WaitTimeSeconds=self.config.waitseconds,
                VisibilityTimeout=self.config.visibility_timeout,
            )
            messages = reply.get("Messages", [])
            # Tracked from the moment they arrive, so the heartbeat covers a
            # batch while its first messages are still being handled.
            now = self._clock()
            with self._lock:
                for message in messages:
                    self._track(message["ReceiptHandle"], self.config.visibility_timeout, now)
            self._wake.set()
            return messages

        pending = self._receiver.submit(call)
        while not pending.done.wait(STOP_POLL):
            if stop.is_set() and pending.abandon(self._release_all):
                raise _Stopped
        if pending.error is not None:
            raise pending.error
        return pending.messages

    def _get_client(self) -> SQSClient:
        if self._client is None:
            self._client = self._factory(self.config)
        return self._client

    def _delivery(self, message: MessageTypeDef) -> Delivery:
        receipt = message["ReceiptHandle"]
        return Delivery(
            # surrogatepass: a lone surrogate that an SNS envelope escaped goes on
            # to the parser, which names the field; a strict encode raised here.
            body=unwrap_sns(message.get("Body", ""), self.max_request_bytes).encode(
                "utf-8", "surrogatepass"
            ),
            source=self.name,
            ack=partial(self._ack, receipt),
            release=partial(self._release, receipt),
            extend=partial(self._extend, receipt),
            message_id=message.get("MessageId"),
            not_for_me=partial(
                self._release if self.config.not_for_me == "release" else self._ack, receipt
            ),
        )

    # -- what a delivery does ---------------------------------------------

    def _ack(self, receipt: str) -> None:
        """Delete the message; it is done. A second ack or release is a no-op."""
        if not self._untrack(receipt):
            return
        for attempt in range(1, ACK_ATTEMPTS + 1):
            try:
                self._get_client().delete_message(QueueUrl=self.url, ReceiptHandle=receipt)
                return
            except (BotoCoreError, ClientError) as exc:
                if attempt == ACK_ATTEMPTS:
                    event(
                        log, "sqs_delete_failed", logging.ERROR, url=self.url,
                        error=describe_error(exc), note="delivered again after its "
                        "visibility timeout and dropped as a duplicate",
                    )  # fmt: skip
                    return
                time.sleep(ACK_RETRY_DELAY * attempt)

    def _release(self, receipt: str) -> None:
        """Make the message visible at once for another consumer."""
        if not self._untrack(receipt):
            return
        try:
            self._get_client().change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=0
            )
        except (BotoCoreError, ClientError) as exc:
            event(
                log, "sqs_release_failed", logging.WARNING, url=self.url,
                error=describe_error(exc), note="shows again after its visibility timeout",
            )  # fmt: skip

    def _release_all(self, messages: list[MessageTypeDef]) -> None:
        for message in messages:
            self._release(message["ReceiptHandle"])

    def _extend(self, receipt: str, seconds: float) -> None:
        """Keep the message invisible `seconds` from now; the heartbeat keeps that pace."""
        seconds = max(0.0, min(float(seconds), MAX_VISIBILITY))
        with self._lock:
            state = self._in_flight.get(receipt)
            if state is None:
                return
            state.visibility = seconds
            state.next_beat = self._clock() + seconds * HEARTBEAT_FRACTION
        try:
            self._get_client().change_message_visibility(
                QueueUrl=self.url, ReceiptHandle=receipt, VisibilityTimeout=math.ceil(seconds)
            )
        except (BotoCoreError, ClientError) as exc:
            event(
                log, "sqs_extend_failed", logging.WARNING, url=self.url, error=describe_error(exc)
            )

    def _track(self, receipt: str, visibility: float, now: float) -> None:
        self._in_flight[receipt] = _InFlight(visibility, now + visibility * HEARTBEAT_FRACTION, now)

    def _untrack(self, receipt: str) -> bool:
        with self._lock:
            return self._in_flight.pop(receipt, None) is not None

    def in_flight(self) -> int:
        """Messages received and neither acked nor released."""
        with self._lock:
            return len(self._in_flight)

    # -- the heartbeat ----------------------------------------------------

    def _start_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is None and not self._closed.is_set():
                self._heartbeat = threading.Thread(
                    target=self._beat, name="sqs-heartbeat", daemon=True
                )
                self._heartbeat.start()

    def _beat(self) -> None:
        while not self._closed.is_set():
            # Cleared before looking, so a message tracked meanwhile wakes the wait.
            self._wake.clear()
            now = self._clock()
            due: list[tuple[str, int]] = []
            next_wake = now + HEARTBEAT_IDLE
            with self._lock:
                for receipt, state in list(self._in_flight.items()):
                    if now - state.received + state.visibility > MAX_VISIBILITY:
                        # SQS refuses to hide a message longer; let it go back.
                        event(log, "sqs_visibility_limit", logging.WARNING, seconds=MAX_VISIBILITY)
                        del self._in_flight[receipt]
                    elif state.next_beat <= now:
                        due.append((receipt, math.ceil(state.visibility)))
                        state.next_beat = now + state.visibility * HEARTBEAT_FRACTION
                        next_wake = min(next_wake, state.next_beat)
                    else:
                        next_wake = min(next_wake, state.next_beat)
            for start in range(0, len(due), MAX_BATCH):
                self._extend_batch(due[start : start + MAX_BATCH])
            self._wake.wait(max(0.0, next_wake - self._clock()))

    def _extend_batch(self, batch: list[tuple[str, int]]) -> None:
        entries: list[Any] = [
            {"Id": str(index), "ReceiptHandle": receipt, "VisibilityTimeout": seconds}
            for index, (receipt, seconds) in enumerate(batch)
        ]
        try:
            reply = self._get_client().change_message_visibility_batch(
                QueueUrl=self.url, Entries=entries
            )
        except (BotoCoreError, ClientError) as exc:
            event(
                log,
                "sqs_heartbeat_failed",
                logging.WARNING,
                url=self.url,
                error=describe_error(exc),
            )
            return
        for failed in reply.get("Failed", []):
            receipt = batch[int(failed["Id"])][0]
            if failed.get("Code") in _GONE:
                self._untrack(receipt)  # deleted or already visible: nothing to keep
            event(
                log, "sqs_heartbeat_failed", logging.WARNING, url=self.url,
                code=failed.get("Code"), error=failed.get("Message", ""),
            )  # fmt: skip

    def close(self, release_in_flight: bool = False) -> None:
        """Stop the heartbeat; messages still in flight show again after their timeout.

        With `release_in_flight`, they are made visible at once instead.
        """
        self._closed.set()
        self._wake.set()
        self._receiver.close()
        if self._heartbeat is not None:
            self._heartbeat.join()
        if release_in_flight:
            with self._lock:
                receipts = list(self._in_flight)
            for receipt in receipts:
                self._release(receipt)


class _Stopped(Exception):
    """`stop` was set while a receive was waiting."""
