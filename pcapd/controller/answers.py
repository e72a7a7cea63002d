"""What the controller tells about requests: rejections, duplicates, and
deliveries refused unread; and what it forgets of a request it does not serve."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from pcapd.controller.state import ControllerState
from pcapd.core.events import ResultEvent
from pcapd.core.fields import ID_RE, channel_problem
from pcapd.core.logs import event
from pcapd.core.request import CaptureRequest, RequestError, addressed_to, decode_body
from triggers.base import Delivery

log = logging.getLogger("pcapd.controller")

# Bodies up to this size are parsed for their id and reply_to when refused
# unread (overloaded): a real request is a few hundred bytes, and parsing a
# larger one would slow the thread that drains the source.
SALVAGE_MAX_BYTES = 4096


def _reply_to(fields: Mapping[str, Any] | None) -> str | None:
    """The body's reply_to, when it is a valid channel name, whatever else is wrong."""
    value = fields.get("reply_to") if fields else None
    return value if isinstance(value, str) and channel_problem(value) is None else None


class Answers(ControllerState):
    def _turn_away(
        self,
        request: CaptureRequest,
        delivery: Delivery,
        error: str,
        *,
        sig: str | None = None,
        claimed: bool = False,
    ) -> None:
        """Reject a parsed request as a whole, forgetting what was recorded of
        it (`_not_served`) so it may come again, and ack it."""
        self._not_served(request.id, sig, claimed=claimed)
        self.reject(request, None, error)
        delivery.ack()

    def _not_served(self, request_id: str, sig: str | None, *, claimed: bool) -> None:
        """A request refused after its id (and verified signature) were recorded
        may come again: forgotten in memory, and in Redis once `claimed`."""
        for seen, key in ((self.recent_ids, request_id), (self.recent_sigs, sig)):
            if key is not None:
                (seen.forget if claimed else seen.here.forget)(key)

    def _duplicate(self, request: CaptureRequest, delivery: Delivery) -> None:
        event(log, "request_duplicate", id=request.id, source=delivery.source)
        window = self.config.security.dedup_window
        error = f"request id {request.id} was already served within dedup_window={window}s"
        self.tell(request, "duplicate", error=error)
        delivery.ack()

    def refuse(self, delivery: Delivery, reason: str) -> None:
        """Answer a delivery its source could not hold ("overloaded"), unread.

        Called by the source's reader thread, so it stays cheap: only a small
        body is parsed, for its id and reply_to; nothing is logged per body
        (the source logs a count). One for another node stays silent and
        is counted `ignored`, as if it had been read."""
        request_id = reply_to = None
        if len(delivery.body) <= SALVAGE_MAX_BYTES:
            with contextlib.suppress(RequestError):
                fields = decode_body(delivery.body, SALVAGE_MAX_BYTES)
                if not addressed_to(fields, self.node):
                    self.count_request(delivery.source, "ignored")
                    return
                raw_id = fields.get("id")
                if isinstance(raw_id, str) and ID_RE.fullmatch(raw_id):
                    request_id = raw_id
                reply_to = _reply_to(fields)
        self.count_request(delivery.source, "overloaded")
        self._answer_unparsed(delivery.body, request_id, reply_to, reason)
        with contextlib.suppress(Exception):
            delivery.ack()

    def _answer_unparsed(
        self, body: bytes, request_id: str | None, reply_to: str | None, error: str
    ) -> None:
        """A rejection for a body that did not become a request (with its
        SHA-256), to `reply_to` too if that much of the body was sound."""
        self.publish(ResultEvent.for_body(self.node, "rejected", error, body, request_id), reply_to)

    def reject(
        self,
        request: CaptureRequest,
        interface: str | None,
        error: str,
        warnings: tuple[str, ...] = (),
    ) -> None:
        # Logged at once, or counted into a summary under a burst (`refusals`).
        self.refusals.rejected(request.id, error, alertid=request.alertid, interface=interface)
        self.tell(request, "rejected", interface=interface, error=error, warnings=warnings)

    def tell(self, request: CaptureRequest, status: str, **rest: Any) -> None:
        """Publish the event about `request` (ResultEvent.for_request) to the
        results channel and stream, and to its reply_to."""
        self.publish(ResultEvent.for_request(request, self.node, status, **rest), request.reply_to)
