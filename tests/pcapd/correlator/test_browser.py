"""A real browser on the correlator: the chains are drawn, hostile names stay
text, and "capture this flow" ends with the flow's packets in a file."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import dpkt
from playwright.sync_api import Dialog, Page

from tests.agents.flow.traffic import TCP_PORT
from tests.helpers import wait_for
from tests.pcapd.correlator.browser import chromium
from tests.pcapd.correlator.site import (
    IMG_KEY,
    NO_DNS,
    SCRIPT_KEY,
    SIGNING_KEY,
    TOKEN,
    Site,
)

PACKETS = 6


def watch_dialogs(page: Page) -> list[str]:
    """Every alert/confirm the page opens (an injected script would)."""
    dialogs: list[str] = []

    def seen(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", seen)
    return dialogs


def no_injection(page: Page, dialogs: list[str]) -> None:
    """Nothing a DNS name or a query parameter carried became markup."""
    assert dialogs == []
    assert page.locator("img").count() == 0
    assert page.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    assert page.evaluate("typeof window.__pwned") == "undefined"
    html = page.content()
    assert TOKEN not in html and SIGNING_KEY not in html


def test_chains_drawn_and_hostile_names_stay_text(corr_site: Site) -> None:
    s = corr_site
    with chromium() as browser:
        page = browser.new_page()
        dialogs = watch_dialogs(page)
        page.goto(f"{s.web_url}/client/{s.client}")
        svg = page.locator("svg.chains").first
        assert svg.is_visible()
        flow = page.locator(f'g.flow[data-label="{s.service}:{TCP_PORT}"]')
        assert flow.count() == 2  # under web.example.test. and under the hostile alias
        assert page.locator(f'g.address.no-dns[data-label="{NO_DNS}"]').count() == 1
        assert page.locator('g.name.nx[data-label="nope.example.test."]').count() == 1
        assert page.locator(f'g.address.rst[data-label="{s.service}"]').count() == 2
        # The hostile names are there, as text, and their links go to their pivots.
        for name in (SCRIPT_KEY, IMG_KEY):
            node = page.locator("g.name").filter(has=page.locator(f"title >> text={name}"))
            assert node.count() == 1, name
            href = node.locator("a").first.get_attribute("href") or ""
            assert urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)["name"] == [name]
        no_injection(page, dialogs)
        # Follow the hostile name's pivot: its page names it, as text.
        page.locator("g.name").filter(has=page.locator(f"title >> text={IMG_KEY}")).locator(
            "a"
        ).first.click()
        assert page.locator("h1").inner_text() == f"Who resolved {IMG_KEY}"
        assert page.locator("#pivot td").first.inner_text() == s.client
        no_injection(page, dialogs)
        # Hostile query parameters are shown back as text too.
        hostile = '"><script>window.__pwned=1</script><img src=x onerror=alert(1)>'
        page.goto(f"{s.web_url}/?" + urllib.parse.urlencode({"q": hostile}))
        assert page.locator("input[name=q]").input_value() == hostile
        page.goto(f"{s.web_url}/pivot/name?" + urllib.parse.urlencode({"name": hostile}))
        assert hostile.lower() in page.locator("h1").inner_text()
        page.goto(f"{s.web_url}/?" + urllib.parse.urlencode({"prefix": hostile}))
        assert page.locator("#error").inner_text().startswith("prefix: '\"><script>")
        no_injection(page, dialogs)


def test_capture_this_flow(corr_site: Site) -> None:
    s = corr_site
    with chromium() as browser:
        page = browser.new_page()
        dialogs = watch_dialogs(page)
        page.goto(f"{s.web_url}/login")
        page.fill("input[name=token]", "not the token")
        page.click("text=Log in >> nth=-1")
        assert page.locator("#error").inner_text() == "that is not the correlator token"
        page.fill("input[name=token]", TOKEN)
        page.click("text=Log in >> nth=-1")
        page.wait_for_url(f"{s.web_url}/")
        page.click(f"text={s.client}")
        flow = page.locator(f'g.flow[data-label="{s.service}:{TCP_PORT}"]').first
        flow.locator("a.capture").click()
        page.wait_for_url(re.compile(r".*/capture/new\?.*"))
        bpf = page.locator("input[name=bpf]").input_value()
        assert bpf == f"host {s.client} and host {s.service} and port {TCP_PORT}"
        page.select_option("select[name=alias]", "veth")
        page.fill("input[name=packets]", str(PACKETS))
        no_injection(page, dialogs)
        page.click("#start")
        page.wait_for_url(re.compile(r".*/capture/c_.*"))
        request_id = page.url.rsplit("/", 1)[1]
        assert request_id.startswith(f"c_{s.client}_{s.service}_{TCP_PORT}_")
        wait_for(lambda: s.daemon.started(request_id), timeout=20)
        s.traffic(s.service)
        ok = page.locator("#events tr.status-ok")
        ok.wait_for(timeout=30_000)
        assert ok.locator("td.status").inner_text() == "ok"
        path = Path(ok.locator("code.local").inner_text())
        no_injection(page, dialogs)
        # The captures view lists it, filtered by client and by address.
        for query in (f"client={s.client}", f"address={s.service}"):
            page.goto(f"{s.web_url}/captures?{query}")
            assert page.locator(f"#events a >> text={request_id}").count() == 1
        page.goto(f"{s.web_url}/captures?client={NO_DNS}")
        assert page.locator("#events tr.none").count() == 1
    assert path.parent == s.daemon.localdir and path.exists()
    with path.open("rb") as handle:
        packets = [dpkt.ethernet.Ethernet(frame) for _, frame in dpkt.pcap.Reader(handle)]
    assert len(packets) == PACKETS
    for eth in packets:
        ip, tcp = eth.data, eth.data.data
        assert isinstance(tcp, dpkt.tcp.TCP)
        hosts = {dpkt.utils.inet_to_str(ip.src), dpkt.utils.inet_to_str(ip.dst)}
        assert hosts == {s.client, s.service} and TCP_PORT in (tcp.sport, tcp.dport)
