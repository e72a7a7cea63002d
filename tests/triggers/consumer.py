"""A trigger source driven on a thread, as the daemon drives it."""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

from triggers.base import Delivery, TriggerSource

Source = TypeVar("Source", bound=TriggerSource)


class Consumer(Generic[Source]):
    """Runs `deliveries` on a thread, as the controller does, collecting what comes."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.stop = threading.Event()
        self.got: queue.Queue[Delivery] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for delivery in self.source.deliveries(self.stop):
            self.got.put(delivery)

    def take(self, timeout: float = 10.0) -> Delivery:
        return self.got.get(timeout=timeout)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive(), "deliveries() did not return after stop"
        close = getattr(self.source, "close", None)
        if close is not None:
            close()
