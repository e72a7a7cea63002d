"""What a request would do on each node (`judge`), with the controller's own
code (`request_for`, `resolve_interfaces`, `interface_problem`) and that
node's bounds, which its heartbeat carries."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from pcapd.core.config import SecurityConfig
from pcapd.core.errors import RequestError
from pcapd.core.request import decode_body, interface_problem, request_for, resolve_interfaces
from pcapd.dedup import RecentIds
from pcapd.fleet.node import NodeState
from pcapd.signing import SIG_FIELD, verify

CAPTURE, REJECTED, SILENT = "capture", "rejected", "silent"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What `node` would do with a request: capture on `interfaces` (with the
    `warnings` its result events would carry), answer `rejected` with `error`
    (what its result event would say; `stage` is
    "request" for what the request holds, "interfaces" when the node lacks
    what it names, or every interface it names refuses it: a lookback its
    ring cannot give, a failed ring), or stay silent (the request names
    another node). `rejected`: the interfaces refused, each with the error its
    result event would carry (the controller's `interface_problem`)."""

    node: str
    verdict: str
    interfaces: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    error: str | None = None
    stage: str | None = None
    rejected: tuple[tuple[str, str], ...] = ()  # (interface, error) for each one refused

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["interfaces"], data["warnings"] = list(self.interfaces), list(self.warnings)
        data["rejected"] = {name: error for name, error in self.rejected}
        return data


def judge(body: bytes | str, node: NodeState) -> Verdict:
    """The controller's steps 1-3 for `body` on `node`, in its order: decoded
    within its max_request_bytes, addressed and parsed (`request_for`) with
    its bounds, an unsigned request refused if it requires signed ones
    (`verify`), interfaces resolved (`resolve_interfaces`) against its devices,
    then each checked (`interface_problem`) against its beaten state."""
    config = node.config
    try:
        fields = decode_body(body, config.general.max_request_bytes)
        request = request_for(fields, config)
    except RequestError as exc:
        return Verdict(node.node, REJECTED, error=str(exc), stage="request")
    if request is None:
        return Verdict(node.node, SILENT)
    try:
        if fields.get(SIG_FIELD) is None:
            # Unsigned: `verify` needs no key to judge it, only require_signed.
            security = SecurityConfig(require_signed=node.require_signed)
            verify(fields, security, time.time(), RecentIds(security.max_skew))
    except RequestError as exc:
        return Verdict(node.node, REJECTED, error=str(exc), stage="request")
    try:
        interfaces, skipped = resolve_interfaces(request, config, node.devices)
    except RequestError as exc:
        return Verdict(node.node, REJECTED, error=str(exc), stage="interfaces")
    # The controller's per-interface check, on the interface's state as beaten.
    state = {i.name: i for i in node.interfaces}
    refused: list[tuple[str, str]] = []
    capturing: list[str] = []
    for name in interfaces:
        iface = state.get(name)
        problem = interface_problem(
            request, name, config, ring=iface is not None and iface.ring,
            ring_error=None if iface is None else iface.ring_error,
        )  # fmt: skip
        if problem is None:
            capturing.append(name)
        else:
            refused.append((name, problem))
    warnings = request.warnings + skipped
    if not capturing:
        return Verdict(node.node, REJECTED, (), warnings, refused[-1][1], "interfaces",
                       tuple(refused))  # fmt: skip
    return Verdict(node.node, CAPTURE, tuple(capturing), warnings, rejected=tuple(refused))
