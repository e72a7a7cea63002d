"""bench/benchlib.py: a benchmark whose peer is missing fails, saying what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from benchlib import BenchError, internet_checksum, require  # noqa: E402


def test_require_finds_tools_and_python_peers() -> None:
    found = require(("sh",), {"moto_server": "moto[server]"})
    assert Path(found["sh"]).name == "sh"
    assert found["moto_server"] == str(Path(sys.executable).parent / "moto_server")


def test_require_names_every_missing_one() -> None:
    with pytest.raises(BenchError) as info:
        require(("sh", "no-such-tool"), {"no_such_peer": "no-such-peer"})
    assert str(info.value) == (
        "missing no-such-tool (not on PATH; `make setup` installs it); "
        "no_such_peer (pip install 'no-such-peer', or -e '.[bench]')"
    )


@pytest.mark.parametrize(
    ("script", "missing"),
    [
        (
            "dnstap_ingest.py",
            "missing redis-server (not on PATH; `make setup` installs it); "
            "dnstap_receiver (pip install 'dnstap-receiver', or -e '.[bench]')\n",
        ),
        ("upload.py", None),
        ("flow_agent.py", "missing redis-server"),
    ],
)
def test_a_benchmark_without_its_peers_fails_before_measuring(
    script: str, missing: str | None, tmp_path: Path
) -> None:
    """PATH without redis-server; python peers hidden by a bare interpreter copy's dir."""
    python = tmp_path / "python3"
    python.symlink_to(sys.executable)
    done = subprocess.run(
        [str(python), str(BENCH / script)],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PATH": str(tmp_path), "PYTHONPATH": os.pathsep.join(sys.path)},
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    name = script.removesuffix(".py")
    assert done.stderr.startswith(f"{name}: {missing or 'missing moto_server'}"), done.stderr


def test_internet_checksum_of_a_known_ipv4_header() -> None:
    # The worked example of an IPv4 header, checksum field zeroed: 0xB861.
    header = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(header) == 0xB861
    # An odd length is padded with a zero byte, as RFC 1071 says.
    assert internet_checksum(b"\x01") == internet_checksum(b"\x01\x00")
