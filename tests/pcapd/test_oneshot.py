"""`pcapd capture`: tcpdump-like one-shot captures, and its errors in one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import free_port, run
from tests.pcapd.engine.test_capture import sender


def capture(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pcapd", "capture", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_writes_the_file_and_a_summary(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "udp.pcapng"
    # Sent until the capture is done, whenever its handle opens.
    sender(port, 500, 0.02, delay=0.2)
    done = capture("-i", "lo", "-c", "4", "-s", "64", "--format", "pcapng", "-w", str(out),
                   "udp", "and", "dst", "port", str(port))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 packets captured" in done.stderr and "stopped by packets" in done.stderr
    ports = run("tshark", "-r", str(out), "-T", "fields", "-e", "udp.dstport").stdout.split()
    assert ports == [str(port)] * 4


def test_unwritable_output_is_refused_before_capturing(tmp_path: Path) -> None:
    done = capture("-i", "lo", "-c", "1", "-w", str(tmp_path / "missing" / "x.pcap"))
    assert done.returncode == 2
    assert done.stderr.strip().endswith("is not writable")
    assert "Traceback" not in done.stderr


def test_existing_output_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "keep.pcap"
    out.write_bytes(b"precious")
    done = capture("-i", "lo", "-c", "1", "-w", str(out))
    assert done.returncode == 2 and "refusing to overwrite" in done.stderr
    assert out.read_bytes() == b"precious"


def test_output_appearing_during_the_capture_is_left_alone(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "race.pcap"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcapd", "capture", "-i", "lo", "-c", "1", "--timeout", "20",
         "-w", str(out), "udp", "and", "dst", "port", str(port)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        assert "listening on lo" in proc.stderr.readline()
        out.write_bytes(b"another writer's file")  # after the check, before the write
        sender(port, 50, 0.02, delay=0.0)
        rest = proc.stderr.read()
        assert proc.wait(30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert rest.splitlines()[-1] == (
        f"pcapd capture: -w {out}: a file of that name appeared during the capture; it was "
        "left alone and this capture was not written"
    )
    assert out.read_bytes() == b"another writer's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race.pcap"]  # no temporary left


def test_bad_filter_and_too_small_bytes_are_one_line_errors(tmp_path: Path) -> None:
    bad = capture("-i", "lo", "-w", str(tmp_path / "a.pcap"), "port", "nonsense")
    assert bad.returncode == 1
    assert "bpf: 'port nonsense' does not compile for lo" in bad.stderr
    small = capture("-i", "lo", "--bytes", "30", "--format", "pcapng", "-w",
                    str(tmp_path / "b.pcap"))  # fmt: skip
    assert small.returncode == 2 and "cannot hold even the" in small.stderr
    assert "Traceback" not in bad.stderr + small.stderr


def test_unknown_interface() -> None:
    done = capture("-i", "nosuch0", "-c", "1", "-w", "-")
    assert done.returncode == 1
    assert "interface 'nosuch0': no such device on this node" in done.stderr


def test_filter_bytes_that_are_not_text_are_refused() -> None:
    """A non-UTF-8 argument reaches Python as a lone surrogate (U+DCFF for 0xff)."""
    done = capture("-i", "lo", "-c", "1", "-w", "-", "host", "\udcff")
    assert done.returncode == 1
    assert done.stderr == (
        'pcapd capture: bpf: "host \\udcff" holds U+DCFF at character 5; '
        "a filter is printable ASCII\n"
    )
