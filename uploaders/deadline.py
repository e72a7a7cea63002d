"""A total deadline on every attempt of a remote sink, connect to last byte.

botocore's timeouts bound each socket operation (120 s per read), not an
upload: an endpoint that accepts and never answers, or trickles, holds a
worker far longer, and past shutdown. `Deadlined` runs each attempt in its own
daemon thread and gives up waiting at the deadline, or at once when `abandon`
is set (shutdown can wait no longer). The abandoned thread ends when its own
socket times out; until then it keeps a reference to the capture's buffer, so
the memory is released at most botocore's read timeout later. Nothing is lost
by giving up: the capture is in the spool before the first remote attempt.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from pcapd.core.events import ResultEvent
from pcapd.core.request import CaptureRequest
from uploaders.base import Artifact, Location, Uploader, UploadError

POLL = 0.1  # seconds between looks at `abandon` while an attempt runs
NOT_ATTEMPTED = "not attempted, shutting down"


class NotAttempted(UploadError):
    """A remote sink was not tried: shutdown can wait no longer. No upload
    failed, so none is logged as failed. Its callers name the sink (`sink:
    reason`), as for every upload error."""

    def __init__(self) -> None:
        super().__init__(NOT_ATTEMPTED, retryable=False)


class Deadlined:
    """An `Uploader` that wraps a remote one; same name, same `remote`."""

    def __init__(self, inner: Uploader, timeout: float, abandon: threading.Event) -> None:
        self.inner = inner
        self.name = inner.name
        self.remote = inner.remote
        self.timeout = timeout
        self.abandon = abandon

    def __repr__(self) -> str:
        return f"Deadlined({self.inner!r}, timeout={self.timeout})"

    def __getattr__(self, name: str) -> Any:
        # Sink-specific helpers (S3Uploader.target, ...) stay reachable.
        return getattr(self.inner, name)

    def check(self, request: CaptureRequest) -> None:
        self.inner.check(request)

    def writes_to(self) -> str | None:
        return self.inner.writes_to()

    def stored(self, location: Location, result: ResultEvent) -> None:
        self.inner.stored(location, result)

    def upload(self, artifact: Artifact) -> Location:
        if self.abandon.is_set():
            raise NotAttempted()
        done = threading.Event()
        outcome: list[Location | BaseException] = []

        def attempt() -> None:
            try:
                outcome.append(self.inner.upload(artifact))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append(exc)
            finally:
                done.set()

        thread = threading.Thread(target=attempt, name=f"{self.name}-attempt", daemon=True)
        thread.start()
        start = time.monotonic()
        while not done.wait(POLL):
            waited = time.monotonic() - start
            if self.abandon.is_set():
                raise UploadError(f"abandoned after {waited:.1f} s, shutting down", retryable=False)
            if waited >= self.timeout:
                raise UploadError(f"no answer within delivery.attempt_timeout={self.timeout:g} s")
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result
