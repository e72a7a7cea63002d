"""Which requests' results `pcapd trigger --wait` can know are all in, and
when (the daemons' side: tests/pcapd/test_cli_trigger_wait.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pcapd.complete import Answers, Expected, expected
from pcapd.core.config import MIN_MAX_REQUEST_BYTES
from pcapd.core.request import skipped_device


def body(**fields: Any) -> bytes:
    return json.dumps({"interface": ["lo"], **fields}).encode()


@pytest.mark.parametrize(
    ("fields", "nodes"),
    [
        ({"node": "web1"}, {"web1"}),
        ({"NODE": "web1"}, {"web1"}),  # read as the daemon reads it
        ({"nodere": "^web1$"}, {"web1"}),
        ({"nodere": r"^(web1|db\.lab)$"}, {"web1", "db.lab"}),
        ({"nodere": "^(?:a|b)$"}, {"a", "b"}),
        ({"node": "any"}, None),
        ({"nodere": "^web"}, None),  # web10 too
        ({"nodere": "^(web1|db.lab)$"}, None),  # dbxlab too
        ({"nodere": "^(web1|web2)$", "node": "web1"}, None),  # every node rejects it
        ({"nodere": "^(" + "|".join(["a" * 30] * 10) + ")$"}, None),  # too long: likewise
        ({}, None),
    ],
)
def test_the_nodes_a_request_names(fields: dict[str, Any], nodes: set[str] | None) -> None:
    found = expected(body(**fields))
    assert (None if found is None else set(found.nodes)) == nodes


def test_a_body_some_node_may_refuse_unread_is_answered_by_all() -> None:
    big = body(node="web1", tags="x" * MIN_MAX_REQUEST_BYTES)
    assert expected(big) is None
    assert expected(b'{"node": "web1", "packets": NaN}') is None


def test_interfaces_asked_and_an_alias() -> None:
    assert expected(body(node="a", interface="eth0")) == Expected(frozenset({"a"}), ("eth0",))
    aliased = json.dumps({"node": "a", "alias": "public"}).encode()
    assert expected(aliased) == Expected(frozenset({"a"}), None)


def event(node: str, status: str, interface: str | None, *warnings: str) -> dict[str, Any]:
    return {"node": node, "status": status, "interface": interface, "warnings": list(warnings)}


def test_complete_only_on_final_results_of_every_named_node_and_interface() -> None:
    answers = Answers(Expected(frozenset({"a", "b"}), ("lo", "eth9")))
    answers.add(event("c", "ok", "lo"))  # not named: not counted
    answers.add(event("a", "spooled", "lo"))  # a `delivered` may follow
    answers.add(event("b", "duplicate", None))  # a twin may still capture
    assert answers.missing() == ["a", "b"]
    answers.add(event("a", "delivered", "lo", skipped_device("eth9")))
    answers.add(event("b", "ok", "lo"))
    assert answers.missing() == ["b"]  # eth9 of b: a result may still come
    answers.add(event("b", "rejected", "eth9"))
    assert answers.complete()


def test_an_alias_completes_only_by_a_whole_rejection() -> None:
    answers = Answers(Expected(frozenset({"a"}), None))
    answers.add(event("a", "ok", "eth0"))
    assert not answers.complete()
    answers.add(event("a", "rejected", None))
    assert answers.complete()


def test_failed_is_final_only_when_the_request_cannot_come_back() -> None:
    """Sent by the stream, a `failed` capture's request is given back and
    captured again, so its next result is still to come."""
    named = Expected(frozenset({"a"}), ("lo",))
    by_pubsub, by_stream = Answers(named), Answers(named, durable=True)
    for answers in (by_pubsub, by_stream):
        answers.add(event("a", "failed", "lo"))
    assert by_pubsub.complete() and not by_stream.complete()
    by_stream.add(event("a", "ok", "lo"))
    assert by_stream.complete()
