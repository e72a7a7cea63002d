"""Recording one answer or NXDOMAIN straight through agents.store, as the
agents do through their recorders: for tests of the key schema and writer."""

from __future__ import annotations

from collections.abc import Sequence

from agents.redis_writer import OpSink
from agents.store import answer_writes, nxdomain_writes, record_writes


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
