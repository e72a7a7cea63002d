"""The rule both claim paths apply (`claims_verdict`: the controller's for a
capture off a ring, `ClaimGate` for ring captures), and the stop a ring
capture polls while its claims are answered (`_StopOr`)."""

from __future__ import annotations

import threading

import pytest

from pcapd.controller.claims import _StopOr, claims_verdict


def test_a_gated_capture_stops_on_shutdown_or_on_a_taken_claim() -> None:
    stop, taken = threading.Event(), threading.Event()
    either = _StopOr(stop, taken.is_set)
    assert not either.is_set()
    taken.set()  # the claim's answer: taken
    assert either.is_set()
    shutdown = _StopOr(stop, lambda: False)
    assert not shutdown.is_set()
    stop.set()
    assert shutdown.is_set()


@pytest.mark.parametrize(
    ("id_taken", "sig_taken", "verdict"),
    [
        (False, None, "admitted"),  # unsigned, new
        (False, False, "admitted"),  # signed, both new
        (True, None, "duplicate"),  # served: its signature was not even asked
        (True, False, "duplicate"),  # served, under another signature
        (True, True, "duplicate"),  # served, the same body again
        (False, True, "rejected"),  # a new id under a served signature: a replay
    ],
)
def test_a_served_id_is_a_duplicate_whatever_its_signature_a_served_signature_a_replay(
    id_taken: bool, sig_taken: bool | None, verdict: str
) -> None:
    assert claims_verdict(id_taken, sig_taken) == verdict
