"""The stop a ring capture polls while its claims are answered (`_StopOr`)."""

from __future__ import annotations

import threading
import time

from pcapd.controller.claims import _StopOr


def test_a_gated_capture_stops_on_shutdown_or_on_a_taken_claim_even_when_waited_on() -> None:
    stop, taken = threading.Event(), threading.Event()
    either = _StopOr(stop, taken.is_set)
    assert not either.is_set() and either.wait(0.05) is False
    threading.Timer(0.1, taken.set).start()  # the claim's answer comes while it waits
    began = time.monotonic()
    assert either.wait(10) is True and time.monotonic() - began < 5
    shutdown = _StopOr(stop, lambda: False)
    threading.Timer(0.1, stop.set).start()
    assert shutdown.wait() is True and shutdown.is_set()
