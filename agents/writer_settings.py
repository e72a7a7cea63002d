"""The agents' writer settings: each agent's config section reads them
with these bounds (agents/flow, agents/dnstap, agents/dnswire configs), and
`WriterSettings` is what agents.redis_writer's `make_writer` takes from it."""

from __future__ import annotations

from typing import Any, Protocol

from pcapd.core.configread import Table

# Each agent's config reads these with the bounds beside them.
DEFAULT_TTL_GRACE = 900
MAX_TTL_GRACE = 2**31 - 1  # Redis EXPIRE seconds
DEFAULT_MAX_QUEUE_OPS = 200_000
MAX_QUEUE_OPS = 100_000_000
# Entries (merged operations) per script call. Redis runs a script whole,
# blocking every other client meanwhile: at ~9 us of Redis per entry here
# (20 us on a loaded machine) 250 entries keep a call under ~5 ms;
# PIPELINE_CALLS of them go per round trip, so the throughput is that of
# 2,000-entry calls.
DEFAULT_BATCH_OPS = 250
MAX_BATCH_OPS = 100_000
DEFAULT_FLUSH_INTERVAL = 0.05
MIN_FLUSH_INTERVAL = 0.001
MAX_FLUSH_INTERVAL = 10.0
# s: an idle writer PINGs Redis this often, so `connected` (readiness) stays true
DEFAULT_PING_INTERVAL = 5.0
MIN_PING_INTERVAL = 0.05
MAX_PING_INTERVAL = 3600.0
DEFAULT_WRITE_COMBINING = True


def writer_switches(t: Table) -> dict[str, Any]:
    """`write_combining` and `ping_interval`, read alike in every agent's
    section (beside its other writer bounds)."""
    return {
        "write_combining": t.get_bool("write_combining", DEFAULT_WRITE_COMBINING),
        "ping_interval": t.get_float(
            "ping_interval",
            DEFAULT_PING_INTERVAL,
            minimum=MIN_PING_INTERVAL,
            maximum=MAX_PING_INTERVAL,
        ),
    }


class WriterSettings(Protocol):
    """An agent's writer bounds, as its config gives them to `make_writer`
    (FlowConfig, DnstapConfig, agents.dnswire's DnswireConfig)."""

    @property
    def ttl_grace(self) -> int: ...
    @property
    def max_queue_ops(self) -> int: ...
    @property
    def batch_ops(self) -> int: ...
    @property
    def flush_interval(self) -> float: ...
    @property
    def client_index(self) -> bool: ...
    @property
    def write_combining(self) -> bool: ...
    @property
    def ping_interval(self) -> float: ...
