"""The one exception root of pcapd: a caller that wants "anything pcapd says
went wrong" catches `PcapdError`; each family below names what went wrong."""

from __future__ import annotations


class PcapdError(Exception):
    """Something pcapd reports to a user; the message names what and why."""


class RequestError(PcapdError):
    """A request that cannot be served; the message is what the user sees."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


class CaptureError(PcapdError):
    """A capture could not be opened, filtered or read (interface, BPF, libpcap)."""


class UploadError(PcapdError):
    """A sink did not take a file. `retryable` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable
