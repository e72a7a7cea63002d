"""Claims of ring captures, answered while the captures run (`ClaimGate`):
a request this node served before (another run) is a duplicate, a replayed
signature is refused, each answered once and stopped long before its
duration; a burst of ring requests is answered once each and left `served`
in Redis. Against `pcapd serve` in a namespace of a veth pair and a private
redis-server, as tests/pcapd/test_daemon_ring.py does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pcapd.claim_batch import SERVED
from pcapd.core.secret import Secret
from pcapd.dedup import seen_key
from pcapd.signing import sign
from tests.helpers import needs_root, wait_for
from tests.pcapd.test_daemon_ring import Site, site

pytestmark = [needs_root, pytest.mark.timeout(180)]

PREFIX = "pcapd:seen:"  # [security] dedup_prefix's default
KEY = "ring-claims-key-31f0"
SECURITY = f'[security]\nkeys = {{ ops = "{KEY}" }}\nrequire_signed = true\nmax_skew = 300\n'
MAX_CONCURRENT = 8  # the daemon fixture's
LONG = 30  # s (maxduration): duration and timeout of requests that must end early


def served_before(s: Site, kind: str, value: str) -> None:
    """As another run of this node leaves what it served."""
    s.server.client().set(seen_key(PREFIX, kind, "testnode", value), SERVED, ex=600)


def test_a_duplicate_found_by_the_claim_stops_its_ring_capture_and_is_answered_once(
    tmp_path: Path,
) -> None:
    with site(tmp_path, 155) as s:
        wait_for(lambda: "event=ring_started" in s.daemon.log(), timeout=15)
        served_before(s, "id", "dup")
        began = time.monotonic()
        s.daemon.publish(s.request(id="dup", packets=1000, duration=LONG, timeout=LONG))
        answer = s.results.for_id("dup", timeout=20)
        assert time.monotonic() - began < LONG / 4  # stopped, not run to its end
        assert (answer["status"], answer["error"]) == (
            "duplicate", "request id dup was already served within dedup_window=600s",
        ), answer  # fmt: skip
        # Its slot is back: a burst of max_concurrent ring captures, all
        # admitted and each answered once (packets keep coming until all
        # are), every id left `served` in Redis, and nothing more for the duplicate.
        ids = [f"burst-{n}" for n in range(MAX_CONCURRENT)]
        for request_id in ids:
            s.daemon.publish(s.request(id=request_id, packets=1, bytes=65_536))

        def all_captured() -> bool:
            s.send(1)
            return s.daemon.log().count("event=capture_done id=burst-") >= len(ids)

        wait_for(all_captured, timeout=60, interval=0.02)
        statuses = [s.results.for_id(request_id, timeout=20)["status"] for request_id in ids]
        assert statuses == ["ok"] * len(ids)
        client = s.server.client()
        wait_for(lambda: all(
            client.get(seen_key(PREFIX, "id", "testnode", i)) == SERVED.encode() for i in ids
        ), timeout=10)  # fmt: skip
        time.sleep(0.5)  # a second event for any of them would have come by now
        assert s.results.events.empty()
        assert not list(s.daemon.localdir.glob("*dup*"))
        assert "event=request_crashed" not in s.daemon.log()


def test_a_replayed_signature_on_a_ring_interface_is_refused_once_and_forgets_the_id(
    tmp_path: Path,
) -> None:
    with site(tmp_path, 156, extra=SECURITY) as s:
        wait_for(lambda: "event=ring_started" in s.daemon.log(), timeout=15)
        request = s.request(id="replayed", packets=1000, duration=LONG, timeout=LONG)
        body = sign(request, "ops", Secret(KEY), time.time())
        served_before(s, "sig", body["sig"].lower())
        began = time.monotonic()
        s.daemon.publish(json.dumps(body))
        answer = s.results.for_id("replayed", timeout=20)
        assert time.monotonic() - began < LONG / 4
        assert answer["status"] == "rejected", answer
        assert answer["error"].startswith("sig: replayed; this signature was already accepted")
        # The id was claimed for nothing: forgotten, so a fresh signing of the
        # same request is captured.
        id_key = seen_key(PREFIX, "id", "testnode", "replayed")
        assert s.server.client().get(id_key) is None
        fresh = sign(s.request(id="replayed", packets=1), "ops", Secret(KEY), time.time() + 1)
        s.daemon.publish(json.dumps(fresh))

        def captured() -> bool:
            s.send(1)
            return "event=capture_done id=replayed " in s.daemon.log()

        wait_for(captured, timeout=30, interval=0.02)
        assert s.results.for_id("replayed", timeout=20)["status"] == "ok"
        time.sleep(0.5)
        assert s.results.events.empty()
