"""The agents' Prometheus families and readiness checks, read at scrape time
from the counters each agent keeps already (`snapshot()` / `stats()` and the
writer's `WriterStats`): nothing is counted twice.

Every family carries `agent` ("dnstap", "flow", "dnswire"), so one dashboard
sums them across sensors. Names and meanings: docs/operations.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from agents.redis_writer import RedisWriter
from pcapd.core.configread import HostPort
from pcapd.core.metrics import (
    Check,
    FunctionCollector,
    MetricsServer,
    counter,
    gauge,
    serve_metrics,
)

SNAPSHOT_TRIES = 3  # a counter dict resized mid-copy by the agent's thread: copy again

Snapshot = Callable[[], Mapping[str, Any]]


def _stable(snapshot: Snapshot) -> Mapping[str, Any]:
    """`snapshot()`, copied again if the agent's thread changed a dict meanwhile."""
    for _ in range(SNAPSHOT_TRIES - 1):
        try:
            return snapshot()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return snapshot()


def writer_families(agent: str, writer: RedisWriter | None) -> list[Metric]:
    """What reached Redis, and what never will."""
    if writer is None:
        return []
    a = (agent,)
    w = writer.stats
    return [
        counter("agent_keys_written", "Redis operations written", {a: w.written_ops}, ("agent",)),
        counter(
            "agent_keys_dropped",
            "Redis operations never written: queue full, refused by Redis, or left at exit",
            {a: w.dropped_ops},
            ("agent",),
        ),
        counter(
            "agent_keys_rejected",
            "Of the dropped operations, those Redis refused",
            {a: w.rejected_ops},
            ("agent",),
        ),
        gauge(
            "agent_queue_depth",
            "Redis operations queued for the writer",
            {a: writer.queue_depth},
            ("agent",),
        ),
        gauge(
            "agent_queue_limit",
            "Most Redis operations the writer holds (max_queue_ops)",
            {a: writer.max_queue_ops},
            ("agent",),
        ),
        counter(
            "agent_redis_errors",
            "Failed round trips to Redis (each retried after a backoff)",
            {a: w.redis_errors},
            ("agent",),
        ),
        gauge(
            "agent_redis_connected",
            "1 while the last round trip to Redis worked",
            {a: int(writer.connected)},
            ("agent",),
        ),
    ]


def common_families(agent: str, data: Mapping[str, Any], bad: Mapping[str, int]) -> list[Metric]:
    """Responses recorded, deduplicated, kernel drops and bad input by reason."""
    a = (agent,)
    found = [
        counter(
            "agent_bad",
            "Input that could not be used, by reason",
            {(agent, reason): n for reason, n in bad.items()},
            ("agent", "reason"),
        ),
    ]
    if "kernel_dropped" in data:
        found.append(
            counter(
                "agent_kernel_dropped",
                "Packets the kernel dropped before the agent read them",
                {a: data["kernel_dropped"]},
                ("agent",),
            )
        )
    if "responses" in data:
        found += [
            counter(
                "agent_responses",
                "DNS responses recorded (NXDOMAIN included)",
                {a: data["responses"]},
                ("agent",),
            ),
            counter(
                "agent_deduplicated",
                "DNS responses skipped as repeats within dedup_window",
                {a: data["deduped"]},
                ("agent",),
            ),
        ]
    return found


def dnstap_families(data: Mapping[str, Any]) -> list[Metric]:
    bad = {**data["decode_errors"], **{f"frame_{k}": v for k, v in data["frame_errors"].items()}}
    return [
        counter(
            "agent_frames",
            "Frame Streams data frames read",
            {("dnstap",): data["frames"]},
            ("agent",),
        ),
        counter(
            "agent_messages",
            "dnstap messages read, by message type",
            {("dnstap", kind): n for kind, n in data["messages"].items()},
            ("agent", "type"),
        ),
        gauge(
            "agent_connections",
            "Resolver connections open",
            {("dnstap",): data["connections_open"]},
            ("agent",),
        ),
        *common_families("dnstap", data, bad),
    ]


def flow_families(data: Mapping[str, Any]) -> list[Metric]:
    from agents.flow import packets

    # packets.COUNTER_NAMES: "parsed" and "syn_fin" are fine packets, the rest are not.
    bad = {k: data[k] for k in packets.COUNTER_NAMES if k not in ("parsed", "syn_fin")}
    return [
        counter("agent_packets", "Packets read", {("flow",): data["packets"]}, ("agent",)),
        counter(
            "agent_flow_events",
            "Flow, RST and ICMP events recorded",
            {("flow",): data["events"]},
            ("agent",),
        ),
        counter(
            "agent_deduplicated",
            "Flow events suppressed as repeats",
            {("flow",): data["suppressed"]},
            ("agent",),
        ),
        *common_families("flow", data, bad),
    ]


def dnswire_families(data: Mapping[str, Any]) -> list[Metric]:
    bad = {k: data[k] for k in ("truncated", "malformed", "errors", "fragments_bad")}
    bad.update(data["bad_messages"])
    return [
        counter("agent_packets", "Packets read", {("dnswire",): data["packets"]}, ("agent",)),
        counter(
            "agent_messages",
            "DNS messages decoded off the wire",
            {("dnswire", "dns"): data["messages"]},
            ("agent", "type"),
        ),
        *common_families("dnswire", data, bad),
    ]


def agent_collector(
    agent: str,
    snapshot: Snapshot,
    families: Callable[[Mapping[str, Any]], list[Metric]],
    writer: RedisWriter | None,
) -> Collector:
    def collect() -> Iterator[Metric]:
        yield from families(_stable(snapshot))
        yield from writer_families(agent, writer)

    return FunctionCollector(collect)


def writer_check(writer: RedisWriter | None) -> Iterable[Check]:
    if writer is None:
        return ()
    if writer.connected:
        return (Check("redis", True, "reachable"),)
    detail = f"unreachable ({writer.stats.redis_errors} failed round trips); writes are queued"
    return (Check("redis", False, detail),)


def serve_agent_metrics(
    agent: str,
    address: HostPort | None,
    snapshot: Snapshot,
    families: Callable[[Mapping[str, Any]], list[Metric]],
    writer: RedisWriter | None,
    input_check: Callable[[], Check],
) -> MetricsServer | None:
    """The agent's /metrics, /healthz, /readyz on `address` (None: off)."""
    collectors: list[Collector] = [agent_collector(agent, snapshot, families, writer)]
    if writer is not None:
        collectors.append(writer.write_seconds)

    def checks() -> Iterator[Check]:
        yield input_check()
        yield from writer_check(writer)

    return serve_metrics(address, f"agents.{agent}.metrics_listen", collectors, checks)
