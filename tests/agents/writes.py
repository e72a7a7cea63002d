"""Recording one answer or NXDOMAIN straight through agents.store, as the
agents do through their recorders, reading a writer's metrics, and the
agents' Redis user and password: for tests of the key schema and writer."""

from __future__ import annotations

from collections.abc import Sequence

from agents.metrics import writer_families
from agents.redis_writer import RedisWriter
from agents.store import answer_writes, nxdomain_writes, record_writes
from agents.write_queue import OpSink


def record_answer(
    writer: OpSink, client: str, chain: Sequence[str], addresses: Sequence[str]
) -> int:
    """`answer_writes` for `client`; returns the addresses recorded."""
    writes = answer_writes(chain, addresses)
    if writes is None:
        return 0
    record_writes(writer, client, writes)
    return writes.count


def record_nxdomain(writer: OpSink, client: str, qname: str) -> None:
    record_writes(writer, client, nxdomain_writes(qname))


def writer_metric(writer: RedisWriter, name: str) -> float:
    """The writer's sample `name` (e.g. "pcapd_agent_redis_errors_total") as
    an agent's /metrics would say it."""
    (value,) = [s.value for f in writer_families("dnstap", writer) for s in f.samples
                if s.name == name]  # fmt: skip
    return float(value)


ACL_USER = "pcapd-agent"
ACL_PASSWORD = "agent-secret"
