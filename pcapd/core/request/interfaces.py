"""Where a parsed request can be served: its interfaces and lookback on this node."""

from __future__ import annotations

from collections.abc import Collection

from pcapd.core.config import Config
from pcapd.core.errors import RequestError
from pcapd.core.request.model import CaptureRequest


def lookback_problem(request: CaptureRequest, interface: str, config: Config) -> str | None:
    """Why `request`'s lookback cannot be served on `interface`, or None."""
    if not request.lookback:
        return None
    for index, iface in enumerate(config.interfaces):
        if iface.name == interface and iface.lookback:
            if request.lookback > iface.lookback:
                return (f"lookback={request.lookback} exceeds what the ring on {interface} "
                        f"holds (interface[{index}].lookback={iface.lookback})")  # fmt: skip
            return None
    return f"lookback: interface {interface!r} keeps no lookback ring (no [[interface]] lookback)"


def interface_problem(
    request: CaptureRequest,
    interface: str,
    config: Config,
    *,
    ring: bool,
    ring_error: str | None = None,
) -> str | None:
    """Why `request` cannot be served on `interface` (None: it may be, as far
    as the request and the interface's state go; admission comes after).

    `ring`: a lookback ring was started on `interface`; `ring_error`: it has
    failed since (every capture there is refused with that). The controller
    runs this per interface, and `pcapd nodes --match` on a node's heartbeat."""
    if ring and ring_error is not None:
        return ring_error
    problem = lookback_problem(request, interface, config)
    if problem is None and request.lookback and not ring:
        problem = f"lookback: the ring on {interface!r} is not running on this node"
    return problem


def skipped_device(name: str) -> str:
    """The warning a result carries for an asked interface `name` that does
    not exist on the node (so no result of its own comes for it)."""
    return f"interface {name!r}: no such device on this node"


def resolve_interfaces(
    request: CaptureRequest, config: Config, available: Collection[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(interfaces to capture on, warnings about the ones skipped).

    As pcapdaemon does, names missing on this node are skipped; the request
    fails only when none is left. Only names in `available` (the host's
    devices) are returned, so pcap never opens a file of that name.
    """
    skipped: list[str] = []
    if request.aliases:
        by_alias = config.aliases()
        wanted: list[str] = []
        for alias in request.aliases:
            if alias not in by_alias:
                skipped.append(f"alias {alias!r}: not configured on this node")
            wanted.extend(by_alias.get(alias, ()))
    else:
        wanted = list(request.interfaces)
    found = []
    for name in dict.fromkeys(wanted):
        if name in available:
            found.append(name)
        else:
            skipped.append(skipped_device(name))
    if not found:
        asked = request.aliases or request.interfaces
        kind = "alias" if request.aliases else "interface"
        raise RequestError(
            f"{kind}: none of {list(asked)} exists on this node ({'; '.join(skipped)})",
            request.id,
        )
    return tuple(found), tuple(skipped)
