"""The JSON API and `pcapd correlate` over keys the real agents wrote: a CNAME
chain, a flow with no DNS, an NXDOMAIN, RST and ICMP signs, IPv6."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from typing import Any

import pytest

from tests.agents.flow.traffic import TCP_PORT, UDP_PORT
from tests.pcapd.correlator.site import IMG_KEY, NEIGHBOUR, NO_DNS, SCRIPT_KEY, Site

# named's readiness probes ask from 127.0.0.1; whether the dnstap agent sees
# them depends on when named's dnstap connection came up.
PROBE = {"127.0.0.1"}


def api(site: Site, path: str, **query: str) -> tuple[int, Any]:
    status, body = site.get(f"{path}?{urllib.parse.urlencode(query)}")
    return status, json.loads(body)


def paths(node: dict[str, Any], above: tuple[str, ...] = ()) -> set[str]:
    """Every root-to-leaf path as `label[marks] > ...`, counts left out."""
    marks = ",".join(node.get("marks", []))
    here = (*above, node["label"] + (f"[{marks}]" if marks else ""))
    if not node.get("children"):
        return {" > ".join(here)}
    return set().union(*(paths(child, here) for child in node["children"]))


def all_paths(nodes: list[dict[str, Any]]) -> set[str]:
    return set().union(*(paths(n) for n in nodes)) if nodes else set()


def test_by_fqdn(corr_site: Site) -> None:
    s = corr_site
    status, view = api(s, f"/api/clients/{s.client}")
    assert status == 200 and view["by"] == "fqdn" and view["complete"]
    b4 = f"{s.service}[rst,icmp-3]"
    svc = "svc.example.test."
    assert all_paths(view["chains"]) == {
        f"web.example.test. > edge.example.test. > {svc} > {b4} > {s.service}:{UDP_PORT}",
        f"web.example.test. > edge.example.test. > {svc} > {b4} > {s.service}:{TCP_PORT}",
        f"web.example.test. > edge.example.test. > {svc} > {s.service6}",
        f"{IMG_KEY} > {svc} > {b4} > {s.service}:{UDP_PORT}",
        f"{IMG_KEY} > {svc} > {b4} > {s.service}:{TCP_PORT}",
        f"{IMG_KEY} > {svc} > {s.service6}",
        f"{SCRIPT_KEY} > 192.0.2.66",
        "nope.example.test.[nx]",
    }
    assert all_paths(view["no_dns"]) == {
        f"{NO_DNS}[no-dns,rst,icmp-3] > {NO_DNS}:{UDP_PORT}",
        f"{NO_DNS}[no-dns,rst,icmp-3] > {NO_DNS}:{TCP_PORT}",
    }
    summary = view["summary"]
    assert summary["client"] == s.client and summary["activity"] >= 3
    assert (summary["flows"], summary["nx"], summary["recon"]) == (4, 1, 4)
    flows = [n for n in view["no_dns"][0]["children"]]
    assert all(f["kind"] == "flow" and f["count"] >= 1 for f in flows)


def test_by_address(corr_site: Site) -> None:
    s = corr_site
    _, view = api(s, f"/api/clients/{s.client}", by="address")
    b4 = f"{s.service}[rst,icmp-3]"
    assert all_paths(view["chains"]) == {
        f"{b4} > {s.service}:{UDP_PORT}",
        f"{b4} > {s.service}:{TCP_PORT}",
        f"{b4} > svc.example.test. > edge.example.test. > web.example.test.",
        f"{b4} > svc.example.test. > {IMG_KEY}",
        f"192.0.2.66 > {SCRIPT_KEY}",
        f"{s.service6} > svc.example.test. > edge.example.test. > web.example.test.",
        f"{s.service6} > svc.example.test. > {IMG_KEY}",
    }
    assert [n["label"] for n in view["no_dns"]] == [NO_DNS]
    assert [(n["label"], n["marks"]) for n in view["nxdomain"]] == [("nope.example.test.", ["nx"])]


def test_ipv6_client_has_flows_without_dns(corr_site: Site) -> None:
    s = corr_site
    _, view = api(s, f"/api/clients/{s.client6}")
    assert view["chains"] == []
    assert all_paths(view["no_dns"]) == {
        f"{s.service6}[no-dns,rst,icmp-4] > {s.service6}:{UDP_PORT}",
        f"{s.service6}[no-dns,rst,icmp-4] > {s.service6}:{TCP_PORT}",
    }


def test_resolutions_from_other_clients_in_the_prefix(corr_site: Site) -> None:
    s = corr_site
    _, view = api(s, f"/api/clients/{s.client}", others="1")
    assert view["others"] is True and view["no_dns"] == []
    explained = {p for p in all_paths(view["chains"]) if p.startswith("other.")}
    assert explained == {
        f"other.example.test.[other-client] > {NO_DNS}[rst,icmp-3,other-client] > {NO_DNS}:{port}"
        for port in (TCP_PORT, UDP_PORT)
    }
    # A prefix without the neighbour explains nothing more.
    _, alone = api(s, f"/api/clients/{s.client}", others="1", prefix=f"{s.client}/32")
    assert [n["label"] for n in alone["no_dns"]] == [NO_DNS]
    # The IPv6 client's default prefix is a /64 with nobody else in it.
    _, v6 = api(s, f"/api/clients/{s.client6}", others="1")
    assert v6["others"] is True and [n["label"] for n in v6["no_dns"]] == [s.service6]


def test_clients_prefix_search_and_bad_input(corr_site: Site) -> None:
    s = corr_site
    _, page = api(s, "/api/clients")
    listed = {c["client"]: c for c in page["clients"]}
    assert set(listed) - PROBE == {s.client, s.client6, NEIGHBOUR} and page["complete"]
    assert listed[s.client6]["names"] == 0 and listed[s.client6]["flows"] == 2
    _, v6 = api(s, "/api/clients", prefix="fd00:200:73::/64")
    assert [c["client"] for c in v6["clients"]] == [s.client6]
    _, v4 = api(s, "/api/clients", prefix="10.200.73.0/24")
    assert [c["client"] for c in v4["clients"]] == [s.client, NEIGHBOUR]
    _, found = api(s, "/api/clients", q="onerror")
    assert [c["client"] for c in found["clients"]] == [s.client]
    _, by_address = api(s, "/api/clients", q=s.service6)
    assert {c["client"] for c in by_address["clients"]} == {s.client, s.client6}
    for query, message in [
        ({"prefix": "10.200.73.0/33"}, "prefix: '10.200.73.0/33' is not an IPv4 or IPv6 network"),
        ({"limit": "100000"}, "limit: '100000' is not a whole number from 1 to 500"),
        ({"cursor": "-1"}, "cursor: '-1' is not a SCAN cursor (a whole number)"),
        ({"q": "x" * 300}, "q: 300 characters; the limit is 253"),
    ]:
        assert api(s, "/api/clients", **query) == (400, {"error": message})
    assert api(s, "/api/clients/not-an-address") == (
        400, {"error": "client: 'not-an-address' is not an IPv4 or IPv6 address"}
    )  # fmt: skip
    assert api(s, f"/api/clients/{s.client}", by="color") == (
        400, {"error": "by: 'color' is not one of fqdn, address"}
    )  # fmt: skip


def test_pivots(corr_site: Site) -> None:
    s = corr_site
    _, name = api(s, "/api/pivot/name", name="SVC.example.test")
    assert name["name"] == "svc.example.test."
    assert {(c["client"], c["how"]) for c in name["clients"]} == {
        (s.client, f"address {s.service}"), (s.client, f"address {s.service6}"),
        (s.client, "cname target"),
    }  # fmt: skip
    _, flows = api(s, "/api/pivot/address", address=NO_DNS, port=str(TCP_PORT))
    assert [(f["client"], f["port"]) for f in flows["flows"]] == [(s.client, TCP_PORT)]
    _, v6 = api(s, "/api/pivot/address", address=s.service6.upper())
    assert {(f["client"], f["port"]) for f in v6["flows"]} == {
        (s.client6, TCP_PORT), (s.client6, UDP_PORT)
    }  # fmt: skip
    assert api(s, "/api/pivot/address", address=NO_DNS, port="70000") == (
        400, {"error": "port: '70000' is not a port number (0-65535)"}
    )  # fmt: skip
    assert api(s, "/api/pivot/name", name="")[0] == 400


def correlate(site: Site, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "correlate", "--redis-url", site.redis.url, *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_shows_what_the_api_shows(corr_site: Site) -> None:
    s = corr_site
    listing = correlate(s, "--clients")
    assert listing.returncode == 0, listing.stderr
    rows = listing.stdout.splitlines()
    assert rows[0].split() == ["client", "activity", "names", "addrs", "flows", "nx", "recon"]
    assert {r.split()[0] for r in rows[1:]} - PROBE == {s.client, s.client6, NEIGHBOUR}
    prefixed = correlate(s, "--clients", "--prefix", "fd00:200:73::/64")
    assert [r.split()[0] for r in prefixed.stdout.splitlines()[1:]] == [s.client6]
    for by in ("fqdn", "address"):
        as_json = correlate(s, s.client, "--by", by, "--json")
        _, from_api = api(s, f"/api/clients/{s.client}", by=by)
        assert json.loads(as_json.stdout) == from_api
    tree = correlate(s, s.client).stdout
    assert tree.splitlines()[0].startswith(f"client {s.client}: activity ")
    assert "\nflows with no DNS behind them:\n" in tree
    assert f"{NO_DNS} [no-dns, rst, icmp-3]\n├─ {NO_DNS}:{UDP_PORT} ×" in tree
    assert "web.example.test.\n└─ edge.example.test.\n   └─ svc.example.test.\n" in tree
    assert "nope.example.test. ×1 [nx]" in tree


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("10.0.0.999",), "pcapd correlate: client: '10.0.0.999' is not an IPv4 or IPv6 address"),
        (("--clients", "--prefix", "nope"), "pcapd correlate: prefix: 'nope' is not an IPv4"),
        ((), "pcapd correlate: give one of: a CLIENT address, --clients, --resolved NAME"),
        (("--clients", "--resolved", "x.test"), "pcapd correlate: give one of: a CLIENT"),
    ],
)
def test_cli_bad_input(corr_site: Site, args: tuple[str, ...], message: str) -> None:
    done = correlate(corr_site, *args)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
