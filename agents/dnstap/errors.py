"""One root exception for everything the dnstap agent rejects.

Frame-level errors end the connection they came from; message-level errors
cost one message. Both are counted and logged, never fatal to the agent.
"""

from __future__ import annotations

from typing import Any

from pcapd.core.errors import PcapdError


class DnstapError(PcapdError):
    """Root of the agent's own errors: only these leave the decoders."""


class FrameError(DnstapError):
    """The Frame Streams byte stream is malformed: the connection is closed.

    `frames` holds what decoded before the bad frame, so it is not lost.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.frames: list[Any] = []


class FrameTooLarge(FrameError):
    pass


class ControlFrameError(FrameError):
    pass


class ContentTypeError(FrameError):
    pass


class UnexpectedFrame(FrameError):
    pass


class MessageError(DnstapError):
    """One data frame is not a usable dnstap message: that message is skipped."""


class BadProtobuf(MessageError):
    pass


class DnsFormError(MessageError):
    """The DNS message inside a dnstap frame does not parse."""
