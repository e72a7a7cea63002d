"""A budget of bad-input log lines per time window, shared by the agents.

A sender of garbage must not fill the disk with warnings, and a long-running
agent must not go quiet for good once it met some: at most `lines` lines per
`window` seconds are logged, the rest only counted (`suppressed`, a running
total for the stats line). The window runs on its own clock, so the budget
renews with stats_interval = 0 too.
"""

from __future__ import annotations

import time
from collections.abc import Callable

WINDOW = 60.0  # s: the window of `per_stats_interval` when stats_interval = 0
# s: its shortest window, whatever stats_interval: at 0.001 s the budget
# would renew ~1,000 times a second.
MIN_WINDOW = 1.0


class LogLimit:
    """Not thread-safe: each agent asks from its one input loop."""

    def __init__(
        self, lines: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lines = lines
        self.window = window
        self.suppressed = 0
        self._clock = clock
        self._used = 0
        self._window_end = clock() + window

    @classmethod
    def per_stats_interval(
        cls, lines: int, stats_interval: float, clock: Callable[[], float] = time.monotonic
    ) -> LogLimit:
        """A budget renewed about as often as stats lines are logged (at most
        once per MIN_WINDOW s), and every WINDOW s when none are."""
        return cls(lines, max(stats_interval, MIN_WINDOW) if stats_interval else WINDOW, clock)

    def allow(self) -> bool:
        """True if this line may be logged; else it is counted as suppressed."""
        now = self._clock()
        if now >= self._window_end:
            self._used = 0
            self._window_end = now + self.window
        if self._used < self.lines:
            self._used += 1
            return True
        self.suppressed += 1
        return False
