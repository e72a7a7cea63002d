"""A spool entry: what its sidecar holds, how it is written and read back,
and what a sidecar must hold to be delivered from (uploaders/spool.py keeps
the files).

A field that delivers the entry (DELIVERY) missing or malformed makes the
sidecar unreadable: the entry is kept, never uploaded wrongly or removed.
One that only tells what befell it (DIAGNOSTICS) is dropped, the entry
drains without it. Version 1 sidecars (one joined `last_error`) read as
version 2 ones (`errors` by sink, `note`).
"""

from __future__ import annotations

import dataclasses
import json
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pcapd.core.fields import text_problem
from pcapd.core.request import CaptureRequest

SPOOL_VERSION = 2  # 1: one joined `last_error`, read as `errors` and `note`
MAX_ERROR_LEN = 2000


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """What the sidecar holds: enough to re-deliver and to publish `delivered`."""

    id: str
    filename: str
    format: str
    sha256: str
    size: int
    node: str
    interface: str
    request: Mapping[str, Any]
    pending: tuple[str, ...]  # uploader names that still need the file
    locations: Mapping[str, str] = field(default_factory=dict)  # sinks already done
    event: Mapping[str, Any] | None = None  # the result event as published (`spooled`)
    spooled_at: float = 0.0
    attempts: int = 0
    # Each pending sink's last error, without the "sink: " (a sink no longer
    # pending has none); each clipped to MAX_ERROR_LEN on its own.
    errors: Mapping[str, str] = field(default_factory=dict)
    note: str | None = None  # the entry's own last error, no sink's (write-ahead, ...)

    def __post_init__(self) -> None:
        errors = {sink: clip(why) for sink, why in self.errors.items() if sink in self.pending}
        object.__setattr__(self, "errors", errors)
        object.__setattr__(self, "note", clip(self.note) if self.note else None)

    @property
    def last_error(self) -> str | None:
        """What `pcapd spool` and the logs show: the note, then each pending
        sink's error in order, `s3: why; cloudshark: why`; at most
        MAX_ERROR_LEN characters a part."""
        parts = [self.note] if self.note else []
        parts.append(join_errors({s: self.errors[s] for s in self.pending if s in self.errors}))
        return "; ".join(p for p in parts if p) or None

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["pending"] = list(self.pending)
        data["locations"] = dict(self.locations)
        data["version"] = SPOOL_VERSION
        data["last_error"] = self.last_error  # what version 1 reads, after a rollback
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_sidecar(cls, text: str | bytes, entry_id: str) -> tuple[SpoolEntry, dict[str, str]]:
        """The entry a sidecar holds (that of the files named `entry_id`), and
        each diagnostic field dropped as malformed (field -> why, DIAGNOSTICS);
        ValueError when what delivers it (DELIVERY) is missing or malformed:
        such an entry is kept, never uploaded wrongly or removed."""
        try:
            data = json.loads(text)
        except ValueError as exc:  # bad UTF-8 or JSON, a number of 4,300+ digits
            raise ValueError(f"sidecar: not JSON this version reads: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError("sidecar is not a JSON object")
        data.pop("version", None)
        for name, (valid, what) in DELIVERY.items():
            if name not in data:
                if name in _REQUIRED:
                    raise ValueError(f"sidecar: no {name}")
                continue
            if not valid(data[name]):
                raise ValueError(f"sidecar: {name}={reprlib.repr(data[name])} is not {what}")
        if data["id"] != entry_id:
            raise ValueError(f"sidecar: id={reprlib.repr(data['id'])} is not its files' {entry_id}")
        if not data["pending"] and not data.get("locations"):
            # Nothing left to upload but nowhere it went: never delivered.
            raise ValueError("sidecar: pending=[] and no locations: delivered nowhere")
        data["pending"] = tuple(data["pending"])
        v1 = "errors" not in data  # version 1: one `last_error` for them all
        if not v1:
            data.pop("last_error", None)  # derived from `errors` and `note`
        dropped = _drop_malformed(data)
        if "spooled_at" not in data:
            data["spooled_at"] = spooled_at_of(data["id"])
        if v1:
            data["errors"], data["note"] = _split_v1(data.get("last_error"), data["pending"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known}), dropped

    def capture_request(self) -> CaptureRequest:
        return CaptureRequest.from_dict(self.request)


def clip(error: str) -> str:
    """An error as a sidecar keeps it: at most MAX_ERROR_LEN characters."""
    return error[:MAX_ERROR_LEN]


def join_errors(errors: Mapping[str, str]) -> str:
    """Errors by sink as one line, `s3: refused; cloudshark: timed out`."""
    return "; ".join(f"{sink}: {why}" for sink, why in errors.items())


def _is_text(value: object) -> bool:
    return value is None or isinstance(value, str)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_name(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _is_file_name(value: object) -> bool:
    if not isinstance(value, str) or value in ("", ".", ".."):
        return False
    return "/" not in value and not text_problem(value)


def _is_str_map(value: object) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


_REQUIRED = frozenset(
    f.name
    for f in dataclasses.fields(SpoolEntry)
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
)
ENTRY_ID = re.compile(r"(\d{20})-[0-9a-f]{8}")


def spooled_at_of(entry_id: str) -> float:
    """When an entry was spooled, from its id (`put` names it by time_ns):
    for a sidecar whose own `spooled_at` is gone; 0.0 for an id not `put`'s."""
    found = ENTRY_ID.fullmatch(entry_id)
    return int(found.group(1)) / 1e9 if found else 0.0


# The fields that deliver an entry, and what each must hold: one missing or
# malformed makes the entry unreadable (logged, kept on disk), as uploading
# the wrong file or deleting one never uploaded would lose a capture.
DELIVERY: dict[str, tuple[Callable[[object], bool], str]] = {
    "id": (lambda v: isinstance(v, str) and ENTRY_ID.fullmatch(v) is not None, "a spool entry id"),
    "filename": (_is_file_name, "a file name (text, no '/', not . or ..)"),
    "format": (_is_name, "a capture format"),
    "sha256": (
        lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
        "a sha256 in hex",
    ),
    "size": (_is_count, "a byte count"),
    "node": (lambda v: isinstance(v, str), "a string"),
    "interface": (lambda v: isinstance(v, str), "a string"),
    "request": (lambda v: isinstance(v, dict), "a request object"),
    "pending": (
        lambda v: isinstance(v, list) and all(_is_name(s) for s in v),
        "a list of sink names",
    ),
    "locations": (_is_str_map, "an object of strings"),
    "event": (lambda v: v is None or isinstance(v, dict), "an object or null"),
}


# The fields that only tell what befell an entry, and what each must hold.
# One malformed (a bug's, a hand edit's) is dropped, never the entry: its
# capture and request are intact, and a capture that was taken is never lost.
DIAGNOSTICS: dict[str, tuple[Callable[[object], bool], str]] = {
    "errors": (_is_str_map, "an object of strings"),
    "note": (_is_text, "a string or null"),
    "last_error": (_is_text, "a string or null"),
    "attempts": (_is_count, "a count"),
    "spooled_at": (
        lambda v: isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v < 1e12,
        "a time in seconds",
    ),
}


def _drop_malformed(data: dict[str, Any]) -> dict[str, str]:
    """Remove from `data` each field DIAGNOSTICS rejects; field -> what it
    held, `note=['x'] is not a string or null`."""
    dropped = {}
    for name, (valid, what) in DIAGNOSTICS.items():
        if name in data and not valid(data[name]):
            dropped[name] = f"{name}={reprlib.repr(data.pop(name))} is not {what}"
    return dropped


def _split_v1(error: str | None, sinks: Sequence[str]) -> tuple[dict[str, str], str | None]:
    """A version 1 sidecar's `last_error` (joined, then clipped, by the
    previous version) as (errors by sink, note): cut at the start and at each
    "; " that a pending sink's "name: " follows (where that version cut it
    too), each part keyed by that name. The text before the first sink's part
    is the note (a write-ahead entry's, or a local sink's error): also a first
    part like "s3:x", which that version took for S3's. A sink's part cut off
    by the clip is lost."""
    if not error:
        return {}, None
    names = "|".join(map(re.escape, sinks)) or "(?!)"
    note, *parts = re.split(rf"(?:^|; )(?=(?:{names}): )", error)
    errors = {}
    for part in parts:
        sink, _, why = part.partition(": ")
        errors[sink] = why
    return errors, note or None
