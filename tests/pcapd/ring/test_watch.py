"""Ring captures that no thread waits for (`Watcher`), on a veth pair between
namespaces this test creates: each is handed over exactly once, by the
ring's reader at its packets bound or by the watcher at its duration, its
timeout or its stop signal, with exactly the packets of its window."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pcapd.engine import CaptureOutcome
from pcapd.ring import Ring, RingCapture
from pcapd.ring.watch import Watcher
from tests.helpers import needs_root, wait_for
from tests.pcapd.ring.test_reader import FAR, limits, linked, numbers

pytestmark = needs_root


class Handed:
    """What `over` was called with, per capture, and the outcome taken then."""

    def __init__(self) -> None:
        self.calls: dict[str, list[str]] = {}
        self.outcomes: dict[str, CaptureOutcome] = {}
        self.lock = threading.Lock()

    def over(self, name: str, served: RingCapture) -> Callable[[str], None]:
        def called(reason: str) -> None:
            with self.lock:
                self.calls.setdefault(name, []).append(reason)
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
            stop.set()
            wait_for(lambda: len(handed.outcomes) == 4, timeout=20)
            ended = time.monotonic() - began
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
    assert 1.0 <= ended < 15


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
