"""The agents' Prometheus families and readiness checks, read at scrape time
from the counters each agent keeps already (`snapshot()` / `stats()` and the
writer's `WriterStats`): nothing is counted twice.

Every family carries `agent` ("dnstap", "flow", "dnswire"), so one dashboard
sums them across sensors. Names and meanings: docs/operations.md.
"""

from __future__ import annotations

import collections
import time
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

# s: readiness fails this long after Redis last refused a write as not
# permitted (an ACL): long enough to be seen between a live agent's round
# trips, short enough to clear soon after the user's ACL is mended.
ACCESS_REFUSED_S = 60.0
SNAPSHOT_TRIES = 3  # a counter dict resized mid-copy by the agent's thread: copy again

Snapshot = Callable[[], Mapping[str, Any]]
Family = Callable[..., Metric]  # pcapd.core.metrics.counter or gauge


def _stable(snapshot: Snapshot) -> Mapping[str, Any]:
    """`snapshot()`, copied again if the agent's thread changed a dict meanwhile."""
    for _ in range(SNAPSHOT_TRIES - 1):
        try:
            return snapshot()
        except RuntimeError:  # "dictionary changed size during iteration"
            continue
    return snapshot()


def _each(agent: str, rows: Iterable[tuple[Family, str, str, float]]) -> list[Metric]:
    """One family per (counter or gauge, name, help, value), labelled `agent`."""
    return [make(name, doc, {(agent,): v}, ("agent",)) for make, name, doc, v in rows]


def writer_families(agent: str, writer: RedisWriter | None) -> list[Metric]:
    """What reached Redis, and what never will."""
    if writer is None:
        return []
    w = writer.stats
    return _each(agent, [
        (counter, "agent_keys_written", "Redis operations written", w.written_ops),
        (counter, "agent_keys_dropped",
         "Redis operations never written: queue full, refused by Redis, or left at exit",
         w.dropped_ops),
        (counter, "agent_keys_rejected", "Of the dropped operations, those Redis refused",
         w.rejected_ops),
        (counter, "agent_expires_lost",
         "Keys written whose EXPIRE Redis refused or never answered: they have no TTL",
         w.expires_lost),
        (counter, "agent_index_lost",
         "Keys created that never reached their client's index (refused, or given up)",
         w.index_lost),
        (gauge, "agent_queue_depth", "Redis operations queued for the writer",
         writer.queue_depth),
        (gauge, "agent_queue_limit", "Most Redis operations the writer holds (max_queue_ops)",
         writer.max_queue_ops),
        (counter, "agent_redis_errors",
         "Failed round trips to Redis: no answer or a \"not now\" (each retried after a backoff)",
         w.redis_errors),
        (counter, "agent_redis_not_now",
         'Of the failed round trips, those Redis answered "not now" (OOM, READONLY, LOADING ...)',
         w.redis_not_now),
        (gauge, "agent_redis_connected",
         "1 while Redis answers (a \"not now\" too: /readyz names it; on a cluster, some primary)",
         int(writer.connected)),
        (gauge, "agent_redis_slots_unanswered",
         'Cluster hash slots whose last write got no answer or a "not now" (a failover)',
         len(writer.unanswered or ())),
    ])  # fmt: skip


def common_families(agent: str, data: Mapping[str, Any], bad: Mapping[str, int]) -> list[Metric]:
    """Bad input by reason; kernel drops, responses recorded and deduplicated
    where the agent has them."""
    rows: list[tuple[Family, str, str, float]] = []
    if "kernel_dropped" in data:
        rows.append((counter, "agent_kernel_dropped",
                     "Packets the kernel dropped before the agent read them",
                     data["kernel_dropped"]))  # fmt: skip
    if "responses" in data:
        rows += [
            (counter, "agent_responses", "DNS responses recorded (NXDOMAIN included)",
             data["responses"]),
            (counter, "agent_deduplicated",
             "DNS responses skipped as repeats within dedup_window", data["deduped"]),
        ]  # fmt: skip
    reasons = {(agent, reason): n for reason, n in bad.items()}
    return [
        counter("agent_bad", "Input that could not be used, by reason", reasons,
                ("agent", "reason")),
        *_each(agent, rows),
    ]  # fmt: skip


