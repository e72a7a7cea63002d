"""`pcapd web` refuses to start, in one line, when it could not do its job."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE
from tests.helpers import RedisServer, free_port
from tests.pcapd.correlator.site import web_server


def web(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcapd", "web", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "web.toml"
        config.write_text(f"[redis]\nport = {free_port()}\n\n[correlator]\nport = {port}\n")
        done = web(config)
    assert done.returncode == EXIT_FAILURE
    assert done.stderr.strip().endswith(
        f"pcapd web: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[security]\nkeys = { ops = "k" }\nrequire_signed = true\n',
            "error: correlator.kid: this site requires signed requests",
        ),
        (
            '[security]\nkeys = { ops = "k" }\n\n[correlator]\nkid = "nope"\n',
            "error: correlator.kid: 'nope' is not a key in [security] keys",
        ),
        (
            "[correlator]\nmax_packets = 10\ndefault_packets = 50\n",
            "error: correlator.default_packets: 50 exceeds max_packets=10",
        ),
        (
            "[correlator]\nscan_count = 100000\n",
            "error: correlator.scan_count: must be at least 10 and at most 1000, got 100000",
        ),
        (
            "[correlator]\nport = 70000\n",
            "error: correlator.port: must be at least 1 and at most 65535",
        ),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "web.toml"
    config.write_text(text)
    done = web(config)
    assert done.returncode == EXIT_CONFIG and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_live_result_pages_are_bounded(redis_srv: RedisServer, tmp_path: Path) -> None:
    """threads = 3 leaves one thread for live streams; a second stream is refused."""
    config = tmp_path / "web.toml"
    # A stream lasts max_duration + result_wait: 2 s here.
    limits = "threads = 3\nmax_duration = 1\nresult_wait = 1\n"
    config.write_text(
        f"[redis]\nport = {redis_srv.port}\n\n[correlator]\nport = {free_port()}\n{limits}"
    )
    events = "/api/captures/c_10.0.0.1_10.0.0.2_80_0123456789ab/events"
    with web_server(config, tmp_path / "web.log") as url:
        with urllib.request.urlopen(url + events, timeout=10) as first:
            assert first.headers["Content-Type"].startswith("text/event-stream")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + events, timeout=10)
            assert refused.value.code == 503
            assert json.loads(refused.value.read()) == {"error": "1 live result pages are open "
                "already; close one or raise [correlator] threads"}  # fmt: skip
            started = time.monotonic()
            assert b"event: end" in first.read()  # ends after max_duration + result_wait
            assert time.monotonic() - started < 10
        # The slot came back with the first stream's end.
        with urllib.request.urlopen(url + events, timeout=60) as again:
            assert again.status == 200


def test_every_live_page_the_threads_allow_is_served_beside_other_requests(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """waitress serves 100 HTTP connections at once unless told otherwise:
    with threads = 110 the 101st live page, and every request after it,
    waited unanswered until a live page ended."""
    port = free_port()
    config = tmp_path / "web.toml"
    config.write_text(f"[redis]\nport = {redis_srv.port}\n\n[correlator]\nport = {port}\n"
                      "threads = 110\nmax_duration = 60\nresult_wait = 5\n")  # fmt: skip
    events = "/api/captures/c_10.0.0.1_10.0.0.2_443_0123456789ab/events"

    def live_page(stream: socket.socket) -> bytes:
        stream.sendall(f"GET {events} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and (chunk := stream.recv(4096)):
            head += chunk
        return head

    with web_server(config, tmp_path / "web.log") as url:
        streams = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(105)]
        try:  # 105 of the 108 live slots, open at once
            with ThreadPoolExecutor(len(streams)) as pool:
                heads = list(pool.map(live_page, streams))
            assert [h[:40] for h in heads if not h.startswith(b"HTTP/1.1 200")] == []
            with urllib.request.urlopen(f"{url}/api/clients/10.0.0.1", timeout=10) as answer:
                assert answer.status == 200
        finally:
            for stream in streams:
                stream.close()
