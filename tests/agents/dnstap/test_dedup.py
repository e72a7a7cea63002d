from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_a_key_seen_just_before_a_swap_is_still_a_duplicate_after_it() -> None:
    clock = Clock()
    d = Deduper(1.0, 100, clock)
    clock.now += 0.9
    assert not d.seen("a")
    clock.now += 0.2  # past the swap at 101.0, 0.2 s after "a"
    assert d.seen("b") is False and d.seen("a")
    clock.now += 0.8  # 1.0 s after "a": expired, though still in a generation
    assert not d.seen("a")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 12), st.sampled_from([0.0, 0.1, 0.5, 0.99, 1.0, 1.01, 2.5])),
        max_size=200,
    )
)
def test_the_generations_answer_as_one_dict_of_first_sightings(
    steps: list[tuple[int, float]],
) -> None:
    clock = Clock()
    d = Deduper(1.0, 1_000, clock)
    first: dict[int, float] = {}  # the plain model: when each key's window began
    for key, advance in steps:
        clock.now += advance
        expected = key in first and clock.now - first[key] < 1.0
        if not expected:
            first[key] = clock.now
        assert d.seen(key) is expected
