"""`judge` on a node's heartbeat as `pcapd nodes --match` reads it back: each
verdict, with the error the node's result event would carry. (The same
verdicts checked against what live daemons then do: tests/pcapd/test_fleet.py.)"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pcapd.core.config import parse_config
from pcapd.fleet import CAPTURE, REJECTED, SILENT, NodeState, judge, node_state

TABLE: dict[str, Any] = {
    "general": {"maxpackets": 1000},
    "interface": [
        {"name": "lo", "alias": ["local"]},
        {"name": "eth0", "alias": ["local"], "lookback": 10, "lookback_bytes": 4 << 20},
    ],
}


def beaten(*, signed: bool = False, rings: dict[str, str | None] | None = None) -> NodeState:
    """Node n1 (devices lo and eth0) as its hash says, read back."""
    table = dict(TABLE)
    if signed:
        table["security"] = {"require_signed": True, "keys": {"k": "0" * 64}}
    state = node_state(
        parse_config(table, "n1"), instance="i1", started=1.0, devices={"lo", "eth0"},
        linktypes={"lo": 1}, sources=["redis"], captures=0, rings=rings,
    )  # fmt: skip
    fields = {k.encode(): v.encode() for k, v in state.to_hash().items()}
    return NodeState.from_hash(fields)


def body(**fields: Any) -> str:
    return json.dumps({"node": "any", "bpf": "icmp", **fields})


def test_capture_on_what_exists_with_the_skipped_as_warnings() -> None:
    verdict = judge(body(interface=["lo", "wlan9"], colour="red"), beaten())
    assert (verdict.verdict, verdict.interfaces, verdict.error) == (CAPTURE, ("lo",), None)
    assert any("colour" in w for w in verdict.warnings)
    assert any("wlan9" in w for w in verdict.warnings)


def test_another_node_is_silent() -> None:
    assert judge(body(node="n2", interface="lo"), beaten()).verdict == SILENT


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"interface": "lo", "packets": 5000}, "packets=5000 exceeds maxpackets=1000"),
        ({"interface": "lo", "packets": "many"}, "packets"),
    ],
)
def test_what_the_request_holds_is_judged_with_the_node_s_bounds(
    fields: dict[str, Any], error: str
) -> None:
    verdict = judge(body(**fields), beaten())
    assert (verdict.verdict, verdict.stage) == (REJECTED, "request")
    assert verdict.error is not None and error in verdict.error


def test_an_unsigned_request_to_a_node_that_requires_signed_ones() -> None:
    assert judge(body(interface="lo"), beaten()).verdict == CAPTURE
    verdict = judge(body(interface="lo"), beaten(signed=True))
    assert (verdict.verdict, verdict.stage) == (REJECTED, "request")


def test_interfaces_refused_each_with_its_error() -> None:
    """A lookback on `local` (lo: no ring; eth0: a ring, down on the node)."""
    verdict = judge(body(alias="local", lookback=5), beaten(rings={"eth0": "ring failed: gone"}))
    assert (verdict.verdict, verdict.stage) == (REJECTED, "interfaces")
    refused = dict(verdict.rejected)
    assert refused["eth0"] == "ring failed: gone"
    assert "lookback" in refused["lo"]
    running = judge(body(alias="local", lookback=5), beaten(rings={"eth0": None}))
    assert (running.verdict, running.interfaces) == (CAPTURE, ("eth0",))
    assert "lo" in dict(running.rejected)
    missing = judge(body(interface="wlan9"), beaten())
    assert (missing.verdict, missing.stage) == (REJECTED, "interfaces")
