"""`pcapd web` when its Redis refuses, hangs or goes away: a page and the
JSON API answer 503 with what went wrong, soon, and the server keeps
serving and recovers when Redis does.

Each test has a redis-server of its own (`private_redis`), stopped,
SIGSTOPped or reconfigured by its PID or over its own port, and `pcapd web`
as a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from markupsafe import escape

from agents import store
from pcapd.correlator import captures
from tests.helpers import RedisCluster, RedisServer, free_port, wait_for
from tests.pcapd.correlator.browser import chromium
from tests.pcapd.correlator.site import web_server

CLIENT = "10.0.0.1"
SERVICE = "10.0.0.2"


@contextlib.contextmanager
def web(
    server: RedisServer | RedisCluster,
    tmp_path: Path,
    extra: str = "",
    redis_extra: str = "",
    threads: int = 4,
) -> Iterator[str]:
    """`pcapd web` on `server` with one client and its flow stored; yields its
    URL. `extra`: more [correlator] lines, `redis_extra` more [redis] lines."""
    r = server.client()
    r.set(store.client_key(CLIENT), 1)
    r.set(store.flow_key(CLIENT, SERVICE, 443), 3)
    config = tmp_path / "web.toml"
    where = f'url = "{server.url}"' if isinstance(server, RedisCluster) else f"port = {server.port}"
    redis_section = f"[redis]\n{where}\n{redis_extra}"
    config.write_text(
        f"{redis_section}\n[correlator]\nport = {free_port()}\nthreads = {threads}\n{extra}"
    )
    with web_server(config, tmp_path / "web.log") as url:
        yield url


def fetch(url: str, timeout: float = 30) -> tuple[int, str, float]:
    """(status, body, seconds taken)."""
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as answer:
            status, body = answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        status, body = refused.code, refused.read().decode()
    return status, body, time.monotonic() - started


def api(url: str) -> tuple[int, Any]:
    status, body, _ = fetch(url)
    return status, json.loads(body)


def test_a_refused_read_is_an_error_not_an_empty_client(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """ACL NOPERM on MGET: the values are not there to show, so the client
    view says why (503) instead of a client with no flows, marked complete."""
    with web(private_redis, tmp_path) as url:
        r = private_redis.client()
        r.acl_setuser("default", enabled=True, nopass=True, commands=["-mget"])
        status, body = api(f"{url}/api/clients/{CLIENT}")
        assert status == 503, body
        assert "no permissions to run the 'mget' command" in body["error"]
        assert body["error"].startswith(f"Redis at redis://127.0.0.1:{private_redis.port}/0: ")
        status, page, _ = fetch(f"{url}/")
        assert status == 503 and "no permissions to run the &#39;mget&#39; command" in page
        r.acl_setuser("default", enabled=True, nopass=True, commands=["+mget"])
        status, body = api(f"{url}/api/clients/{CLIENT}")
        assert status == 200 and body["summary"]["flows"] == 1, body


def test_a_refused_index_read_falls_back_to_scan_and_says_so(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """ACL -sscan, then an index key holding a string (WRONGTYPE): the client
    is read by SCAN, whole, and the client view, the clients page (JSON, HTML)
    and the CLI say which command Redis refused and why; the log says it once
    per cause, however many requests meet it."""
    other = "10.0.0.3"
    with web(private_redis, tmp_path) as url:
        r = private_redis.client()
        r.sadd(store.index_key(CLIENT), store.flow_key(CLIENT, SERVICE, 443))
        status, body = api(f"{url}/api/clients/{CLIENT}")
        assert status == 200 and body["index_refused"] == [], body
        r.acl_setuser("default", enabled=True, nopass=True, commands=["-sscan"])
        refusal = "this user has no permissions to run the 'sscan' command"
        nopass = {"command": "SSCAN", "key": store.index_key(CLIENT), "error": refusal}
        for _ in range(2):
            status, body = api(f"{url}/api/clients/{CLIENT}")
            assert status == 200 and body["summary"]["flows"] == 1 and body["complete"], body
            assert body["index_refused"] == [nopass]
        status, page = api(f"{url}/api/clients")
        assert status == 200 and page["index_refused"] == [nopass], page
        said = f"found by SCAN, which is slower: Redis refused SSCAN of {CLIENT};index ({refusal})"
        for path in (f"/client/{CLIENT}", "/"):
            status, html, _ = fetch(url + path)
            assert status == 200 and f"Keys {escape(said)}." in html, html
        shown = subprocess.run(
            [sys.executable, "-m", "pcapd", "correlate", "--redis-url", private_redis.url, CLIENT],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert shown.returncode == 0 and f"(keys {said})" in shown.stdout, shown.stdout
        assert "event=correlator_index_refused command=SSCAN" in shown.stderr, shown.stderr
        r.acl_setuser("default", enabled=True, nopass=True, commands=["+sscan"])
        r.set(store.client_key(other), 1)
        r.set(store.flow_key(other, SERVICE, 80), 2)
        r.set(store.index_key(other), "not a set")
        status, body = api(f"{url}/api/clients/{other}")
        assert status == 200 and body["summary"]["flows"] == 1, body
        wrongtype = "WRONGTYPE Operation against a key holding the wrong kind of value"
        assert body["index_refused"] == [
            {"command": "SSCAN", "key": store.index_key(other), "error": wrongtype}
        ]
    logged = [line for line in (tmp_path / "web.log").read_text().splitlines()
              if "event=correlator_index_refused" in line]  # fmt: skip
    assert len(logged) == 2, logged
    assert logged[0].endswith(
        f'command=SSCAN key={CLIENT};index error="{refusal}" '
        f"redis=redis://127.0.0.1:{private_redis.port}/0 fallback=SCAN"
    ), logged
    assert f'error="{wrongtype}"' in logged[1], logged


def test_a_hung_redis_answers_503_soon_and_the_server_recovers(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """SIGSTOP: Redis accepts connections (the kernel does) and answers
    nothing. Each request answers 503 after about 2 x redis_timeout (one
    retry), a burst of twice `threads` requests too, instead of redis-py's
    default 10 retries (113 s a request with the 10 s socket timeout). After
    SIGCONT no connection left in the pool holds a stale reply. The pooled
    connections are due a health check (a PING, retried on its own) too."""
    assert private_redis.proc is not None
    pid = private_redis.proc.pid
    with web(
        private_redis, tmp_path, "redis_timeout = 1.0\n", "health_check_interval = 1\n"
    ) as url:
        assert api(f"{url}/api/clients/{CLIENT}")[0] == 200
        time.sleep(1.5)
        os.kill(pid, signal.SIGSTOP)
        try:
            paths = [f"/api/clients/{CLIENT}", "/", f"/client/{CLIENT}", "/api/clients"] * 2
            with ThreadPoolExecutor(len(paths)) as pool:
                answers = list(pool.map(lambda path: fetch(url + path, timeout=60), paths))
        finally:
            os.kill(pid, signal.SIGCONT)
        for status, body, seconds in answers:
            assert status == 503 and "Timeout reading from 127.0.0.1" in body, body
            assert seconds < 30  # 2 s each, 4 threads for 8 requests: ~4 s
        logged = (tmp_path / "web.log").read_text()
        assert logged.count("event=correlator_redis_error") == len(paths), logged
        for _ in range(3):
            status, body = api(f"{url}/api/clients/{CLIENT}")
            assert status == 200 and body["summary"]["flows"] == 1, body


def test_a_live_page_opened_while_redis_is_down_is_a_503(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """The subscription and the first read of the results stream happen
    before the response starts, so Redis down answers 503 with the reason
    (not waitress's bare 500 from inside the stream); the live slot comes
    back each time (threads = 4: two slots, three tries), and a stream opens
    once Redis is back."""
    events = f"/api/captures/c_{CLIENT}_{SERVICE}_443_0123456789ab/events"
    with web(private_redis, tmp_path, "max_duration = 1\nresult_wait = 1\n") as url:
        private_redis.stop()
        for _ in range(3):
            status, body, _ = fetch(url + events)
            assert status == 503, body
            assert json.loads(body)["error"] == (
                f"Redis at redis://127.0.0.1:{private_redis.port}/0: Error 111 connecting to "
                f"127.0.0.1:{private_redis.port}. Connection refused."
            )
        private_redis.start()
        status, body, _ = fetch(url + events)
        assert status == 200 and body.endswith("event: end\ndata: {}\n\n"), body


def test_a_live_page_whose_redis_fails_mid_stream_ends_saying_why(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """redis-server stopped by its PID while a live stream is open: the
    stream's last event is `failed`, with the reason the 503 of a page
    opened then gives, not a bare end of stream (which EventSource answers by
    reconnecting, without a word); the log says it as for a 503."""
    events = f"/api/captures/c_{CLIENT}_{SERVICE}_443_0123456789ab/events"
    with web(private_redis, tmp_path, "max_duration = 60\nresult_wait = 1\n") as url:
        with urllib.request.urlopen(url + events, timeout=30) as answer:
            assert answer.status == 200
            assert answer.readline() == b": keep-alive\n"  # the stream is under way
            private_redis.stop()
            started = time.monotonic()
            rest = answer.read().decode()
        assert time.monotonic() - started < 10
        status, body, _ = fetch(url + events)
        assert status == 503, body
        reason = json.loads(body)["error"]
        assert reason.startswith(f"Redis at redis://127.0.0.1:{private_redis.port}/0: ")
        assert rest.endswith(f"event: failed\ndata: {json.dumps({'error': reason})}\n\n"), rest
        assert "event: end" not in rest
    logged = (tmp_path / "web.log").read_text()
    assert logged.count(f"event=correlator_redis_error path={events}") == 2, logged


def test_a_live_stream_whose_redis_hangs_ends_saying_so(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """SIGSTOP: a hung Redis sends nothing, as an idle one does. The stream
    PINGs after SILENCE_PING s of silence: answered, it goes on (here past
    two of them); unanswered within redis_timeout, it ends with `failed`
    (it used to wait out max_duration, then say no result came)."""
    assert private_redis.proc is not None
    pid = private_redis.proc.pid
    events = f"/api/captures/c_{CLIENT}_{SERVICE}_443_0123456789ab/events"
    with (
        web(private_redis, tmp_path, "max_duration = 120\nredis_timeout = 1.0\n") as url,
        urllib.request.urlopen(url + events, timeout=60) as answer,
    ):
        assert answer.status == 200
        alive_until = time.monotonic() + 2.5 * captures.SILENCE_PING
        while time.monotonic() < alive_until:
            assert answer.readline() in (b": keep-alive\n", b"\n")
        os.kill(pid, signal.SIGSTOP)
        try:
            stopped = time.monotonic()
            rest = answer.read().decode()
            took = time.monotonic() - stopped
        finally:
            os.kill(pid, signal.SIGCONT)
    assert took < captures.SILENCE_PING + 1.0 + 3 * captures.EVENT_POLL, took
    reason = (f"Redis at redis://127.0.0.1:{private_redis.port}/0: no answer to a PING on the "
              "subscription within 1 s")  # fmt: skip
    assert rest.endswith(f"event: failed\ndata: {json.dumps({'error': reason})}\n\n"), rest


def test_the_live_page_shows_why_its_stream_stopped(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """In Chromium: the capture page's stream is open (its reply channel has
    a subscriber), redis-server is stopped by its PID, and the page says the
    reason and stops: no reconnect after EventSource's 3 s retry."""
    request_id = f"c_{CLIENT}_{SERVICE}_443_0123456789ab"
    events = f"/api/captures/{request_id}/events"
    r = private_redis.client()
    channel = captures.reply_channel(request_id)
    with (
        web(private_redis, tmp_path, "max_duration = 60\nresult_wait = 1\n") as url,
        chromium() as browser,
    ):
        page = browser.new_page()
        opened: list[str] = []
        page.on("request", lambda sent: opened.append(sent.url) if events in sent.url else None)
        page.goto(f"{url}/capture/{request_id}")
        wait_for(lambda: dict(r.pubsub_numsub(channel)).get(channel.encode()) == 1, timeout=10)
        private_redis.stop()
        state = page.locator("#state.error")
        state.wait_for(timeout=10_000)
        assert state.inner_text() == (
            f"The results stream stopped: Redis at redis://127.0.0.1:{private_redis.port}/0: "
            f"Error 111 connecting to 127.0.0.1:{private_redis.port}. Connection refused."
        )
        page.wait_for_timeout(4_000)
        assert opened == [url + events]


