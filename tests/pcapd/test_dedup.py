from __future__ import annotations

import threading

import pytest

from pcapd.dedup import DEFAULT_MAX_IDS, RecentIds


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_second_sighting_within_window_is_a_duplicate() -> None:
    ids = RecentIds(10, Clock())
    assert ids.seen("a") is False
    assert ids.seen("a") is True
    assert ids.seen("b") is False


def test_window_expiry_counts_from_first_sighting() -> None:
    clock = Clock()
    ids = RecentIds(10, clock)
    ids.seen("a")
    clock.now += 9.9
    assert ids.seen("a") is True  # a repeat does not restart the window
    clock.now += 0.2  # 10.1 s after the first sighting
    assert "a" not in ids
    assert ids.seen("a") is False
    clock.now += 9.9
    assert ids.seen("a") is True


def test_expired_entries_are_dropped() -> None:
    clock = Clock()
    ids = RecentIds(5, clock)
    for n in range(100):
        ids.seen(f"id{n}")
    assert len(ids) == 100
    clock.now += 5
    assert len(ids) == 0


def test_contains_peeks_without_recording() -> None:
    ids = RecentIds(10, Clock())
    assert "a" not in ids
    assert ids.seen("a") is False, "the peek recorded nothing"
    assert "a" in ids


def test_size_is_bounded_and_oldest_go_first() -> None:
    ids = RecentIds(3600, Clock(), max_ids=3)
    for name in ("a", "b", "c", "d"):
        assert ids.seen(name) is False
    assert len(ids) == 3
    assert ids.evicted == 1
    assert "a" not in ids, "the oldest was evicted"
    assert ids.seen("d") is True
    assert ids.seen("a") is False  # forgotten early: the price of the bound


def test_default_bound() -> None:
    ids = RecentIds(3600, Clock())
    for n in range(DEFAULT_MAX_IDS + 10):
        ids.seen(str(n))
    assert len(ids) == DEFAULT_MAX_IDS
    assert ids.evicted == 10


def test_concurrent_sightings_record_each_id_once() -> None:
    ids = RecentIds(60)
    fresh: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        for n in range(2000):
            first = not ids.seen(f"id{n}")
            with lock:
                fresh.append(first)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(fresh) == 2000, "each id is new exactly once across all threads"


@pytest.mark.parametrize(("window", "max_ids"), [(0, 10), (-1, 10), (10, 0)])
def test_bad_bounds_are_refused(window: float, max_ids: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        RecentIds(window, max_ids=max_ids)
