"""Pivots one bounded page at a time: the JSON API, the CLI and the page's
"More" link walk the same SCAN, and every flow turns up exactly once.

A private redis-server, keys spelled by agents/store.py, `pcapd web` as a
subprocess with tiny bounds (so a few hundred keys take several pages) and a
long `scan_seconds` (so pages end by key budget alone and the three ways of
reading them see the same pages).
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agents import store
from pcapd.core.config import ConfigError, parse_config
from tests.helpers import RedisServer, free_port
from tests.pcapd.correlator.browser import chromium
from tests.pcapd.correlator.site import web_server

SERVICE = "198.51.100.80"
CLIENTS = 150
BAD_CURSOR = "cursor: {} is not a SCAN cursor (a whole number)"
BOUNDS = "scan_count = 10\nscan_budget = 100\nscan_seconds = 60.0\n"


@pytest.fixture
def paged_site(redis_srv: RedisServer, tmp_path: Path) -> Iterator[tuple[str, Path, set[str]]]:
    """(web URL, config file, clients with a flow to SERVICE:443)."""
    r = redis_srv.client()
    pipe = r.pipeline(transaction=False)
    clients = {f"10.8.0.{n}" for n in range(CLIENTS)}
    for client in clients:
        pipe.set(store.client_key(client), 1)
        pipe.set(store.flow_key(client, SERVICE, 443), 2)
        pipe.set(store.flow_key(client, SERVICE, 80), 1)
    pipe.execute()
    config = tmp_path / "web.toml"
    config.write_text(
        f"[redis]\nport = {redis_srv.port}\n\n[correlator]\nport = {free_port()}\n{BOUNDS}"
    )
    with web_server(config, tmp_path / "web.log") as url:
        yield url, config, clients


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcapd", "correlate", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_json_and_cli_walk_the_same_pages(paged_site: tuple[str, Path, set[str]]) -> None:
    url, config, clients = paged_site
    seen: list[tuple[str, int, int]] = []
    cursor, pages, progress = "0", 0, 0.0
    while True:
        query = urllib.parse.urlencode({"address": SERVICE, "port": "443", "cursor": cursor})
        status, page = get_json(f"{url}/api/pivot/address?{query}")
        assert status == 200, page
        shown = cli(config, "--talked", SERVICE, "--port", "443", "--cursor", cursor, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == page
        assert page["progress"] >= progress
        progress = page["progress"]
        seen += [(f["client"], f["port"], f["count"]) for f in page["flows"]]
        pages += 1
        if page["complete"]:
            assert page["cursor"] == 0 and page["progress"] == 1.0
            break
        text = cli(config, "--talked", SERVICE, "--port", "443", "--cursor", cursor).stdout
        assert text.rstrip().endswith(f"more: --cursor {page['cursor']})"), text
        assert "of the keyspace" in text
        cursor = str(page["cursor"])
    assert pages > 3
    assert sorted(seen) == sorted((c, 443, 2) for c in clients)  # each flow once, counts intact


def test_more_link_in_the_browser(paged_site: tuple[str, Path, set[str]]) -> None:
    url, _, clients = paged_site
    found: list[str] = []
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/pivot/address?{urllib.parse.urlencode({'address': SERVICE})}")
        for _ in range(100):
            rows = page.locator("#pivot tbody tr td:first-child a")
            found += rows.all_inner_texts()
            paging = page.locator("#paging").inner_text()
            more = page.locator("a#next")
            if more.count() == 0:
                assert "the scan covered the whole keyspace" in paging
                break
            assert "the scan has covered about" in paging and "% of the keyspace" in paging
            more.click()
            page.wait_for_load_state()
    # Two flows per client (ports 80 and 443), each shown once.
    assert sorted(found) == sorted([*clients, *clients])


def test_bad_cursor_is_refused_and_the_server_keeps_serving(
    paged_site: tuple[str, Path, set[str]],
) -> None:
    url, config, _ = paged_site
    for path in ("/api/pivot/address?address=198.51.100.80&cursor=-1",
                 "/api/pivot/name?name=x.test&cursor=abc"):  # fmt: skip
        bad = path.rsplit("=", 1)[1]
        assert get_json(url + path) == (
            400, {"error": BAD_CURSOR.format(repr(bad))}
        )  # fmt: skip
    done = cli(config, "--resolved", "x.test", "--cursor", "abc")
    assert done.returncode == 2
    assert done.stderr.strip() == f"pcapd correlate: {BAD_CURSOR.format(repr('abc'))}"
    assert get_json(f"{url}/api/pivot/name?name=x.test")[0] == 200


def test_clients_page_says_how_far_it_got(paged_site: tuple[str, Path, set[str]]) -> None:
    url = paged_site[0]
    status, first = get_json(f"{url}/api/clients")
    assert status == 200 and not first["complete"] and 0 < first["progress"] < 1
    with urllib.request.urlopen(f"{url}/", timeout=30) as answer:
        html = answer.read().decode()
    assert "the scan has covered about" in html
    more = f"/?prefix=&amp;q=&amp;cursor={first['cursor']}"
    assert f'<a id="next" href="{more}">Next page</a>' in html


def test_scanned_is_said_to_be_what_scan_returned(paged_site: tuple[str, Path, set[str]]) -> None:
    """The first page of flows to port 443 spends the budget of 100 keys
    walking a keyspace where one key in three matches: `scanned` is the ~33
    keys SCAN returned, so the page and the CLI say that, not that they
    examined that many."""
    url, config, _ = paged_site
    query = urllib.parse.urlencode({"address": SERVICE, "port": "443"})
    status, page = get_json(f"{url}/api/pivot/address?{query}")
    assert status == 200 and not page["complete"], page
    assert page["scanned"] == len(page["flows"]) < 100
    said = f"SCAN returned {page['scanned']} matching keys"
    text = cli(config, "--talked", SERVICE, "--port", "443").stdout
    assert f"({said}; the scan has covered about" in text and "examined" not in text, text
    with urllib.request.urlopen(f"{url}/pivot/address?{query}", timeout=30) as answer:
        html = answer.read().decode()
    assert f"{said} for this page;" in html and "Examined" not in html


RANGE = "must be at least {} and at most {}, got {}"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"scan_count": 5000}, "correlator.scan_count: " + RANGE.format(10, 1000, 5000)),
        ({"scan_seconds": 0}, "correlator.scan_seconds: " + RANGE.format(0.01, 60.0, 0)),
        ({"keys_per_command": 0}, "correlator.keys_per_command: " + RANGE.format(1, 1000, 0)),
        ({"keys_per_pipeline": 50}, "correlator.keys_per_command: 100 exceeds "
         "keys_per_pipeline=50: a pipeline holds at least one command"),
        ({"read_index": "no"}, "correlator.read_index: expected true or false"),
        ({"result_wait": 7200}, "correlator.result_wait: " + RANGE.format(1, 3600, 7200)),
    ],
)  # fmt: skip
def test_bounds_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"correlator": fields})
    assert any(e.startswith(message) for e in caught.value.errors), caught.value.errors


@pytest.mark.parametrize(
    "args", [(), ("--clients", "--resolved", "x.test"), ("10.0.0.1", "--talked", "10.0.0.2")]
)
def test_cli_wants_one_view(args: tuple[str, ...], redis_srv: RedisServer) -> None:
    done = subprocess.run([sys.executable, "-m", "pcapd", "correlate", "--redis-url", redis_srv.url,
                           *args], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == ("pcapd correlate: give one of: a CLIENT address, --clients, "
                                   "--resolved NAME, --talked ADDRESS")  # fmt: skip
