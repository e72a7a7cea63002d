"""One sensor's sequence numbers (`agents.dnswire.sequence`): a gap is lost
packets at once, a late arrival within REORDER_WINDOW takes its number back
out of `lost`, a repeat is a duplicate, 32-bit wraparound is a next step,
and a far number is a restart only once the next one follows it; else it
was a stray, and the sequence goes on."""

from __future__ import annotations

import pytest

from agents.dnswire.sequence import REORDER_WINDOW, RESTART_JUMP, Seen, Sequence

TOP = 0xFFFFFFFF


def follow(*numbers: int) -> tuple[Sequence, list[Seen]]:
    seq = Sequence()
    return seq, [seq.see(n) for n in numbers]


def test_in_order_across_the_wrap_loses_nothing() -> None:
    seq, seen = follow(TOP - 1, TOP, 0, 1)
    assert seen == [Seen.FIRST, Seen.NEXT, Seen.NEXT, Seen.NEXT]
    assert seq.lost == 0


def test_a_late_packet_is_reordered_and_no_longer_lost() -> None:
    seq, seen = follow(1, 2, 4)
    assert seen[-1] is Seen.GAP and seq.lost == 1
    assert seq.see(3) is Seen.LATE and seq.lost == 0
    assert seq.see(3) is Seen.DUPLICATE and seq.lost == 0
    assert seq.see(4) is Seen.DUPLICATE and seq.see(5) is Seen.NEXT


def test_late_across_the_wrap() -> None:
    seq, seen = follow(TOP - 1, 0, TOP)
    assert seen == [Seen.FIRST, Seen.GAP, Seen.LATE]
    assert seq.lost == 0


def test_a_packet_from_before_the_first_one_seen_is_late_but_was_never_lost() -> None:
    seq, seen = follow(10, 11, 9, 9)
    assert seen == [Seen.FIRST, Seen.NEXT, Seen.LATE, Seen.DUPLICATE]
    assert seq.lost == 0


def test_the_window_edge_is_late_one_further_is_far() -> None:
    seq, _ = follow(100_000, 100_000 + REORDER_WINDOW)
    assert seq.lost == REORDER_WINDOW - 1
    assert seq.see(100_001) is Seen.LATE  # REORDER_WINDOW - 1 back
    assert seq.lost == REORDER_WINDOW - 2
    assert seq.see(100_000) is Seen.FAR  # REORDER_WINDOW back: out of the window
    assert seq.see(100_002) is Seen.LATE  # the old sequence goes on: 100,000 was a stray
    assert (seq.lost, seq.strays, seq.restarts) == (REORDER_WINDOW - 3, 1, 0)


@pytest.mark.parametrize(
    ("jump", "expected"),
    [(RESTART_JUMP - 1, Seen.GAP), (RESTART_JUMP, Seen.FAR)],
)
def test_a_far_jump_forward_is_far(jump: int, expected: Seen) -> None:
    seq, _ = follow(TOP - 5)
    assert seq.see((TOP - 5 + jump) & TOP) is expected
    assert seq.lost == (jump - 1 if expected is Seen.GAP else 0)


def test_a_late_copy_from_far_back_is_a_stray_not_a_restart() -> None:
    seq, seen = follow(*range(100_000, 100_011), 98_000, 100_011)
    assert seen[-2:] == [Seen.FAR, Seen.NEXT]
    assert (seq.lost, seq.restarts, seq.strays) == (0, 0, 1)


def test_a_spoofed_number_far_ahead_is_one_stray() -> None:
    seq, seen = follow(1_000, 1_001, 1_001 + RESTART_JUMP, 1_002, 1_003)
    assert seen[2:] == [Seen.FAR, Seen.NEXT, Seen.NEXT]
    assert (seq.lost, seq.restarts, seq.strays) == (0, 0, 1)


def test_far_numbers_that_follow_nothing_are_each_a_stray() -> None:
    seq, seen = follow(10, 11, 3_000_000, 4_000_000_000, 12)
    assert seen[2:] == [Seen.FAR, Seen.FAR, Seen.NEXT]
    assert (seq.lost, seq.restarts, seq.strays) == (0, 0, 2)


def test_a_restart_to_a_low_number() -> None:
    seq, seen = follow(50_000, 50_001, 1, 2, 3)
    assert seen == [Seen.FIRST, Seen.NEXT, Seen.FAR, Seen.RESTART, Seen.NEXT]
    assert (seq.lost, seq.restarts, seq.strays) == (0, 1, 0)


def test_the_number_that_confirms_a_restart_is_followed_from_the_far_one() -> None:
    """Lost, late and repeated numbers count from the far one on; what was
    lost before stays lost."""
    seq, seen = follow(1, 3, 5_000_000, 4_999_999, 5_000_002, 4_999_999, 5_000_001)
    assert seen[2:] == [Seen.FAR, Seen.RESTART, Seen.GAP, Seen.DUPLICATE, Seen.LATE]
    assert (seq.lost, seq.reordered, seq.duplicates, seq.restarts) == (1, 2, 1, 1)