def test_a_live_page_opened_while_redis_is_down_says_why(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """The stream's 503 comes before any event, and EventSource closes on it
    without the reason: the page asks for it and shows it, instead of
    "Waiting for result events" for good."""
    request_id = f"c_{CLIENT}_{SERVICE}_443_0123456789ab"
    with (
        web(private_redis, tmp_path, "max_duration = 60\nresult_wait = 1\n") as url,
        chromium() as browser,
    ):
        private_redis.stop()
        page = browser.new_page()
        page.goto(f"{url}/capture/{request_id}")
        state = page.locator("#state.error")
        state.wait_for(timeout=10_000)
        assert state.inner_text() == (
            f"The results stream could not be opened: Redis at "
            f"redis://127.0.0.1:{private_redis.port}/0: "
            f"Error 111 connecting to 127.0.0.1:{private_redis.port}. Connection refused."
        )


LIVE_PAGES = 100  # waitress's connection_limit: HTTP connections served at once


def test_the_redis_pool_is_sized_for_the_threads(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    """threads = 110 allows 108 live pages; each holds a subscription and reads
    the stream with another connection. redis-py's default pool of 100
    refused the 101st connection (503 'Too many connections'); a pool of
    2 x threads serves all 100 pages waitress lets in at once."""
    events = f"/api/captures/c_{CLIENT}_{SERVICE}_443_0123456789ab/events"

    def opened(_: int) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url + events, timeout=60) as answer:
                return answer.status, answer.headers["Content-Type"]
        except urllib.error.HTTPError as refused:
            return refused.code, refused.read().decode()

    with web(private_redis, tmp_path, "max_duration = 10\nresult_wait = 1\n", threads=110) as url:
        with ThreadPoolExecutor(LIVE_PAGES) as pool:
            answers = list(pool.map(opened, range(LIVE_PAGES)))
        assert [a for a in answers if a[0] != 200] == []
        status, body, _ = fetch(f"{url}/api/clients/{CLIENT}", timeout=60)
        assert status == 200, body


def test_a_hung_cluster_primary_answers_503_soon(
    private_cluster: RedisCluster, tmp_path: Path
) -> None:
    """One of three primaries SIGSTOPped: every view walks or reads it, so
    each answers 503 after about redis_timeout (a cluster node's own client
    does not retry; the cluster's retry does not resend a timed-out read),
    not connect()'s 10 s; after SIGCONT, once the cluster is up again, the
    views are whole again."""
    port = private_cluster.ports[0]
    pid = private_cluster.procs[port].pid
    with web(private_cluster, tmp_path, "redis_timeout = 1.0\n") as url:
        assert api(f"{url}/api/clients/{CLIENT}")[0] == 200
        os.kill(pid, signal.SIGSTOP)
        try:
            answers = [fetch(url + p) for p in ("/api/clients", f"/api/clients/{CLIENT}")]
        finally:
            os.kill(pid, signal.SIGCONT)
        for status, body, seconds in answers:
            assert status == 503 and f"Timeout reading from 127.0.0.1:{port}" in body, body
            assert seconds < 6, seconds
        # The other nodes may have marked it failing (CLUSTERDOWN) for a moment.
        wait_for(lambda: api(f"{url}/api/clients/{CLIENT}")[0] == 200, timeout=30)
        status, body = api(f"{url}/api/clients/{CLIENT}")
        assert status == 200 and body["summary"]["flows"] == 1, body
