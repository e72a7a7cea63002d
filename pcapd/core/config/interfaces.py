"""The [[interface]] tables and their lookback rings: names, aliases, ring
fields, each `lookback_bpf` compiled, and the rings' share of max_memory."""

from __future__ import annotations

from typing import Any

from pcapd.core.config.sections import *
from pcapd.core.configread import Table, quoted
from pcapd.core.fields import alias_problem, bpf_problem

DLT_EN10MB = 1  # Ethernet: the link type a lookback_bpf is checked against at load


def _interfaces(raw: Any, errors: list[str], warnings: list[str]) -> tuple[InterfaceConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append("interface: expected [[interface]] tables")
        return ()
    found = []
    names: set[str] = set()
    for index, table in enumerate(raw):
        s = Table(table, f"interface[{index}]", errors, warnings)
        name = s.interface("name") or ""
        if s.get("name") in (None, ""):
            errors.append(f"interface[{index}].name: required")
        elif name in names:
            errors.append(f"interface[{index}].name: {name!r} is defined twice")
        if name:  # a bad name was reported by s.interface
            names.add(name)
        found.append(_interface(s, name))
        s.finish()
    return tuple(found)


def _interface(s: Table, name: str) -> InterfaceConfig:
    """One [[interface]]; its ring fields only with `lookback` > 0, and its
    `lookback_bpf` printable ASCII that compiles (for Ethernet here; for the
    interface's real link type when the ring opens)."""
    lookback = s.get_int("lookback", DEFAULT_LOOKBACK, minimum=0, maximum=MAX_LOOKBACK)
    lookback_bytes = s.get_int(
        "lookback_bytes", DEFAULT_LOOKBACK_BYTES,
        minimum=MIN_LOOKBACK_BYTES, maximum=MAX_MEMORY,
    )  # fmt: skip
    bpf = s.get_str("lookback_bpf", "")
    if bpf:
        problem = bpf_problem(bpf) or bpf_compile_problem(bpf)
        if problem is not None:
            s.bad("lookback_bpf", bpf, problem)
            bpf = ""
    if not lookback:
        for key in ("lookback_bytes", "lookback_bpf"):
            if key in s.table:
                s.error(key, "only used with lookback > 0 (seconds the ring keeps)")
    return InterfaceConfig(
        name=name, aliases=_aliases(s, name),
        lookback=lookback, lookback_bytes=lookback_bytes, lookback_bpf=bpf,
    )  # fmt: skip


def _aliases(s: Table, name: str) -> tuple[str, ...]:
    """The aliases a request can select `name` by, each once. pcapdaemon
    loaded any string and matched a request's to it exactly; so does pcapd,
    within ALIAS_RULE (what a request may hold too). One given twice is kept
    once with a warning (pcapdaemon captured twice)."""
    kept: dict[str, int] = {}
    for index, alias in enumerate(s.str_list("alias", checked=False)):
        key, shown = f"alias[{index}]", quoted(alias)
        problem = alias_problem(alias)
        if problem is not None:
            s.error(key, f"{shown} {problem}")
        elif alias in kept:
            first = f"alias[{kept[alias]}]"
            s.warn(
                key,
                f"{shown} is already an alias of {name!r} ({first}); a request naming "
                "it captures there once",
            )
        else:
            kept[alias] = index
    return tuple(kept)


def bpf_compile_problem(bpf: str) -> str | None:
    """Why libpcap cannot compile `bpf` for Ethernet, or None. Only text that
    passed `bpf_problem` comes here."""
    import pcap  # the C extension; only configs with a lookback_bpf load it

    try:
        pcap.bpf(bpf.encode(), DLT_EN10MB)
    except OSError as exc:
        return f"does not compile as a filter for Ethernet ({exc})"
    return None


def check_rings(general: GeneralConfig, interfaces: tuple[InterfaceConfig, ...]) -> list[str]:
    """The rings' memory comes out of max_memory, leaving room for a capture
    of maxbytes, and no ring keeps less than a request may ask for."""
    errors = []
    rings = [(i, iface) for i, iface in enumerate(interfaces) if iface.lookback]
    held = sum(iface.lookback_bytes for _, iface in rings)
    if held and held + general.maxbytes > general.max_memory:
        where = ", ".join(f"interface[{i}].lookback_bytes={iface.lookback_bytes}"
                          for i, iface in rings)  # fmt: skip
        errors.append(
            f"{where}: rings hold {held} of general.max_memory={general.max_memory}, "
            f"leaving {max(0, general.max_memory - held)}, below general.maxbytes="
            f"{general.maxbytes}: a capture of maxbytes could never be admitted"
        )
    return errors
