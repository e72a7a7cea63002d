"""`LogLimit`: at most `lines` bad-input log lines per window of its own
clock; the rest are counted, and the budget renews when a window ends."""

from __future__ import annotations

from agents.log_limit import MIN_WINDOW, LogLimit


def test_lines_past_the_budget_are_counted_and_the_next_window_logs_again() -> None:
    now = [500.0]
    limit = LogLimit(3, 10.0, lambda: now[0])
    assert [limit.allow() for _ in range(5)] == [True, True, True, False, False]
    assert limit.suppressed == 2
    now[0] += 9.9
    assert not limit.allow() and limit.suppressed == 3
    now[0] += 0.1
    assert [limit.allow() for _ in range(4)] == [True, True, True, False]
    assert limit.suppressed == 4  # a running total, as the stats lines' counters are


def test_a_tiny_stats_interval_does_not_renew_the_budget_faster_than_min_window() -> None:
    now = [500.0]
    limit = LogLimit.per_stats_interval(3, 0.001, lambda: now[0])
    assert [limit.allow() for _ in range(3)] == [True, True, True]
    now[0] += 0.01
    assert not limit.allow()
    now[0] += MIN_WINDOW - 0.01
    assert limit.allow()
