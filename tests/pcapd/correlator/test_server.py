"""`pcapd web` refuses to start, in one line, when it could not do its job."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port


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
    assert done.returncode == 1
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
            "[correlator]\nport = 70000\n",
            "error: correlator.port: must be at least 1 and at most 65535",
        ),
    ],
)
def test_bad_config(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "web.toml"
    config.write_text(text)
    done = web(config)
    assert done.returncode == 1 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
