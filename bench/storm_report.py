"""What bench/trigger_storm.py reports per source (`Figures`) and its
table, with each source as a ratio against the first."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from benchlib import percentile


@dataclass
class Figures:
    source: str
    sent: int
    accepted: int
    rejected: int
    duplicate: int
    missing: int
    extra: int  # requests with more than one result (one interface: one is right)
    span: float  # first send -> last result, s
    latencies: list[float]  # ms, accepted requests
    reasons: collections.Counter[str]
    cpu: float = 0.0  # s of the daemon's CPU, first send -> last result

    @property
    def cpu_per_request(self) -> float:
        """ms of the daemon's CPU per request sent (refused ones cost less)."""
        return self.cpu * 1000 / self.sent if self.sent else 0.0

    @property
    def accepted_rate(self) -> float:
        return self.accepted / self.span if self.span else 0.0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.span if self.span else 0.0


def report(all_figures: list[Figures]) -> bool:
    ok = True
    print(f"{'source':8} {'sent':>5} {'acc':>5} {'rej':>5} {'dup':>4} {'miss':>5} {'extra':>5} "
          f"{'acc/s':>7} {'rej/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10}")  # fmt: skip
    for f in all_figures:
        p50, p99 = percentile(f.latencies, 0.5), percentile(f.latencies, 0.99)
        print(f"{f.source:8} {f.sent:5} {f.accepted:5} {f.rejected:5} {f.duplicate:4} "
              f"{f.missing:5} {f.extra:5} {f.accepted_rate:7.0f} {f.rejected_rate:7.0f} "
              f"{p50:8.1f} {p99:8.1f} {f.cpu_per_request:10.2f}")  # fmt: skip
        ok = ok and f.missing == 0 and f.extra == 0 and f.duplicate == 0
    base = all_figures[0]
    b50, b99 = percentile(base.latencies, 0.5), percentile(base.latencies, 0.99)
    for f in all_figures[1:]:
        if base.accepted and b50 and b99 and f.latencies:
            p50, p99 = percentile(f.latencies, 0.5), percentile(f.latencies, 0.99)
            print(f"  {f.source}/{base.source}: accepted {f.accepted / base.accepted:.2f}x, "
                  f"p50 latency {p50 / b50:.2f}x, p99 latency {p99 / b99:.2f}x")  # fmt: skip
    for f in all_figures:
        for reason, n in f.reasons.most_common(3):
            print(f"  {f.source} rejected {n}: {reason}")
    return ok
