"""What a recording agent does with one parsed response (`ResponseRecorder`):
shared by the dnstap agent (agents/dnstap/agent.py) and agents.dnswire."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agents.dnstap.config import DEDUP_GLOBAL
from agents.dnstap.dedup import Deduper
from agents.dnstap.record import DEDUPED, NO_ADDRESS, RECORDED, Prepared, Recorder
from agents.dnstap.response import RCODE_NOERROR, RCODE_NXDOMAIN, Response, address_text
from agents.dnstap.udp import UdpOutput
from agents.write_queue import OpSink
from pcapd.core.logs import event

log = logging.getLogger("pcapd.agents.dnstap")

QTYPE_NAMES = {1: "A", 28: "AAAA"}
# What ResponseRecorder's own filters drop (Prepared.outcome, beside record's).
OTHER_QTYPE = 10
OTHER_RCODE = 11
IGNORED = 12
# Distinct client addresses whose text form is kept; cleared when full.
CLIENT_CACHE_ENTRIES = 65_536
# The dedup key of a response the filters drop: never looked at, so one
# constant rather than a tuple per filtered response.
NOT_RECORDED = ("", 0)


@dataclass(slots=True)
class RecordStats:
    """What `ResponseRecorder` did with the responses it was given."""

    responses: int = 0
    nxdomain: int = 0
    deduped: int = 0
    no_address: int = 0  # NOERROR without a final address: nothing written
    ignored: int = 0
    other_qtype: int = 0
    other_rcode: int = 0
    udp_sent: int = 0
    udp_errors: int = 0


class RecordSettings(Protocol):
    """What a recording agent's config gives `ResponseRecorder` (DnstapConfig,
    agents.dnswire's DnswireConfig)."""

    @property
    def record_type_numbers(self) -> frozenset[int]: ...
    @property
    def ignore(self) -> tuple[str, ...]: ...
    @property
    def dedup_window(self) -> float: ...
    @property
    def dedup_scope(self) -> str: ...
    @property
    def dedup_max_entries(self) -> int: ...


class ResponseRecorder:
    """One parsed response -> the agent's filters (question type, rcode,
    ignored names) -> `record.Recorder`'s writes, with the counters and the
    optional JSON datagrams. The dnstap agent and agents.dnswire (sniffed
    responses, DNSFlow ingest) both call `record`, so the way an answer
    arrived does not change what a reader sees.

    Memory: the client cache (`CLIENT_CACHE_ENTRIES` texts) and the deduper
    (`dedup_max_entries` x ~275 bytes). Not thread-safe.
    """

    def __init__(
        self,
        writer: OpSink,
        config: RecordSettings,
        *,
        stats: RecordStats | None = None,
        udp: UdpOutput | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = stats if stats is not None else RecordStats()
        self.dedup = Deduper(config.dedup_window, config.dedup_max_entries, clock)
        self.recorder = Recorder(writer, self.dedup, config.dedup_scope == DEDUP_GLOBAL)
        self.udp = udp
        self._qtypes = config.record_type_numbers
        self._ignore = config.ignore
        self._ignore_dotted = tuple("." + s for s in config.ignore)
        self._clients: dict[bytes, str] = {}

    def prepare(self, resp: Response) -> Prepared:
        """What recording `resp` does for any client: the filters here (type,
        rcode, ignored names) and then `Recorder.prepare`."""
        if resp.qtype not in self._qtypes:
            return Prepared(OTHER_QTYPE, NOT_RECORDED, None)
        rcode = resp.rcode
        if rcode != RCODE_NOERROR and rcode != RCODE_NXDOMAIN:
            return Prepared(OTHER_RCODE, NOT_RECORDED, None)
        qname = resp.qname
        if self._ignore and (qname in self._ignore or qname.endswith(self._ignore_dotted)):
            return Prepared(IGNORED, NOT_RECORDED, None)
        return Recorder.prepare(resp)

    def record(self, packed: bytes, resp: Response, prepared: Prepared | None = None) -> None:
        """`packed`: the client's address, 4 or 16 bytes; `prepared`:
        `prepare(resp)` made earlier (agents.dnswire caches them)."""
        prep = prepared or self.prepare(resp)
        stats = self.stats
        if prep.writes is None:
            if prep.outcome == NO_ADDRESS:
                stats.no_address += 1
            elif prep.outcome == OTHER_QTYPE:
                stats.other_qtype += 1
            elif prep.outcome == OTHER_RCODE:
                stats.other_rcode += 1
            else:
                stats.ignored += 1
            return
        client = self._clients.get(packed)
        if client is None:
            if len(self._clients) >= CLIENT_CACHE_ENTRIES:
                self._clients.clear()
            client = self._clients[packed] = address_text(packed)
        outcome = self.recorder.record(client, prep)
        if outcome == RECORDED:
            stats.responses += 1
            if self.udp is not None:
                reverse = list(reversed(resp.chain))
                for _rtype, address in resp.addresses:
                    self._send_udp(
                        {"chain": reverse, "client": client, "qtype": QTYPE_NAMES[resp.qtype],
                         "status": "NOERROR", "address": address}
                    )  # fmt: skip
        elif outcome == DEDUPED:
            stats.deduped += 1
        else:
            stats.responses += 1
            stats.nxdomain += 1
            if self.udp is not None:
                self._send_udp(
                    {"chain": [resp.qname], "client": client, "qtype": QTYPE_NAMES[resp.qtype],
                     "status": "NXDOMAIN"}
                )  # fmt: skip

    def _send_udp(self, datagram: dict[str, Any]) -> None:
        assert self.udp is not None
        try:
            self.udp.send(datagram)
            self.stats.udp_sent += 1
        except OSError as exc:
            self.stats.udp_errors += 1
            if self.stats.udp_errors == 1:
                event(
                    log,
                    "dnstap_udp_error",
                    logging.WARNING,
                    target=self.udp.address,
                    error=str(exc),
                )
