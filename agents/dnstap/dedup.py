"""Per-(client, name, type) deduplication within a time window.

ShoDoHFlo remembered (name, type) globally, so a second client asking the
same name within the second was lost; here the client is part of the key.
Holds at most `max_entries` keys: expired ones are purged once per window,
and if a burst still fills it, it is cleared (and counted) rather than grown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Deduper:
    def __init__(
        self,
        window: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.max_entries = max_entries
        self.clock = clock
        self.overflows = 0
        self._seen: dict[Hashable, float] = {}
        self._next_purge = clock() + window

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, key: Hashable) -> bool:
        """True if `key` was seen less than `window` seconds ago; remembers it."""
        if self.window <= 0:
            return False
        now = self.clock()
        if now >= self._next_purge:
            self._purge(now)
        last = self._seen.get(key)
        if last is not None and now - last < self.window:
            return True
        if last is None and len(self._seen) >= self.max_entries:
            self._purge(now)
            if len(self._seen) >= self.max_entries:
                self._seen.clear()
                self.overflows += 1
        self._seen[key] = now
        return False

    def _purge(self, now: float) -> None:
        horizon = now - self.window
        self._seen = {k: t for k, t in self._seen.items() if t > horizon}
        self._next_purge = now + self.window
