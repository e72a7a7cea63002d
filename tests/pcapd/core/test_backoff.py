"""pcapd/core/backoff.py: waits double up to the cap, half fixed, half random."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcapd.core.backoff import Backoff


def test_waits_double_then_stay_at_the_cap() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    assert [backoff.cap(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


@given(st.integers(min_value=1, max_value=10_000), st.integers(0, 2**32))
def test_a_wait_lies_between_half_the_cap_and_the_cap(failures: int, seed: int) -> None:
    backoff = Backoff(initial=0.2, maximum=10.0, rng=random.Random(seed))
    cap = backoff.cap(failures)
    assert cap / 2 <= backoff.delay(failures) <= cap <= 10.0


def test_waits_from_two_nodes_spread_out() -> None:
    a, b = Backoff(rng=random.Random(1)), Backoff(rng=random.Random(2))
    assert [a.delay(5) for _ in range(5)] != [b.delay(5) for _ in range(5)]


def test_tracker_starts_again_after_a_success() -> None:
    tracker = Backoff(initial=1.0, maximum=8.0).tracker()
    waits = [tracker.failed() for _ in range(4)]
    assert 4.0 <= waits[-1] <= 8.0
    tracker.succeeded()
    assert 0.5 <= tracker.failed() <= 1.0


@pytest.mark.parametrize(
    ("initial", "maximum"), [(-1.0, 1.0), (2.0, 1.0), (float("nan"), 1.0), (0.1, float("inf"))]
)
def test_a_schedule_that_makes_no_sense_is_refused(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="initial="):
        Backoff(initial=initial, maximum=maximum)
