from __future__ import annotations

from agents.dnstap.dedup import Deduper


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_window_is_per_key_and_expires() -> None:
    clock = Clock()
    d = Deduper(1.0, 100, clock)
    assert not d.seen(("10.0.0.1", "www.", 1))
    assert d.seen(("10.0.0.1", "www.", 1))
    assert not d.seen(("10.0.0.2", "www.", 1))  # another client is not a duplicate
    assert not d.seen(("10.0.0.1", "www.", 28))
    clock.now += 1.0
    assert not d.seen(("10.0.0.1", "www.", 1))


def test_bounded() -> None:
    clock = Clock()
    d = Deduper(10.0, 3, clock)
    for i in range(3):
        d.seen(i)
    assert not d.seen(99)  # full of live keys: cleared, counted
    assert d.overflows == 1 and len(d) == 1
    clock.now += 20
    for i in range(2):
        d.seen(i)
    assert len(d) == 2  # the old key was purged, not kept


def test_zero_window_disables() -> None:
    d = Deduper(0.0, 10)
    assert not d.seen(1) and not d.seen(1)
