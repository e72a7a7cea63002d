"""Ring captures that no thread waits for (`Watcher`), on a veth pair between
namespaces this test creates: each is handed over exactly once, by the
ring's reader at its packets bound or by the watcher at its duration, its
timeout or its stop signal, with exactly the packets of its window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pcapd.core.logs import _FIELDS
from pcapd.engine import MAX_POLL_WAIT, CaptureOutcome
from pcapd.ring import STOP_FLUSH, Ring, RingCapture
from pcapd.ring.watch import WATCH_FAILED, Watcher
from tests.helpers import needs_root, wait_for
from tests.pcapd.ring.test_reader import FAR, limits, linked, numbers

pytestmark = needs_root


class Handed:
    """What `over` was called with, per capture, when, and the outcome taken then."""

    def __init__(self) -> None:
        self.calls: dict[str, list[str]] = {}
        self.outcomes: dict[str, CaptureOutcome] = {}
        self.at: dict[str, float] = {}  # monotonic time of the first call
        self.lock = threading.Lock()

    def over(self, name: str, served: RingCapture) -> Callable[[str], None]:
        def called(reason: str) -> None:
            with self.lock:
                self.calls.setdefault(name, []).append(reason)
                self.at.setdefault(name, time.monotonic())
            self.outcomes[name] = served.outcome(reason)

        return called


def register(ring: Ring, **bounds: float) -> RingCapture:
    return ring.register(
        limits(**bounds),  # type: ignore[arg-type]
        fmt="pcap", bpf="", lookback=0, comments={"request_id": "t"},
    )  # fmt: skip


def test_each_watched_capture_is_handed_over_once_by_its_own_bound() -> None:
    with linked(185) as link:
        ring = link.ring()
        watcher, handed = Watcher(), Handed()
        stop, never = threading.Event(), threading.Event()
        try:
            began = time.monotonic()
            served = {
                "packets": register(ring, packets=3),
                "duration": register(ring, duration=1),
                "timeout": register(ring, timeout=0.5, duration=FAR),
                "shutdown": register(ring),
            }
            for name, capture in served.items():
                signal = stop if name == "shutdown" else never
                watcher.watch(capture, signal, handed.over(name, capture))
            link.send(5)
            wait_for(lambda: "packets" in handed.calls, timeout=20)
            wait_for(lambda: "duration" in handed.calls, timeout=20)
            stop.set()
            wait_for(lambda: len(handed.outcomes) == 4, timeout=20)
            link.send(5)  # after every window: in none of the files
            wait_for(lambda: len(watcher) == 0, timeout=5)
        finally:
            ring.stop()
    # Once each; the reader's hand-over carries no reason (the feed has it).
    assert handed.calls == {
        "packets": [""], "duration": ["duration"], "timeout": ["timeout"],
        "shutdown": ["shutdown"],
    }  # fmt: skip
    stops = {name: outcome.stop for name, outcome in handed.outcomes.items()}
    assert stops == {n: n for n in ("packets", "duration", "timeout", "shutdown")}
    assert [n for n, _ in numbers(handed.outcomes["packets"])] == [0, 1, 2]
    for name in ("duration", "timeout", "shutdown"):
        assert [n for n, _ in numbers(handed.outcomes[name])] == [0, 1, 2, 3, 4], name
    # Handed over at its duration, give or take a look and the flush.
    assert 1.0 <= handed.at["duration"] - began <= 1.0 + LATE


# How late a watched capture may be handed over after its bound: one look
# (MAX_POLL_WAIT), the open kernel block's flush, and a loaded machine's slack.
LATE = MAX_POLL_WAIT + STOP_FLUSH + 1.0


def test_a_capture_watched_while_the_watcher_sleeps_is_handed_over_at_its_duration() -> None:
    """The watcher is not woken for a new capture when it sleeps for another
    (it looks within MAX_POLL_WAIT): one watched later ends at its duration
    all the same, not at the sleeping one's bound."""
    with linked(230) as link:
        ring = link.ring()
        watcher, handed = Watcher(), Handed()
        never = threading.Event()
        try:
            far = register(ring)
            watcher.watch(far, never, handed.over("far", far))
            wait_for(lambda: watcher._idle is False and len(watcher) == 1, timeout=5)
            time.sleep(MAX_POLL_WAIT / 2)  # asleep in its wait for `far`
            began = time.monotonic()
            short = register(ring, duration=1)
            watcher.watch(short, never, handed.over("short", short))
            wait_for(lambda: "short" in handed.calls, timeout=20)
            assert handed.calls == {"short": ["duration"]}
            assert 1.0 <= handed.at["short"] - began <= 1.0 + LATE
            never.set()
            far.cancel()
        finally:
            ring.stop()


class Broken:
    """A stop signal that raises when looked at: what a bug in a capture's
    look would do to the watcher."""

    def is_set(self) -> bool:
        raise RuntimeError("broken stop signal")


def test_a_capture_the_watcher_cannot_look_at_is_handed_over_and_the_rest_still_watched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with linked(231) as link:
        ring = link.ring()
        watcher, handed = Watcher(), Handed()
        try:
            broken = register(ring)
            watcher.watch(broken, Broken(), handed.over("broken", broken))
            wait_for(lambda: "broken" in handed.calls, timeout=20)
            later = register(ring, duration=1)
            watcher.watch(later, threading.Event(), handed.over("later", later))
            wait_for(lambda: "later" in handed.calls, timeout=20)
            wait_for(lambda: len(watcher) == 0, timeout=5)
        finally:
            ring.stop()
    assert handed.calls == {"broken": [WATCH_FAILED], "later": ["duration"]}
    # Cut where it failed, and its result says why it ended early.
    assert broken._feed.cutoff and broken._cut_drops is not None
    assert broken.warnings[-1:] == (
        "ended early: its bounds could not be checked (RuntimeError('broken stop signal'); "
        "log event=ring_watch_failed)",
    )
    failed = [r for r in caplog.records if r.msg == "ring_watch_failed"]
    assert len(failed) == 1 and failed[0].exc_info is not None
    assert getattr(failed[0], _FIELDS) == {"interface": link.pair.dev_a}


def test_kernel_drops_are_counted_when_a_capture_ends_not_when_it_is_taken() -> None:
    """A capture's outcome may be taken long after it ended (a busy upload
    pool): the ring's drops counted after its end are not its own."""
    with linked(232) as link:
        ring = link.ring()
        try:
            full = register(ring, packets=2)
            timed = register(ring)
            link.send(2)
            wait_for(lambda: full.full, timeout=20)
            stop = threading.Event()
            stop.set()
            timed.watched(stop, lambda reason: None)
            assert timed.look(time.monotonic()) is not None  # the timed stop: its cutoff
        finally:
            ring.stop()  # the reader is gone: nothing refreshes `dropped` now
        ended = ring.dropped
        ring.dropped += 100  # drops after both windows
        assert full.outcome().kernel_dropped <= ended
        assert timed.outcome("shutdown").kernel_dropped <= ended


def test_a_capture_full_before_it_is_watched_is_handed_over_by_watch() -> None:
    with linked(186) as link:
        ring = link.ring()
        watcher, handed = Watcher(), Handed()
        try:
            capture = register(ring, packets=2)
            link.send(2)
            wait_for(lambda: capture.full, timeout=20)
            watcher.watch(capture, threading.Event(), handed.over("early", capture))
            assert handed.calls == {"early": [""]}  # here, at once
            assert len(watcher) == 0
        finally:
            ring.stop()
    assert [n for n, _ in numbers(handed.outcomes["early"])] == [0, 1]
