"""Capped exponential backoff with equal jitter: the one every retry and
reconnect loop uses (uploads, result publishing, pub/sub, streams, SQS, the
agents' Redis writer).

Wait n (from 1) is `min(maximum, initial * 2**(n-1))`, half of it fixed and
half random ("equal jitter"): nodes that lost Redis together come back spread
out, and a wait never collapses to zero.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

RECONNECT_INITIAL = 0.2  # seconds; a lost Redis or SQS is usually back quickly
RECONNECT_MAX = 10.0  # a node deaf for longer than this per try is too deaf
FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """The schedule; `Backoff()` is the reconnect schedule of the sources."""

    initial: float = RECONNECT_INITIAL
    maximum: float = RECONNECT_MAX
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.initial) and math.isfinite(self.maximum)):
            raise ValueError(f"initial={self.initial}, maximum={self.maximum}: must be finite")
        if self.initial < 0 or self.maximum < self.initial:
            raise ValueError(
                f"initial={self.initial}, maximum={self.maximum}: need 0 <= initial <= maximum"
            )

    def cap(self, failures: int) -> float:
        """The longest wait after `failures` consecutive failures (1 = the first)."""
        exponent = min(max(failures - 1, 0), 64)  # 2**64 * initial is past any maximum
        return min(self.maximum, self.initial * FACTOR**exponent)

    def delay(self, failures: int) -> float:
        cap = self.cap(failures)
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def tracker(self) -> BackoffTracker:
        return BackoffTracker(self)


class BackoffTracker:
    """Consecutive failures of one loop: `failed()` gives the next wait,
    `succeeded()` starts again from the shortest."""

    def __init__(self, backoff: Backoff) -> None:
        self.backoff = backoff
        self.failures = 0

    def failed(self) -> float:
        self.failures += 1
        return self.backoff.delay(self.failures)

    def succeeded(self) -> None:
        self.failures = 0
