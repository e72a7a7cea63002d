"""Whether a request names this node, judged before anything else."""

from __future__ import annotations

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


def _names(fields: Mapping[str, Any], node: str) -> bool:
    """`addressed_to` on fields already folded."""
    name, pattern = given(fields, "node"), given(fields, "nodere")
    if isinstance(name, str) and pattern is None:
        return name in ("any", node)
    if (
        isinstance(pattern, str)
        and name is None
        and len(pattern) <= MAX_NODERE_LEN
        and text_problem(pattern) is None
    ):
        try:
            return compile_nodere(pattern).search(node) is not None
        except re2.error:
            return True
    return True


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
