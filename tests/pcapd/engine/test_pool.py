"""Spare handles: taken ready, replaced in the background."""

from __future__ import annotations

import time

from pcapd.engine import HandlePool, close_handle, set_filter
from tests.helpers import free_port
from tests.pcapd.engine.test_capture import run_capture, sender


def test_pool_hands_out_a_ready_handle_then_replaces_it() -> None:
    port = free_port()
    pool = HandlePool(("lo",), 1 << 20)
    pool.start()
    try:
        deadline = time.monotonic() + 5
        while pool._spares.get("lo") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        spare = pool._spares["lo"]
        handle = pool.take("lo")
        assert handle is spare and pool._spares["lo"] is None
        set_filter(handle, "lo", f"udp and dst port {port}")
        sender(port, 2, 0.01, delay=0)
        outcome = run_capture(handle, packets=2)
        close_handle(handle)
        assert outcome.packets == 2
        pool.replenish()
        while pool._spares.get("lo") is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool._spares.get("lo") is not None
    finally:
        pool.stop()
