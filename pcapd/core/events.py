"""Result events: one JSON object per (request, interface), as DESIGN.md lists."""

from __future__ import annotations

import builtins
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

STATUSES = (
    "ok", "empty", "rejected", "failed", "spooled", "delivered", "skipped", "duplicate",
    "partial",  # stored in some sinks (local disk, say), not all, and not spooled
)  # fmt: skip
STOPS = ("packets", "bytes", "duration", "timeout", "shutdown")


def iso_utc(epoch: float) -> str:
    """UTC with milliseconds: `2026-11-22T00:11:30.123Z`."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True, slots=True)
class ResultEvent:
    id: str | None
    node: str
    status: str
    alertid: int | str | None = None
    interface: str | None = None
    error: str | None = None
    stop: str | None = None
    packets: int = 0
    bytes: int = 0
    kernel_dropped: int = 0
    started: str | None = None
    ended: str | None = None
    format: str | None = None
    sha256: str | None = None
    locations: Mapping[str, str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    # SHA-256 (hex) of the request body as received, on rejections of a body
    # that did not become a request: a sender matches it by hashing what it sent.
    request_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not one of {STATUSES}")
        if self.stop is not None and self.stop not in STOPS:
            raise ValueError(f"stop {self.stop!r} not one of {STOPS}")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["locations"] = dict(self.locations)
        data["warnings"] = list(self.warnings)
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | builtins.bytes) -> ResultEvent:
        data = json.loads(text)
        data["warnings"] = tuple(data.get("warnings") or ())
        return cls(**data)
