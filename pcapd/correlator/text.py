"""`pcapd correlate` output: the chains as an indented tree, one node a line.

Names are printed as the agents stored them (dnspython's escaped text), so a
hostile name cannot carry terminal control bytes: those are `\\DDD` already.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pcapd.correlator.chains import FLOW, ClientView, Node


def _line(node: Node) -> str:
    text = node.label
    if node.kind == FLOW:
        text = f"{node.service}:{node.port}"
    if node.count is not None:
        text += f" ×{node.count}"
    if node.marks:
        text += " [" + ", ".join(node.marks) + "]"
    return text


def _tree(node: Node, prefix: str, last: bool, out: list[str], top: bool) -> None:
    if top:
        out.append(_line(node))
        child_prefix = ""
    else:
        out.append(f"{prefix}{'└─ ' if last else '├─ '}{_line(node)}")
        child_prefix = prefix + ("   " if last else "│  ")
    for index, child in enumerate(node.children):
        _tree(child, child_prefix, index == len(node.children) - 1, out, False)


def render_view(view: ClientView) -> str:
    s = view.summary
    out = [
        f"client {view.client}: activity {s['activity']}, {s['names']} names, "
        f"{s['addresses']} addresses, {s['flows']} flows, {s['nx']} NXDOMAIN, "
        f"{s['recon']} recon signs (by {view.by})"
    ]
    if not view.complete:
        out.append("(partial: the scan budget ran out; raise [correlator] scan_budget)")
    out += _refused(r.as_dict() for r in view.index_refused)
    for title, nodes in (("chains", view.chains), ("flows with no DNS behind them", view.no_dns),
                         ("NXDOMAIN", view.nxdomain)):  # fmt: skip
        if nodes:
            out.append(f"\n{title}:")
            for node in nodes:
                _tree(node, "", True, out, True)
    return "\n".join(out)


def render_clients(page: dict[str, Any]) -> str:
    out = [f"{'client':<40} {'activity':>8} {'names':>6} {'addrs':>6} {'flows':>6} "
           f"{'nx':>4} {'recon':>5}"]  # fmt: skip
    for c in page["clients"]:
        out.append(f"{c['client']:<40} {c['activity']:>8} {c['names']:>6} {c['addresses']:>6} "
                   f"{c['flows']:>6} {c['nx']:>4} {c['recon']:>5}")  # fmt: skip
    out += _refused(page["index_refused"])
    if not page["complete"]:
        out.append(_more(page))
    return "\n".join(out)


def _refused(refusals: Iterable[Mapping[str, str]]) -> list[str]:
    """As the page says it (templates/refused.html)."""
    return [f"(keys found by SCAN, which is slower: Redis refused {r['command']} of {r['key']} "
            f"({r['error']}))" for r in refusals]  # fmt: skip


def render_pivot(found: dict[str, Any]) -> str:
    """Who resolved a name (`clients`) or who talked to an address (`flows`)."""
    if "clients" in found:
        out = [f"{'client':<40} how"]
        out += [f"{c['client']:<40} {c['how']}" for c in found["clients"]]
    else:
        out = [f"{'client':<40} {'port':>5} {'flows':>6}"]
        out += [f"{f['client']:<40} {f['port']:>5} {f['count']:>6}" for f in found["flows"]]
    if not found["complete"]:
        out.append(_more(found))
    return "\n".join(out)


def _more(page: dict[str, Any]) -> str:
    """An unfinished walk: how far it got (as the page says) and how to go on."""
    return (
        f"(SCAN returned {page['scanned']} matching keys; the scan has covered about "
        f"{page['progress'] * 100:.1f} % of the keyspace; more: --cursor {page['cursor']})"
    )
