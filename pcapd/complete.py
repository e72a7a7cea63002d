"""When a request has every result it will get, so `pcapd trigger --wait`
may stop before its bound.

A node the request does not name stays silent (pcapd.controller), and a
heartbeat proves neither that a node is there to answer (a node may serve
while its beat fails, or under another [fleet] prefix) nor that it is the
only one (two daemons under one name share one hash). So the wait ends early
only when the request itself says which nodes may answer (`named_nodes`:
`node` NAME, or a `nodere` spelling its names), and each of those has
answered for good:

- as a whole: a rejection without an interface (nothing of it follows), or
- on every interface its list asks for: each with a final result, or named
  in a result's warnings as missing on that node (`skipped_device`).

Not final, so the wait goes on: `spooled` (a `delivered` follows once the
spool drains), `failed` when the request came by the stream (a durable
source gets it back, to be captured again), `duplicate` (another daemon
under the same name may still be capturing it), a status this version does
not know, and any interface of an `alias` (how many the alias stands for
is the node's config). Nor is a body that some node might refuse unread
(over the smallest `max_request_bytes`, or not JSON): every node answers
that one, named or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pcapd.core.config import MIN_MAX_REQUEST_BYTES
from pcapd.core.fields import fold_keys, given
from pcapd.core.request import RequestError, decode_body, named_nodes, skipped_device

FINAL = frozenset({"ok", "empty", "rejected", "failed", "partial", "delivered"})
FINAL_DURABLE = FINAL - {"failed"}  # a stream's request comes back after `failed`


@dataclass(frozen=True, slots=True)
class Expected:
    """Who answers a request: `nodes`, each on `interfaces` (None: on what
    it resolves an alias to, which only the node knows)."""

    nodes: frozenset[str]
    interfaces: tuple[str, ...] | None


def expected(body: bytes) -> Expected | None:
    """Who answers the request in `body`, or None when that cannot be known."""
    try:
        data = decode_body(body, MIN_MAX_REQUEST_BYTES)
    except RequestError:
        return None
    nodes = named_nodes(data)
    if nodes is None:
        return None
    fields = fold_keys(data)[0]
    asked, alias = given(fields, "interface"), given(fields, "alias")
    if isinstance(asked, str):
        asked = [asked]
    listed = isinstance(asked, list) and asked and all(isinstance(n, str) for n in asked)
    interfaces = tuple(dict.fromkeys(asked)) if listed and alias is None else None
    return Expected(nodes, interfaces)


@dataclass(slots=True)
class Answers:
    """The results of one request seen so far, against `expected`; bounded
    by its nodes and interfaces."""

    expected: Expected
    durable: bool = False  # sent by the stream: `failed` is not final
    _whole: set[str] = field(default_factory=set)  # nodes that answered as a whole
    _covered: dict[str, set[str]] = field(default_factory=dict)  # node -> interfaces done

    def add(self, event: Mapping[str, Any]) -> None:
        node, status, interface = event.get("node"), event.get("status"), event.get("interface")
        if not isinstance(node, str) or not isinstance(status, str):
            return  # a daemon sends text; anything else on the channel is not an answer
        if node not in self.expected.nodes or status not in (
            FINAL_DURABLE if self.durable else FINAL
        ):
            return
        if interface is None:
            self._whole.add(node)
            return
        asked = self.expected.interfaces or ()
        covered = self._covered.setdefault(node, set())
        if interface in asked:
            covered.add(interface)
        warnings = event.get("warnings")
        if isinstance(warnings, list):
            covered.update(name for name in asked if skipped_device(name) in warnings)

    def missing(self) -> list[str]:
        """The nodes that may still answer, by name."""
        asked = set(self.expected.interfaces or ())
        return sorted(
            node for node in self.expected.nodes
            if node not in self._whole and not (asked and asked <= self._covered.get(node, set()))
        )  # fmt: skip

    def complete(self) -> bool:
        return not self.missing()
