"""The capture engine: one bounded capture on one pypcap handle, into memory
(`capture`), and the spare handles opened ahead for it (`pool`).

Every `from pcapd.engine import ...` of the single module it was still works.
"""

from pcapd.engine.capture import (
    BLOCK_TIMEOUT_MS,
    MAX_POLL_WAIT,
    NOTHING_FILTER,
    PROMISC,
    CaptureError,
    CaptureLimits,
    CaptureOutcome,
    CaptureProgress,
    PacketDebug,
    StopSignal,
    available_devices,
    bpf_compile_error,
    capture,
    check_bpf,
    close_handle,
    dispatch,
    error_text,
    kernel_drops,
    open_handle,
    set_filter,
    timed_stop,
)
from pcapd.engine.pool import REFILL_RETRY, HandlePool

__all__ = [
    "BLOCK_TIMEOUT_MS",
    "MAX_POLL_WAIT",
    "NOTHING_FILTER",
    "PROMISC",
    "REFILL_RETRY",
    "CaptureError",
    "CaptureLimits",
    "CaptureOutcome",
    "CaptureProgress",
    "HandlePool",
    "PacketDebug",
    "StopSignal",
    "available_devices",
    "bpf_compile_error",
    "capture",
    "check_bpf",
    "close_handle",
    "dispatch",
    "error_text",
    "kernel_drops",
    "open_handle",
    "set_filter",
    "timed_stop",
]
