"""One parsed DNS response to ShoDoHFlo's store operations, with dedup.

The dnstap agent and the wire sniffer (agents/dnswire) both call
`Recorder.record` after their own filters (question type, rcode, ignored
names), so the same response gives the same keys whichever way it arrived.
"""

from __future__ import annotations

from agents import store
from agents.dnstap.dedup import Deduper
from agents.dnstap.response import RCODE_NXDOMAIN, Response
from agents.redis_writer import RedisWriter

# What `record` did, for the caller's counters.
RECORDED = 0
NXDOMAIN = 1
DEDUPED = 2
NO_ADDRESS = 3  # NOERROR without a final address: nothing written


class Recorder:
    """Not thread-safe: one per capture loop.

    `global_dedup`: a repeat is the same (name, type) from any client, as
    ShoDoHFlo's dnstap_agent (`MyMapper.filter`) remembered it; otherwise the
    same (client, name, type).
    """

    __slots__ = ("_global", "dedup", "writer")

    def __init__(self, writer: RedisWriter, dedup: Deduper, global_dedup: bool) -> None:
        self.writer = writer
        self.dedup = dedup
        self._global = global_dedup

    def record(self, client: str, resp: Response, writes: store.AnswerWrites | None = None) -> int:
        """Write the keys for a NOERROR or NXDOMAIN `resp` asked by `client`
        (its `str(ipaddress)`); returns one of the outcomes above. `writes`:
        `answer_writes(resp)` made earlier (agents.dnswire caches them).

        NXDOMAIN is never deduplicated: ShoDoHFlo's filter passes it before its
        dedup, so each one counts. An answer without an address is dropped
        before dedup, as ShoDoHFlo drops an empty answer section first.
        """
        if resp.rcode == RCODE_NXDOMAIN:
            store.record_nxdomain(self.writer, client, resp.qname)
            return NXDOMAIN
        if not resp.addresses:
            return NO_ADDRESS
        key = (resp.qname, resp.qtype) if self._global else (client, resp.qname, resp.qtype)
        if self.dedup.seen(key):
            return DEDUPED
        if writes is None:
            writes = answer_writes(resp)
            if writes is None:  # not reached: resp.addresses is not empty
                return NO_ADDRESS
        store.record_writes(self.writer, client, writes)
        return RECORDED


def answer_writes(resp: Response) -> store.AnswerWrites | None:
    """What a NOERROR `resp` writes for any client (None: nothing)."""
    return store.answer_writes(resp.chain, [address for _rtype, address in resp.addresses])
