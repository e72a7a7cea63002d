"""One sensor's sequence numbers (`agents.dnswire.sequence`): a gap is lost
packets at once, a late arrival within REORDER_WINDOW takes its number back
out of `lost`, a repeat is a duplicate, 32-bit wraparound is a next step,
and only a far jump is a restart."""

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


def test_the_window_edge_is_late_one_further_is_a_restart() -> None:
    seq, _ = follow(100_000, 100_000 + REORDER_WINDOW)
    assert seq.lost == REORDER_WINDOW - 1
    assert seq.see(100_001) is Seen.LATE  # REORDER_WINDOW - 1 back
    assert seq.lost == REORDER_WINDOW - 2
    assert seq.see(100_000) is Seen.RESTART  # REORDER_WINDOW back: out of the window
    assert seq.lost == REORDER_WINDOW - 2  # what was lost before stays lost
    assert seq.see(100_001) is Seen.NEXT  # followed from the restart


@pytest.mark.parametrize(
    ("jump", "expected"),
    [(RESTART_JUMP - 1, Seen.GAP), (RESTART_JUMP, Seen.RESTART)],
)
def test_a_far_jump_forward_is_a_restart(jump: int, expected: Seen) -> None:
    seq, _ = follow(TOP - 5)
    assert seq.see((TOP - 5 + jump) & TOP) is expected
    assert seq.lost == (jump - 1 if expected is Seen.GAP else 0)


def test_a_restart_to_a_low_number() -> None:
    seq, seen = follow(50_000, 50_001, 1, 2)
    assert seen == [Seen.FIRST, Seen.NEXT, Seen.RESTART, Seen.NEXT]
    assert seq.lost == 0
