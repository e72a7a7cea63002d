"""Tree building on shapes the live site does not produce: CNAME loops (other
writers than pcapd's agents may store them), long chains, a client with only
recon signs, and the drawing's bound and escaping."""

from __future__ import annotations

import pytest

from agents.reader_values import ClientKeys, Recon
from pcapd.correlator import svg
from pcapd.correlator.chains import MAX_DEPTH, Node, build_view


def labels(node: Node) -> list[str]:
    return [n.label + "".join(f"[{m}]" for m in n.marks) for n in node.walk()]


def test_a_cname_loop_ends_in_a_marked_node() -> None:
    data = ClientKeys("10.0.0.1", cname={"b.": ["a."], "a.": ["b."]})
    view = build_view(data, "fqdn")
    # No name is a root (each is the other's target): both are shown, once each.
    assert [labels(c) for c in view.chains] == [["a.", "b.", "a.[loop]"], ["b.", "a.", "b.[loop]"]]
    by_address = build_view(data, "address")
    assert by_address.chains == []


def test_a_long_chain_is_cut_at_max_depth() -> None:
    names = [f"n{i}." for i in range(MAX_DEPTH + 5)]
    cname = {names[i + 1]: [names[i]] for i in range(len(names) - 1)}
    view = build_view(ClientKeys("10.0.0.1", cname=cname, dns={"192.0.2.1": [names[-1]]}))
    walked = labels(view.chains[0])
    assert len(walked) == MAX_DEPTH + 1 and walked[-1].endswith("[deep]")


def test_recon_only_address_and_unknown_by() -> None:
    data = ClientKeys("10.0.0.1", recon=[Recon("icmp", "192.0.2.9", 4000, 53, 1, 3)])
    view = build_view(data, "address")
    assert [labels(c) for c in view.chains] == [["192.0.2.9[icmp-3]"]]
    with pytest.raises(ValueError, match="by: 'sideways' is not one of fqdn, address"):
        build_view(data, "sideways")


def test_drawing_is_bounded_and_escaped() -> None:
    many = {f"10.0.{i // 250}.{i % 250}": [f'x{i}"<b>.'] for i in range(svg.MAX_NODES * 2)}
    data = ClientKeys("10.0.0.1", dns=many, flows={("192.0.2.1", 443): 2})
    picture = str(svg.draw(data.client, build_view(data).chains, "<title>"))
    assert picture.count('<g class="node') == svg.MAX_NODES
    assert "<b>" not in picture and "&lt;b&gt;" in picture and "<title>&lt;title&gt;" in picture
