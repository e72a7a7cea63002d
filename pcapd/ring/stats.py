"""What a lookback ring holds and has done (`Ring.stats`): for /metrics and
`pcapd health`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RingStats:
    interface: str
    packets: int  # held now
    bytes: int  # of packets held now (record heads included)
    oldest: float | None  # Unix time of the oldest packet held
    evicted_overflow: int  # packets dropped to make room (lookback_bytes reached)
    evicted_age: int  # packets dropped for being older than lookback seconds
    kernel_dropped: int  # by the kernel on the ring's handle, since it opened
    captures: int  # being served now
    replaying: int  # of those, still copying their lookback from the ring
