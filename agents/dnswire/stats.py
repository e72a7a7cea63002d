"""The dnswire agent's figures: bad DNS messages by reason, and the stats
line (`snapshot`) of one `WireAgent`."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from agents.dnstap.errors import DnsFormError
from agents.dnswire import decode, reassembly

if TYPE_CHECKING:
    from agents.dnswire.agent import WireAgent

# What the shared parser's messages mean, for counting bad messages by reason.
_REASONS = (
    ("does not point back", "bad_pointer"),
    ("pointer", "truncated"),
    ("shorter than the DNS header", "short_header"),
    ("QR=0", "query"),
    ("qdcount", "question_count"),
    ("label type", "bad_label"),
    ("longer than", "long_name"),
    ("rdata of", "bad_rdata"),
    ("trailing bytes", "bad_rdata"),
    ("truncated", "truncated"),
    ("past the end", "truncated"),
)


def reason(exc: DnsFormError) -> str:
    text = str(exc)
    for needle, name in _REASONS:
        if needle in text:
            return name
    return "other"


def snapshot(agent: WireAgent) -> dict[str, Any]:
    data: dict[str, Any] = {"packets": agent.captured}
    data.update(zip(decode.COUNTER_NAMES, agent.counts, strict=True))
    data.update(zip(reassembly.COUNTER_NAMES, agent.reassembly_counts, strict=True))
    data["bad_messages"] = dict(agent.dns_errors)
    data["bad_logs_suppressed"] = agent.log_limit.suppressed
    data["sample_rate"] = agent.config.sample_rate
    data["parse_cache_hits"] = agent.parse_hits
    data["sampled_out"] = agent.sampled_out
    data["other_slot"] = agent.other_slot
    data.update(asdict(agent.record_stats))
    received, dropped, ifdropped = agent.kernel_stats()
    data.update(kernel_received=received, kernel_dropped=dropped, if_dropped=ifdropped)
    if agent.writer is not None:
        data.update(agent.writer.stats_fields())
    if agent.packer is not None:
        data.update({f"export_{k}": v for k, v in asdict(agent.packer.stats).items()})
        data["not_exported"] = agent.not_exported
    return data
