"""bench/benchlib.py: a benchmark whose peer is missing fails, saying what is missing."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from benchlib import BenchError, internet_checksum, metric_value, require  # noqa: E402


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


PAGE = b"""# HELP pcapd_trigger_latency_seconds From a request leaving its source
# TYPE pcapd_trigger_latency_seconds histogram
pcapd_trigger_latency_seconds_bucket{le="0.001"} 1.0
pcapd_trigger_latency_seconds_count 3.0
pcapd_trigger_latency_seconds_sum 0.0061
"""


@pytest.fixture
def metrics_page() -> Iterator[str]:
    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_metric_value_reads_one_series_and_names_a_missing_one(metrics_page: str) -> None:
    assert metric_value(metrics_page, "pcapd_trigger_latency_seconds_sum") == 0.0061
    assert metric_value(metrics_page, "pcapd_trigger_latency_seconds_count") == 3.0
    with pytest.raises(BenchError, match=r"no pcapd_trigger_latency_seconds$"):
        metric_value(metrics_page, "pcapd_trigger_latency_seconds")


def test_a_daemon_started_by_a_bench_runs_the_code_the_bench_imports(tmp_path: Path) -> None:
    """A bench run from this tree with PYTHONPATH at another tree (to measure
    the code before a change) starts `python -m pcapd` from that tree, not
    from this working directory."""
    other = tmp_path / "other"
    (other / "pcapd").mkdir(parents=True)
    (other / "pcapd" / "__init__.py").write_text("")
    marker = tmp_path / "ran"
    (other / "pcapd" / "__main__.py").write_text(
        "import os, pathlib, time\n"  # written whole, then named: the bench waits for the name
        f"pathlib.Path({str(marker)!r} + '.part').write_text(__file__)\n"
        f"os.replace({str(marker)!r} + '.part', {str(marker)!r})\n"
        "time.sleep(30)\n"
    )
    script = (
        "import sys, pathlib\n"
        f"sys.path.insert(0, {str(BENCH)!r})\n"
        "from benchlib import process\n"
        f"marker = pathlib.Path({str(marker)!r})\n"
        f"with process([sys.executable, '-m', 'pcapd'], marker.exists, 'fake pcapd', "
        f"pathlib.Path({str(tmp_path / 'log')!r})):\n"
        "    pass\n"
    )
    bench = tmp_path / "bench.py"  # a script, as a bench is: no cwd on its path
    bench.write_text(script)
    subprocess.run(
        [sys.executable, str(bench)], cwd=BENCH.parent, check=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(other)},
    )  # fmt: skip
    assert Path(marker.read_text()).resolve() == (other / "pcapd" / "__main__.py").resolve()
