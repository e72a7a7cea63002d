"""The capture request: a frozen value, and its dict form for the spool."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pcapd.core.fields import channel_problem, show


@dataclass(frozen=True, slots=True)
class CaptureRequest:
    id: str
    node: str | None
    nodere: str | None
    interfaces: tuple[str, ...]
    aliases: tuple[str, ...]
    bpf: str
    snap: int
    packets: int
    bytes: int
    duration: int
    timeout: int
    format: str
    tags: tuple[str, ...] = ()
    customer: str | None = None
    alertid: int | str | None = None
    packetdebug: bool = False
    logrequest: bool = False
    reply_to: str | None = None
    folder: str | None = None
    bucket: str | None = None
    acl: str | None = None
    region: str | None = None
    endpoint: str | None = None
    encryption: bool | None = None
    ts: int | None = None
    sig: str | None = None
    kid: str | None = None
    lookback: int = 0  # seconds of packets from before the request, from a ring
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.node is None) == (self.nodere is None):
            raise ValueError("exactly one of node and nodere")
        if not self.interfaces and not self.aliases:
            raise ValueError("one of interfaces and aliases")
        for name in ("snap", "packets", "bytes", "duration", "timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.lookback < 0:
            raise ValueError("lookback must not be negative")
        if self.reply_to is not None and (problem := channel_problem(self.reply_to)) is not None:
            raise ValueError(f"reply_to: {show(self.reply_to)}: {problem}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples as lists): how the spool keeps a request."""
        data = dataclasses.asdict(self)
        for name in _TUPLE_FIELDS:
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaptureRequest:
        """The inverse of `to_dict`. Fields a newer or older pcapd wrote that
        this one does not know are dropped, not fatal: spool entries outlive
        upgrades. A `reply_to` the parser would refuse (an entry written
        before it was checked, or edited) is dropped, said in `warnings`: the
        capture is still delivered and its result still published."""
        values = {k: v for k, v in data.items() if k in _REQUEST_FIELDS}
        for name in _TUPLE_FIELDS & values.keys():
            values[name] = tuple(values[name] or ())
        reply_to = values.get("reply_to")
        if reply_to is not None and (problem := channel_problem(reply_to)) is not None:
            values["reply_to"] = None
            dropped = f"reply_to: {show(reply_to)} dropped: {problem}"
            values["warnings"] = (*values.get("warnings", ()), dropped)
        return cls(**values)


_REQUEST_FIELDS = frozenset(f.name for f in dataclasses.fields(CaptureRequest))
_TUPLE_FIELDS = frozenset(
    f.name for f in dataclasses.fields(CaptureRequest) if str(f.type).startswith("tuple")
)
