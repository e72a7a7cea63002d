"""What it takes to change state: the token, a session and its CSRF token, or
a bearer header; read_only and a missing token switch changes off."""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.agents.dnstap.resolvers import dig
from tests.helpers import free_port, run, wait_for
from tests.pcapd.correlator.site import NO_DNS, SIGNING_KEY, TOKEN, Site, web_server

FORM = {"client": "10.200.73.1", "service": NO_DNS, "port": "9090", "packets": "1",
        "duration": "1", "bpf": "host 192.0.2.123"}  # fmt: skip


class Client:
    """urllib with a cookie jar: a browser without JavaScript."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
            _NoRedirect(),
        )

    def send(
        self, path: str, form: dict[str, str] | None = None, headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> tuple[int, str, dict[str, str]]:  # fmt: skip
        data = (
            body
            if body is not None
            else (urllib.parse.urlencode(form).encode() if form is not None else None)
        )
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with self.opener.open(request, timeout=10) as answer:
                return answer.status, answer.read().decode(), dict(answer.headers)
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), dict(exc.headers)

    def csrf(self, path: str = "/") -> str:
        _, html, _ = self.send(path)
        match = re.search(r'name="csrf" value="([^"]+)"', html)
        assert match, html
        return match[1]

    def log_in(self) -> None:
        status, _, headers = self.send("/login", {"token": TOKEN})
        assert status == 303 and headers["Location"] == "/"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def error_of(html: str) -> str:
    match = re.search(r'<p class="error" id="error">(.*?)</p>', html, re.S)
    assert match, html
    return match[1].replace("&#39;", "'")


def test_changes_need_token_session_and_csrf(corr_site: Site) -> None:
    c = Client(corr_site.web_url)
    status, html, _ = c.send("/capture", FORM)
    assert (status, error_of(html)) == (403, "log in with the correlator token first (/login)")
    status, html, _ = c.send("/login", {"token": "wrong"})
    assert status == 403 and "that is not the correlator token" in html
    c.log_in()
    status, html, _ = c.send("/capture", FORM)
    assert status == 403
    assert (
        error_of(html) == "the form's CSRF token is missing or wrong; reload the page and try again"
    )
    status, html, _ = c.send("/capture", {**FORM, "csrf": "guessed"})
    assert status == 403 and "CSRF token is missing or wrong" in html
    # Another browser's session cookie does not come with this one's CSRF token.
    other = Client(corr_site.web_url)
    other.log_in()
    status, _, _ = c.send("/capture", {**FORM, "csrf": other.csrf()})
    assert status == 403
    status, _, headers = c.send("/capture", {**FORM, "csrf": c.csrf()})
    assert status == 303 and headers["Location"].startswith("/capture/c_10.200.73.1_")
    # Bad fields are refused before anything is published, each naming the rule.
    for field, value, message in [
        ("packets", "100000", "packets: '100000' is not a whole number from 1 to 10000"),
        ("duration", "-5", "duration: '-5' is not a whole number from 1 to 20"),
        ("node", "web.*", "node: 'web.*' is not 'any' or one of [correlator] nodere"),
        ("alias", "eth0;rm", "alias: 'eth0;rm' is not a configured interface alias"),
        ("service", "<b>x</b>", "service: '<b>x</b>' is not an IPv4 or IPv6 address"),
    ]:
        status, html, _ = c.send("/capture", {**FORM, field: value, "csrf": c.csrf()})
        assert (status, error_of(html).replace("&lt;", "<").replace("&gt;", ">")) == (400, message)
    # GET never changes anything.
    assert c.send("/client/10.200.73.1/clear")[0] == 405


def test_bearer_token_for_scripts(corr_site: Site) -> None:
    c = Client(corr_site.web_url)
    body = json.dumps(FORM).encode()
    json_headers = {"Content-Type": "application/json"}
    bearer = {**json_headers, "Authorization": f"Bearer {TOKEN}"}
    status, text, _ = c.send("/api/captures", body=body, headers=json_headers)
    assert (status, json.loads(text)) == (
        403,
        {"error": "log in with the correlator token first (/login)"},
    )
    status, text, _ = c.send("/api/captures", body=body,
                             headers={**json_headers, "Authorization": "Bearer nope"})  # fmt: skip
    assert (status, json.loads(text)) == (
        403,
        {"error": "the bearer token does not match [correlator] token"},
    )
    status, text, _ = c.send("/api/captures", body=body, headers=bearer)
    assert status == 202
    sent = json.loads(text)["request"]
    # Signed with the correlator's own kid; the key itself goes nowhere.
    assert sent["kid"] == "correlator" and len(sent["sig"]) == 64
    assert SIGNING_KEY not in text and TOKEN not in text
    # The node accepted the signature: the capture ran (nothing matched its BPF).
    wait_for(lambda: corr_site.daemon.started(sent["id"]), timeout=20)


def test_clearing_a_client(corr_site: Site) -> None:
    s = corr_site
    client = "10.200.73.6"
    run("ip", "-n", s.pair.ns_a, "addr", "add", f"{client}/24", "dev", s.pair.dev_a)
    assert s.service in dig(s.bind.port, "svc.example.test", "A", client, netns=s.pair.ns_a)
    r = s.redis.client()
    wait_for(lambda: r.exists(f"client;{client}") == 1, timeout=10)
    c = Client(s.web_url)
    c.log_in()
    status, html, _ = c.send(f"/client/{client}/clear", {"csrf": c.csrf(f"/client/{client}")})
    assert status == 200 and "keys removed" in html
    assert not [k for k in r.scan_iter(match=f"*{client}*", count=1000)]
    assert r.exists(f"client;{s.client}") == 1  # nobody else's keys


@contextlib.contextmanager
def another_web(site: Site, tmp_path: Path, change: str) -> Iterator[str]:
    """The site's web config with one line changed, served on another port."""
    text = re.sub(r"\[correlator\]\nport = \d+", f"[correlator]\nport = {free_port()}",
                  site.web_config.read_text())  # fmt: skip
    config = tmp_path / "web.toml"
    config.write_text(text.replace('kid = "correlator"', f'kid = "correlator"\n{change}'))
    with web_server(config, tmp_path / "web.log") as url:
        yield url


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ("read_only = true", "this correlator is read-only ([correlator] read_only = true)"),
        ("", "no [correlator] token is configured, so nothing can be changed"),
    ],
    ids=["read_only", "no_token"],
)
def test_changes_switched_off(corr_site: Site, tmp_path: Path, change: str, why: str) -> None:
    if not change:  # drop the token line instead of adding one
        corr_site_config = corr_site.web_config.read_text().replace(f'token = "{TOKEN}"\n', "")
        copy = tmp_path / "base.toml"
        copy.write_text(corr_site_config)
        corr_site = Site(**{**corr_site.__dict__, "web_config": copy})
    with another_web(corr_site, tmp_path, change) as base:
        c = Client(base)
        status, html, _ = c.send("/login", {"token": TOKEN})
        assert (status, error_of(html)) == (403, why)
        status, text, _ = c.send("/api/captures", body=json.dumps(FORM).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        assert (status, json.loads(text)) == (403, {"error": why})
        _, page, _ = c.send("/capture/new?client=10.200.73.1&service=10.200.73.2&port=9090")
        assert why in page and 'id="capture"' not in page
        assert c.send(f"/client/{corr_site.client}")[0] == 200  # reading still works
