"""What every request source yields: a `Delivery`, and how sources are shaped."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol


def _noop() -> None:
    pass


def _noop_extend(seconds: float) -> None:
    pass


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request body and what to tell its source when it is done.

    `ack` once the captures it caused are stored (uploaded or spooled) or it
    was rejected with a result event; `release` to hand it back for another
    consumer (SQS visibility 0); `extend` keeps it invisible while a capture
    runs (SQS heartbeat). All are no-ops for pub/sub.
    """

    body: bytes
    source: str
    ack: Callable[[], None] = _noop
    release: Callable[[], None] = _noop
    extend: Callable[[float], None] = field(default=_noop_extend)
    message_id: str | None = None
    # What to do with a request for another node; None = ack (SQS may release).
    not_for_me: Callable[[], None] | None = None
    # time.monotonic() when the source had it (pub/sub: off the socket):
    # trigger latency starts here, and so does a capture on a ring interface.
    received: float = field(default_factory=time.monotonic)


class TriggerSource(Protocol):
    """A request source; `deliveries` reconnects by itself until `stop` is set."""

    name: str

    def deliveries(self, stop: threading.Event) -> Iterator[Delivery]: ...

    @property
    def connected(self) -> bool:
        """Subscribed, or the last poll worked: what readiness reports."""
        ...

    @property
    def reconnects(self) -> int:
        """Times the connection failed and was tried again after a backoff."""
        ...
