"""Capped exponential backoff with jitter for one sink's upload attempts.

Attempt n (from 0) waits `min(backoff_max, backoff_initial * 2**n)` halved,
plus a random part up to the other half ("equal jitter"): retries from many
nodes spread out, yet never collapse to zero. The clock is injectable so
tests run without sleeping.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pcapd.core.config import DeliveryConfig
from uploaders.base import UploadError

log = logging.getLogger("pcapd.uploaders.retry")

T = TypeVar("T")
BACKOFF_FACTOR = 2.0


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
        if self.backoff_initial < 0 or self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_initial={self.backoff_initial}, backoff_max={self.backoff_max}: "
                "need 0 <= backoff_initial <= backoff_max"
            )

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
        cap = min(self.backoff_max, self.backoff_initial * BACKOFF_FACTOR**attempt)
        return cap / 2 + self.rng.uniform(0, cap / 2)

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
                log.warning(
                    "upload attempt failed what=%s attempt=%d/%d retry_in=%.2fs error=%s",
                    what, attempt + 1, self.attempts, wait, exc,
                )  # fmt: skip
                self._wait(wait)
                if self.stop.is_set():
                    raise
        raise AssertionError("unreachable: attempts >= 1")
