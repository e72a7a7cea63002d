"""Ids seen recently: a request redelivered, or sent on two sources, runs once.

`RecentIds` remembers each id for `window_seconds` after it was first seen, and
at most `max_ids` ids at once: past that the oldest is forgotten early (and
counted in `evicted`), so a storm costs bounded memory, never the process.

Memory bound: `max_ids` entries of one id string each. Request ids are at most
128 ASCII characters (pcapd.core.request), HMAC signatures 64, so an entry costs
about 300 bytes in CPython (string, float, dict slot); the default 100,000
entries stay under ~30 MiB.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_IDS = 100_000


class RecentIds:
    """Thread-safe: sources and workers of one daemon share one instance."""

    def __init__(
        self,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        max_ids: int = DEFAULT_MAX_IDS,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError(f"window_seconds={window_seconds}: must be positive")
        if max_ids < 1:
            raise ValueError(f"max_ids={max_ids}: must be at least 1")
        self.window = float(window_seconds)
        self.max_ids = max_ids
        self.evicted = 0  # forgotten before their window ended, to stay within max_ids
        self._clock = clock
        self._first_seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, request_id: str) -> bool:
        """Record `request_id`; True if it was already seen within the window.

        A repeat does not restart the window: it counts from the first sighting,
        so an id sent over and over is forgotten `window` after it first came.
        """
        with self._lock:
            now = self._clock()
            self._expire(now)
            if request_id in self._first_seen:
                return True
            self._first_seen[request_id] = now
            while len(self._first_seen) > self.max_ids:
                self._first_seen.popitem(last=False)
                self.evicted += 1
            return False

    def forget(self, request_id: str) -> None:
        """Drop `request_id`, so that a request that was not served can come again."""
        with self._lock:
            self._first_seen.pop(request_id, None)

    def __contains__(self, request_id: object) -> bool:
        """Seen within the window, without recording it (a peek)."""
        with self._lock:
            self._expire(self._clock())
            return request_id in self._first_seen

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._first_seen)

    def _expire(self, now: float) -> None:
        # Entries are in first-seen order, so expired ones are all at the front.
        cutoff = now - self.window
        while self._first_seen:
            oldest, when = next(iter(self._first_seen.items()))
            if when > cutoff:
                break
            del self._first_seen[oldest]
