"""Result events: one JSON object per (request, interface), as DESIGN.md lists."""

from __future__ import annotations

import builtins
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pcapd.core.request import CaptureRequest

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
    # Seconds of packets from before the request that the ring delivered, on
    # captures that asked for a lookback.
    lookback: float | None = None
    # Made by the publisher (pcapd.core.results) for each event it is given,
    # kept through its resends: a reader that gets one twice keys on it.
    event_id: str | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} not one of {STATUSES}")
        if self.stop is not None and self.stop not in STOPS:
            raise ValueError(f"stop {self.stop!r} not one of {STOPS}")

    @classmethod
    def for_request(
        cls,
        request: CaptureRequest,
        node: str,
        status: str,
        *,
        warnings: tuple[str, ...] | None = None,
        **rest: Any,
    ) -> ResultEvent:
        """The event about `request` on `node`: its id, alertid and format
        filled in, and its parse warnings unless the caller has a longer list
        (skipped interfaces); `rest` are the other fields (interface, error, ...)."""
        return cls(
            id=request.id, alertid=request.alertid, node=node, status=status,
            format=request.format, warnings=warnings or request.warnings, **rest,
        )  # fmt: skip

    @classmethod
    def for_body(
        cls,
        node: str,
        status: str,
        error: str,
        body: builtins.bytes | None = None,
        request_id: str | None = None,
    ) -> ResultEvent:
        """The event about a body that did not become a request. Given the
        body, it carries its SHA-256, since its id may be missing or a
        stream's entry id: the way a sender can still match it."""
        digest = hashlib.sha256(body).hexdigest() if body is not None else None
        return cls(id=request_id, node=node, status=status, error=error, request_sha256=digest)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResultEvent:
        """An event from its `as_dict()` form; keys a newer or older pcapd
        wrote that this one does not know are dropped, not fatal."""
        known = {k: v for k, v in data.items() if k in _FIELDS}
        known["warnings"] = tuple(known.get("warnings") or ())
        return cls(**known)

    def as_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies every value, and this runs
        # once or twice per result (~25 us of a storm's GIL each; fields are flat).
        data = {name: getattr(self, name) for name in _NAMES}
        data["locations"] = dict(self.locations)
        data["warnings"] = list(self.warnings)
        return data

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | builtins.bytes) -> ResultEvent:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("a result event is a JSON object")
        return cls.from_dict(data)


_NAMES = tuple(f.name for f in fields(ResultEvent))
_FIELDS = frozenset(_NAMES)