def dnstap_families(data: Mapping[str, Any]) -> list[Metric]:
    bad = {**data["decode_errors"], **{f"frame_{k}": v for k, v in data["frame_errors"].items()}}
    messages = {("dnstap", kind): n for kind, n in data["messages"].items()}
    return [
        counter("agent_messages", "dnstap messages read, by message type", messages,
                ("agent", "type")),
        *_each("dnstap", [
            (counter, "agent_frames", "Frame Streams data frames read", data["frames"]),
            (gauge, "agent_connections", "Resolver connections open", data["connections_open"]),
        ]),
        *common_families("dnstap", data, bad),
    ]  # fmt: skip


def flow_families(data: Mapping[str, Any]) -> list[Metric]:
    from agents.flow import packets

    # packets.COUNTER_NAMES: "parsed" and "syn_fin" are fine packets, the rest are not.
    bad = {k: data[k] for k in packets.COUNTER_NAMES if k not in ("parsed", "syn_fin")}
    return [
        *_each("flow", [
            (counter, "agent_packets", "Packets read", data["packets"]),
            (counter, "agent_flow_events", "Flow, RST and ICMP events recorded", data["events"]),
            (counter, "agent_deduplicated", "Flow events suppressed as repeats",
             data["suppressed"]),
        ]),
        *common_families("flow", data, bad),
    ]  # fmt: skip


def dnswire_families(data: Mapping[str, Any]) -> list[Metric]:
    bad = {k: data[k] for k in ("truncated", "malformed", "errors", "fragments_bad")}
    bad.update(data["bad_messages"])
    return [
        counter("agent_messages", "DNS messages decoded off the wire",
                {("dnswire", "dns"): data["messages"]}, ("agent", "type")),
        *_each("dnswire", [(counter, "agent_packets", "Packets read", data["packets"])]),
        *common_families("dnswire", data, bad),
    ]  # fmt: skip


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
    """`redis`; `redis_access`, failing, for ACCESS_REFUSED_S after Redis
    refused a write as not permitted (an ACL: no resend helps); with a
    cluster also `redis_slots`, failing while some slots' primaries do not
    answer (a failover under way) though the rest do."""
    if writer is None:
        return ()
    checks = []
    if not writer.connected:
        errors = writer.stats.redis_errors
        tried = errors or writer.failed_pings
        reached = f"unreachable ({errors} failed round trips)" if tried else "not reached yet"
        checks.append(Check("redis", False, f"{reached}; writes are queued"))
    elif (not_now := writer.not_now) is not None:
        detail = f"answering, not taking writes now: {not_now}; writes are queued"
        checks.append(Check("redis", False, detail))
    else:
        checks.append(Check("redis", True, "reachable"))
    refused = writer.access_refused
    if refused is not None and (ago := time.monotonic() - refused[0]) < ACCESS_REFUSED_S:
        detail = (f"Redis refused writes as not permitted {ago:.0f} s ago: {refused[1]}; "
                  "give the agent's Redis user the commands docs/operations.md lists")  # fmt: skip
        checks.append(Check("redis_access", False, detail))
    unanswered = writer.unanswered
    if unanswered is not None:
        checks.append(_slots_check(unanswered))
    return checks


def _slots_check(unanswered: Mapping[int, str]) -> Check:
    if not unanswered:
        return Check("redis_slots", True, "every hash slot written to answered")
    per_node = collections.Counter(unanswered.values())
    nodes = ", ".join(f"{n} slot(s) on {node}" for node, n in sorted(per_node.items()))
    return Check(
        "redis_slots", False,
        f'degraded: no answer or a "not now" for writes to {nodes}; '
        "they wait in the queue and are retried",
    )  # fmt: skip


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
