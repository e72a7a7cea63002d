"""Per-(client, name, type) deduplication within a time window.

ShoDoHFlo remembered (name, type) globally, so a second client asking the
same name within the second was lost; here the client is part of the key.

Keys are kept in two generations, swapped once per window: a key last seen
before the previous swap is older than the window, so dropping the old
generation at a swap drops only expired keys, and nothing walks the keys
(a walk of up to `max_entries` keys once per window paused the capture
loop for its length; docs/performance.md). Holds at most `max_entries` keys: if a burst
fills both generations with live keys, they are cleared (and counted)
rather than grown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class Deduper:
    __slots__ = ("_next_swap", "_old", "_seen", "clock", "max_entries", "overflows", "window")

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
        # When each key was first seen in its window: keys added since the
        # last swap, and those added in the window before it.
        self._seen: dict[Hashable, float] = {}
        self._old: dict[Hashable, float] = {}
        self._next_swap = clock() + window

    def __len__(self) -> int:
        return len(self._seen) + len(self._old)

    def seen(self, key: Hashable) -> bool:
        """True if `key` was seen less than `window` seconds ago; remembers it."""
        if self.window <= 0:
            return False
        now = self.clock()
        if now >= self._next_swap:
            self._swap(now)
        last = self._seen.get(key)
        if last is None:
            last = self._old.get(key)
        if last is not None and now - last < self.window:
            return True
        if len(self._seen) + len(self._old) >= self.max_entries and key not in self._seen:
            self._purge(now)
            if len(self._seen) + len(self._old) >= self.max_entries:
                self._seen.clear()
                self._old.clear()
                self.overflows += 1
        self._seen[key] = now
        return False

    def _swap(self, now: float) -> None:
        # Every key in `_seen` was added before `_next_swap`; if that is a
        # whole window ago they have all expired too.
        self._old = self._seen if now < self._next_swap + self.window else {}
        self._seen = {}
        self._next_swap = now + self.window

    def _purge(self, now: float) -> None:
        horizon = now - self.window
        self._seen = {k: t for k, t in self._seen.items() if t > horizon}
        self._old = {k: t for k, t in self._old.items() if t > horizon}
