"""What one trigger delivery started: its captures, and the ack or release
of the delivery once every one is stored or reported (pcapd/worker.py's
`Worker.settle` tells it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from pcapd.core.logs import event
from triggers.base import Delivery

# The controller's logger: these lines were its own, and operators filter on it.
log = logging.getLogger("pcapd.controller")


@dataclass(slots=True)
class Job:
    """The captures one delivery started. The delivery is acked when every one
    is stored (uploaded or spooled) or reported; if one was captured and then
    stored nowhere, it is released instead, so a durable source delivers the
    request again."""

    delivery: Delivery
    remaining: int
    durable: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)
    finished: Callable[[bool], None] | None = None  # called once, with `durable`

    def done(self, durable: bool) -> None:
        with self.lock:
            self.remaining -= 1
            self.durable = self.durable and durable
            finished = self.remaining == 0
        if not finished:
            return
        try:
            (self.delivery.ack if self.durable else self.delivery.release)()
        except Exception:  # the source logs its own trouble; a worker must not die
            event(
                log,
                "delivery_settle_failed",
                logging.ERROR,
                exc_info=True,
                source=self.delivery.source,
            )
        if self.finished is not None:
            self.finished(self.durable)
