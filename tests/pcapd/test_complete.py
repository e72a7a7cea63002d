"""Which requests' results `pcapd trigger --wait` can know are all in, and
when (the daemons' side: tests/pcapd/test_cli_trigger_wait.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcapd.complete import Answers, Expected, expected
from pcapd.core.config import MIN_MAX_REQUEST_BYTES
from pcapd.core.fields import text_problem
from pcapd.core.request import compile_nodere, skipped_device


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


NAME = st.text(alphabet="abcXY09_-.", min_size=1, max_size=8)
# Any code point, lone surrogates, NULs and controls included.
ANY_TEXT = st.text(alphabet=st.characters(codec=None, categories=None), max_size=30)


def _spelled(name: str, escape_dot: bool, escape_dash: bool) -> str:
    """`name` in a pattern; a dot left bare matches any character."""
    dot, dash = r"\." if escape_dot else ".", r"\-" if escape_dash else "-"
    return name.replace(".", dot).replace("-", dash)


@st.composite
def patterns(draw: st.DrawFn) -> str:
    """`nodere`s that name their nodes, as operators write them, and others."""
    names = draw(st.lists(NAME, min_size=1, max_size=4))
    dot, dash = draw(st.booleans()), draw(st.booleans())
    spelled = "|".join(_spelled(n, dot, dash) for n in names)
    shape = draw(st.sampled_from(["^{}$", "^({})$", "^(?:{})$", "{}", "^({})", "({})$", "^{}"]))
    if len(names) > 1 and shape in ("^{}$", "{}", "^{}"):
        shape = "^({})$"
    return shape.format(spelled) if draw(st.booleans()) else draw(ANY_TEXT)


@settings(max_examples=500, deadline=None)
@given(pattern=patterns(), others=st.lists(NAME | ANY_TEXT, max_size=6))
def test_a_named_set_is_exactly_the_nodes_the_daemons_would_match(
    pattern: str, others: list[str]
) -> None:
    """Ending the wait early rests on this: when `expected` names nodes, a
    daemon of any name matches the request if and only if it is one of them."""
    found = expected(body(nodere=pattern))
    if found is None:
        return
    regex = compile_nodere(pattern)
    near = [v for n in found.nodes for v in (n + "x", "x" + n, n[:-1], n.replace(".", "x"),
                                             n.upper())]  # fmt: skip
    for node in [*found.nodes, *near, *others]:
        if text_problem(node) is not None:
            continue  # no daemon has such a name
        assert (regex.search(node) is not None) == (node in found.nodes), (pattern, node)


def test_an_event_whose_node_or_status_is_no_text_is_no_answer() -> None:
    """Anyone allowed on the reply channel can send these: once a TypeError."""
    answers = Answers(Expected(frozenset({"a"}), ("lo",)))
    answers.add({"node": ["a"], "status": "ok", "interface": "lo"})
    answers.add({"node": "a", "status": {"x": 1}, "interface": "lo"})
    assert answers.missing() == ["a"]
