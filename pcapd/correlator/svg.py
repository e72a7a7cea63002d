"""The chains drawn as SVG on the server: one column per link, one row per leaf.

Every label is attacker-controlled DNS text: it goes through `escape` (into
element text and into quoted attributes alike) and nowhere else. No script,
no external resource: the page works with no internet.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode

from markupsafe import Markup, escape

from pcapd.correlator.chains import ADDRESS, FLOW, NAME, Node

COLUMN = 250
BOX = 226
ROW = 26
PAD = 8
MAX_LABEL = 32  # characters shown; the whole name is in the tooltip
MAX_NODES = 3000  # drawn per picture; the JSON API has the rest


def pivot_url(node: Node) -> str:
    if node.kind == FLOW:
        return "/pivot/address?" + urlencode({"address": node.service, "port": node.port})
    if node.kind == ADDRESS:
        return "/pivot/address?" + urlencode({"address": node.label})
    return "/pivot/name?" + urlencode({"name": node.label})


def capture_url(client: str, node: Node) -> str | None:
    if node.kind == FLOW:
        query = {"client": client, "service": node.service, "port": node.port}
    elif node.kind == ADDRESS:
        query = {"client": client, "service": node.label}
    else:
        return None
    return "/capture/new?" + urlencode(query)


def _label(node: Node) -> str:
    text = f":{node.port}" if node.kind == FLOW else node.label
    if node.count is not None:
        text += f" ×{node.count}"
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "…"


def _width(kind: str) -> int:
    return BOX if kind == NAME else BOX - 60  # room for the "capture" link


def _classes(node: Node) -> str:
    return " ".join(["node", node.kind, *node.marks])


class _Layout:
    def __init__(self) -> None:
        self.rows = 0
        self.depth = 0
        # node, depth, row, parent's (depth, key in `ys`)
        self.placed: list[tuple[Node, int, float, tuple[int, float] | None]] = []

    def place(self, node: Node, depth: int, parent: tuple[int, float] | None) -> float:
        if len(self.placed) >= MAX_NODES:
            return self.rows
        self.depth = max(self.depth, depth)
        index = len(self.placed)
        self.placed.append((node, depth, 0.0, parent))
        if not node.children:
            y = float(self.rows)
            self.rows += 1
        else:
            me = (depth, -1.0 - index)
            ys = [self.place(child, depth + 1, me) for child in node.children]
            y = (ys[0] + ys[-1]) / 2
        self.placed[index] = (node, depth, y, parent)
        return y


def draw(client: str, roots: Sequence[Node], title: str) -> Markup:
    """One picture of `roots`; empty when there is nothing to draw."""
    if not roots:
        return Markup("")
    layout = _Layout()
    for root in roots:
        layout.place(root, 0, None)
    ys = {-1.0 - i: y for i, (_, _, y, _) in enumerate(layout.placed)}
    width = (layout.depth + 1) * COLUMN + 80
    height = layout.rows * ROW + 2 * PAD
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chains" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img">',
        f"<title>{escape(title)}</title>",
    ]
    for node, depth, y, parent in layout.placed:
        x, top = depth * COLUMN + PAD, y * ROW + PAD
        if parent is not None:
            # From the end of the column, past the parent's "capture" link.
            px, py = parent[0] * COLUMN + PAD + BOX, ys[parent[1]] * ROW + PAD + ROW / 2
            mid = top + ROW / 2
            parts.append(f'<path class="link" d="M{px:.0f},{py:.0f} C{px + 12:.0f},{py:.0f} '
                         f'{x - 12:.0f},{mid:.0f} {x:.0f},{mid:.0f}"/>')  # fmt: skip
        parts.append(
            f'<g class="{escape(_classes(node))}" data-kind="{escape(node.kind)}" '
            f'data-label="{escape(node.label)}">'
            f'<a href="{escape(pivot_url(node))}"><title>{escape(node.label)}</title>'
            f'<rect x="{x}" y="{top + 2:.0f}" width="{_width(node.kind)}" '
            f'height="{ROW - 4}" rx="4"/>'
            f'<text x="{x + 6}" y="{top + ROW / 2 + 4:.0f}">{escape(_label(node))}</text></a>'
        )
        capture = capture_url(client, node)
        if capture is not None:
            parts.append(f'<a class="capture" href="{escape(capture)}"><text x="{x + BOX - 54}" '
                         f'y="{top + ROW / 2 + 4:.0f}">capture</text></a>')  # fmt: skip
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))
