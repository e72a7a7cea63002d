"""The stop a ring capture polls while its claims are answered (`_StopOr`)."""

from __future__ import annotations

import threading

from pcapd.controller.claims import _StopOr


def test_a_gated_capture_stops_on_shutdown_or_on_a_taken_claim() -> None:
    stop, taken = threading.Event(), threading.Event()
    either = _StopOr(stop, taken.is_set)
    assert not either.is_set()
    taken.set()  # the claim's answer: taken
    assert either.is_set()
    shutdown = _StopOr(stop, lambda: False)
    assert not shutdown.is_set()
    stop.set()
    assert shutdown.is_set()
