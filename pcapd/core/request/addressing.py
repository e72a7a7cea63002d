"""Whether a request names this node, judged before anything else."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import re2

from pcapd.core.config import Config
from pcapd.core.fields import MAX_NODERE_LEN, fold_keys, given, text_problem
from pcapd.core.request.fields import compile_nodere, parse_folded
from pcapd.core.request.model import CaptureRequest


def addressed_to(data: Mapping[str, Any], node: str) -> bool:
    """Whether a decoded request names `node`, judged from `node`/`nodere` alone,
    read as `parse_fields` reads them (keys folded, empty values absent).

    Checked before anything else, so that a malformed request for another
    node stays silent on this one. When the node fields themselves are
    malformed, no node can tell: every node parses and rejects it.
    """
    return _names(fold_keys(data)[0], node)


def _judged(pattern: str) -> bool:
    """A `nodere` that nodes judge by searching their name (one too long or
    holding what a field may not is rejected by every node)."""
    return len(pattern) <= MAX_NODERE_LEN and text_problem(pattern) is None


def _names(fields: Mapping[str, Any], node: str) -> bool:
    """`addressed_to` on fields already folded."""
    name, pattern = given(fields, "node"), given(fields, "nodere")
    if isinstance(name, str) and pattern is None:
        return name in ("any", node)
    if isinstance(pattern, str) and name is None and _judged(pattern):
        try:
            return compile_nodere(pattern).search(node) is not None
        except re2.error:
            return True
    return True


# A `nodere` that names its nodes one by one: `^web1$`, `^(web1|web2)$` or
# `^(?:web1|db\.lab)$`, each name of letters, digits, `_`, `-` and escaped
# `.` or `-`. RE2's `^` and `$` hold only at the ends of the text, so no other
# name matches it.
_LITERAL = r"(?:[A-Za-z0-9_-]|\\[.-])+"
_NAMED = re.compile(rf"\^(?:({_LITERAL})|\((?:\?:)?({_LITERAL}(?:\|{_LITERAL})*)\))\$")


def named_nodes(data: Mapping[str, Any]) -> frozenset[str] | None:
    """Every node name a decoded request names, when the request alone tells:
    a `node` other than "any", or a `nodere` spelling its names one by one
    (`_NAMED`); None when any other node may be named too (silence from a
    node then proves nothing: it may not be named)."""
    fields = fold_keys(data)[0]
    name, pattern = given(fields, "node"), given(fields, "nodere")
    if isinstance(name, str) and pattern is None:
        return None if name == "any" else frozenset([name])
    if not isinstance(pattern, str) or name is not None:
        return None  # every node rejects it, or no node is named
    found = _NAMED.fullmatch(pattern) if _judged(pattern) else None
    if found is None:
        return None
    names = frozenset(re.sub(r"\\(.)", r"\1", alternative)
                      for alternative in (found.group(1) or found.group(2)).split("|"))  # fmt: skip
    # The daemon's own judgement agrees, or nothing is claimed.
    return names if all(_names(fields, node) for node in names) else None


def request_for(
    fields: Mapping[str, Any], config: Config, default_id: str | None = None
) -> CaptureRequest | None:
    """The request in decoded `fields` if it names this node (`addressed_to`),
    parsed with this node's bounds; None when it names another node.

    The one judgement of "is it for me, and is it sound" that both the
    controller and `pcapd nodes --match` (pcapd/fleet/) make; the second
    half is `resolve_interfaces`. Raises RequestError as `parse_fields` does.
    """
    folded, warnings = fold_keys(fields)  # once, for both halves
    if not _names(folded, config.general.node):
        return None
    return parse_folded(fields, folded, warnings, config, default_id)
