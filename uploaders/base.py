"""What every sink shares: the capture to deliver, where it went, and errors."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pcapd.core.errors import UploadError as UploadError  # part of the uploader interface
from pcapd.core.events import ResultEvent
from pcapd.core.request import CaptureRequest

# Told of every upload to a sink, retries included: (sink, "ok" | "failed",
# seconds). The daemon's metrics count them; nothing else needs to.
UploadObserver = Callable[[str, str, float], None]


def ignore_upload(sink: str, outcome: str, seconds: float) -> None:
    pass


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True, slots=True)
class Artifact:
    """A finished capture file held in memory, not copied for upload."""

    data: bytes | bytearray | memoryview
    filename: str  # unique, in the `[general] naming` pattern (FileNamer)
    format: str
    sha256: str
    request: CaptureRequest
    node: str
    interface: str

    @property
    def size(self) -> int:
        return len(self.data)

    def metadata(self) -> dict[str, str]:
        """Plain-text facts sinks attach to the object (S3 metadata, tags)."""
        meta = {
            "request-id": self.request.id,
            "node": self.node,
            "interface": self.interface,
            "sha256": self.sha256,
        }
        if self.request.alertid is not None:
            meta["alertid"] = str(self.request.alertid)
        if self.request.tags:
            meta["tags"] = ",".join(self.request.tags)
        if self.request.customer:
            meta["customer"] = self.request.customer
        return meta


@dataclass(frozen=True, slots=True)
class Location:
    kind: str  # "local" | "s3" | "cloudshark"
    url: str  # a path, s3://bucket/key, or the CloudShark view URL


class Uploader(Protocol):
    """A sink. `upload` is the whole job; the other three let a sink have its
    say before and after, so the controller never asks which sink is which."""

    name: str
    remote: bool  # a remote sink's failures go to the spool

    def upload(self, artifact: Artifact) -> Location: ...

    def check(self, request: CaptureRequest) -> None:
        """Raise RequestError, naming the field, if this sink will not take
        what `request` asks of it (S3 overrides the site does not allow).
        Called before the capture is taken; no I/O."""

    def writes_to(self) -> str | None:
        """The directory on this node the sink writes captures to (admission
        checks its free space), or None for a remote sink."""

    def stored(self, location: Location, result: ResultEvent) -> None:
        """`result` is final and `location` is this sink's copy: keep anything
        beside it (the local sink's sidecar). OSError is logged, not fatal."""


class Sink:
    """The defaults of `Uploader`'s optional steps: nothing to check, nothing
    on this node's disk, nothing kept beside the file."""

    def check(self, request: CaptureRequest) -> None:
        return None

    def writes_to(self) -> str | None:
        return None

    def stored(self, location: Location, result: ResultEvent) -> None:
        return None


def artifact_filename(node: str, interface: str, started: float, request_id: str, fmt: str) -> str:
    """`<node>_<interface>_<UTC to the ms>_<request id>.<fmt>`: never collides, as
    the request id is unique and one request captures an interface once."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(started))
    millis = int(started * 1000) % 1000
    safe_node = _UNSAFE.sub("-", node)
    safe_iface = _UNSAFE.sub("-", interface)
    return f"{safe_node}_{safe_iface}_{stamp}.{millis:03d}Z_{request_id}.{fmt}"


def pcapdaemon_key(folder: str, filename: str) -> str:
    """pcapdaemon's S3 key: `"/" + folder + "/" + name`, which its SDK cleaned
    (empty and "." segments dropped) into `folder/name`, or `name` alone."""
    return "/".join(part for part in f"{folder}/{filename}".split("/") if part not in ("", "."))


class FileNamer:
    """Names capture files in the configured pattern (`[general] naming`).

    "pcapd": `artifact_filename`. "pcapdaemon": `<node>-<interface>-<unix
    seconds>.<fmt>`, its time the capture's start. Those names have one-second
    resolution, so two captures of one interface starting within one second
    would share a name (pcapdaemon overwrote the first): the later one takes
    the next free second instead, keeping the pattern. Holds one integer per
    (node, interface).
    """

    def __init__(self, naming: str = "pcapd") -> None:
        self.naming = naming
        self._last: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def __call__(self, node: str, interface: str, started: float, request_id: str, fmt: str) -> str:
        if self.naming != "pcapdaemon":
            return artifact_filename(node, interface, started, request_id, fmt)
        safe_node, safe_iface = _UNSAFE.sub("-", node), _UNSAFE.sub("-", interface)
        with self._lock:
            second = max(int(started), self._last.get((safe_node, safe_iface), -1) + 1)
            self._last[safe_node, safe_iface] = second
        return f"{safe_node}-{safe_iface}-{second}.{fmt}"
