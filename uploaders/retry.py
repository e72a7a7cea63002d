"""Retries of one sink's upload attempts, waiting as pcapd.core.backoff says
with [delivery] backoff_initial/backoff_max. The clock is injectable so tests
run without sleeping.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pcapd.core.backoff import Backoff
from pcapd.core.config import DeliveryConfig
from pcapd.core.logs import event
from uploaders.base import UploadError

log = logging.getLogger("pcapd.uploaders.retry")

T = TypeVar("T")


def _no_stop() -> threading.Event:
    return threading.Event()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    backoff_initial: float
    backoff_max: float
    sleep: Callable[[float], object] | None = None  # None: wait on `stop`
    rng: random.Random = field(default_factory=random.Random)
    stop: threading.Event = field(default_factory=_no_stop)  # set: give up between attempts

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts={self.attempts}: must be at least 1")
        try:
            self.backoff()
        except ValueError as exc:  # say it with the config's names
            raise ValueError(
                f"backoff_initial={self.backoff_initial}, backoff_max={self.backoff_max}: "
                "need 0 <= backoff_initial <= backoff_max"
            ) from exc

    def backoff(self) -> Backoff:
        return Backoff(self.backoff_initial, self.backoff_max, self.rng)

    @classmethod
    def from_config(
        cls,
        config: DeliveryConfig,
        *,
        sleep: Callable[[float], object] | None = None,
        stop: threading.Event | None = None,
    ) -> RetryPolicy:
        return cls(
            attempts=config.attempts,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
            sleep=sleep,
            stop=stop if stop is not None else threading.Event(),
        )

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt `attempt` (0-based)."""
        return self.backoff().delay(attempt + 1)

    def _wait(self, seconds: float) -> None:
        if self.sleep is not None:
            self.sleep(seconds)
        else:
            self.stop.wait(seconds)

    def run(self, action: Callable[[], T], what: str) -> T:
        """Call `action` until it succeeds, it raises a non-retryable UploadError,
        the attempts run out or `stop` is set; re-raise the last error then.

        Only UploadError is retried: anything else is a bug, not weather.
        """
        for attempt in range(self.attempts):
            try:
                return action()
            except UploadError as exc:
                last = attempt + 1 >= self.attempts or self.stop.is_set()
                if not exc.retryable or last:
                    raise
                wait = self.delay(attempt)
                event(
                    log, "upload_attempt_failed", logging.WARNING, what=what,
                    attempt=attempt + 1, attempts=self.attempts, retry_in=round(wait, 2),
                    error=str(exc),
                )  # fmt: skip
                self._wait(wait)
                if self.stop.is_set():
                    raise
        raise AssertionError("unreachable: attempts >= 1")
