"""The claims of ring captures, answered while the captures run.

A request whose captures are all on rings starts them before its id and
signature are claimed in Redis (`pcapd.dedup`); `ClaimGate` holds each
result until the claims are answered, and `_StopOr` ends the captures early
once a claim is answered taken (or on shutdown).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from pcapd.core.request import CaptureRequest
from pcapd.engine import StopSignal
from pcapd.signing import replayed
from triggers.base import Delivery

if TYPE_CHECKING:
    from pcapd.controller import Controller


class _StopOr:
    """What a ring capture polls to end early (a `StopSignal`): `stop`
    (shutdown), or `also()`."""

    def __init__(self, stop: StopSignal, also: Callable[[], bool]) -> None:
        self._stop, self._also = stop, also

    def is_set(self) -> bool:
        return self._stop.is_set() or self._also()


class ClaimGate:
    """The Redis claims of a request whose ring captures run already (they
    share the round trip with other threads' claims, `pcapd.dedup`). A
    capture stops (`stop`) once a claim is answered taken; its result waits
    for `passed`. The first capture to ask answers a duplicate or a replay,
    once, and counts the request; the captures' own results are dropped."""

    def __init__(
        self, controller: Controller, request: CaptureRequest, sig: str | None, delivery: Delivery
    ) -> None:
        self._ctl, self._request, self._sig, self._delivery = controller, request, sig, delivery
        self._ids = controller.recent_ids.claim_soon(request.id)
        self._sigs = None if sig is None else controller.recent_sigs.claim_soon(sig)
        self.stop = _StopOr(controller.capture_stop, self._taken_now)
        self._lock = threading.Lock()
        self._passed: bool | None = None

    def _taken_now(self) -> bool:
        return self._ids.taken_now() or (self._sigs is not None and self._sigs.taken_now())

    def passed(self, wait: bool = True) -> bool:
        """Neither claim was taken (waits for their answers). Not `wait`ing
        (shutdown has given up waiting), unanswered claims count as passed:
        the capture is kept, stored once more at worst, never lost."""
        with self._lock:
            if self._passed is None:
                if not wait and not self._answered():
                    self._ctl.count_request(self._delivery.source, "admitted")
                    self._passed = True
                else:
                    self._passed = self._decide()
            return self._passed

    def _answered(self) -> bool:
        return self._ids.answered() and (self._sigs is None or self._sigs.answered())

    def _decide(self) -> bool:
        status = "failed"
        try:
            id_taken = self._ids.wait()
            sig_taken = None if self._sigs is None else self._sigs.wait()
            status = answer_claims(
                self._ctl, self._request, self._sig, self._delivery, id_taken, sig_taken
            )
        finally:
            self._ctl.count_request(self._delivery.source, status)
        return status == "admitted"


def claims_verdict(id_taken: bool, sig_taken: bool | None) -> str:
    """What a request's claims make of it: "duplicate" when its id was served
    (whatever its signature), else "rejected" when its signature was (a
    replay), else "admitted". `sig_taken` None: no signature was claimed."""
    if id_taken:
        return "duplicate"
    return "rejected" if sig_taken else "admitted"


def answer_claims(
    ctl: Controller, request: CaptureRequest, sig: str | None, delivery: Delivery,
    id_taken: bool, sig_taken: bool | None,
) -> str:  # fmt: skip
    """Answer a request by its claims (`claims_verdict`, returned): a
    duplicate or a replay is told and acked here; a signature claimed for a
    duplicate is forgotten again, so it does not count as served."""
    verdict = claims_verdict(id_taken, sig_taken)
    if verdict == "duplicate":
        if sig is not None and sig_taken is False:  # claimed for nothing
            ctl.recent_sigs.forget(sig)
        ctl._duplicate(request, delivery)
    elif verdict == "rejected":
        ctl._turn_away(request, delivery, replayed(ctl.recent_sigs.window), claimed=True)
    return verdict
