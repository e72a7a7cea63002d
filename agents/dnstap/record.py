"""One parsed DNS response to ShoDoHFlo's store operations, with dedup.

The dnstap agent and the wire sniffer (agents/dnswire) both call
`Recorder.record` after their own filters (question type, rcode, ignored
names), so the same response gives the same keys whichever way it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents import store
from agents.dnstap.dedup import Deduper
from agents.dnstap.response import RCODE_NXDOMAIN, Response
from agents.write_queue import OpSink

# What `record` did, for the caller's counters.
RECORDED = 0
NXDOMAIN = 1
DEDUPED = 2
NO_ADDRESS = 3  # NOERROR without a final address: nothing written


@dataclass(frozen=True, slots=True)
class Prepared:
    """What recording a response does for any client, worked out once:
    `outcome` (RECORDED before dedup, NXDOMAIN or NO_ADDRESS, or the caller's
    own codes for what its filters drop), the (name, type) dedup key, and
    the writes (None: nothing to write). agents.dnswire keeps these with its
    parse cache, so a repeated answer skips all of it."""

    outcome: int
    name: tuple[str, int]
    writes: store.AnswerWrites | None


class Recorder:
    """Not thread-safe: one per capture loop.

    `global_dedup`: a repeat is the same (name, type) from any client, as
    ShoDoHFlo's dnstap_agent (`MyMapper.filter`) remembered it; otherwise the
    same (client, name, type). `writer`: the RedisWriter, or an OpBuffer
    handed to it per batch.
    """

    __slots__ = ("_global", "dedup", "writer")

    def __init__(self, writer: OpSink, dedup: Deduper, global_dedup: bool) -> None:
        self.writer = writer
        self.dedup = dedup
        self._global = global_dedup

    @staticmethod
    def prepare(resp: Response) -> Prepared:
        """NXDOMAIN is never deduplicated: ShoDoHFlo's filter passes it before
        its dedup, so each one counts. An answer without an address is
        dropped before dedup, as ShoDoHFlo drops an empty answer section first."""
        name = (resp.qname, resp.qtype)
        if resp.rcode == RCODE_NXDOMAIN:
            return Prepared(NXDOMAIN, name, store.nxdomain_writes(resp.qname))
        writes = answer_writes(resp)
        return Prepared(NO_ADDRESS if writes is None else RECORDED, name, writes)

    def record(self, client: str, prep: Prepared) -> int:
        """Write the keys `prep` (`prepare` of a NOERROR or NXDOMAIN response)
        holds for `client` (its `str(ipaddress)`); returns one of the
        outcomes above."""
        writes = prep.writes
        if writes is None:
            return prep.outcome
        if prep.outcome == RECORDED and self.dedup.seen(
            prep.name if self._global else (client, prep.name)
        ):
            return DEDUPED
        store.record_writes(self.writer, client, writes)
        return prep.outcome


def answer_writes(resp: Response) -> store.AnswerWrites | None:
    """What a NOERROR `resp` writes for any client (None: nothing)."""
    return store.answer_writes(resp.chain, [address for _rtype, address in resp.addresses])
