"""The capture engine on real interfaces: `lo`, and a veth pair between namespaces."""

from __future__ import annotations

import itertools
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dpkt
import pytest

from pcapd.engine import (
    CaptureError,
    CaptureLimits,
    CaptureOutcome,
    capture,
    close_handle,
    open_handle,
    set_filter,
)
from pcapd.pcapfile import PCAP_RECORD_OVERHEAD
from tests.helpers import free_port, needs_root, run, veth_pair

PAYLOAD = 100
# Ethernet (lo) + IPv4 + UDP headers around each payload.
FRAME = 14 + 20 + 8 + PAYLOAD
RECORD = PCAP_RECORD_OVERHEAD + FRAME
PCAP_HEADER = 24


def send_udp(port: int, count: int, interval: float = 0.0, size: int = PAYLOAD) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index in range(count):
            sock.sendto(struct.pack("!I", index).ljust(size, b"x"), ("127.0.0.1", port))
            if interval:
                time.sleep(interval)


def sender(port: int, count: int, interval: float, delay: float = 0.1) -> threading.Thread:
    def go() -> None:
        time.sleep(delay)
        send_udp(port, count, interval)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def lo_handle(port: int) -> Iterator[object]:
    handle = open_handle("lo", 1 << 20)
    set_filter(handle, "lo", f"udp and dst port {port}")
    yield handle
    close_handle(handle)


def run_capture(
    handle: object,
    *,
    packets: int = 1000,
    size: int = 10_000_000,
    duration: float = 10,
    timeout: float = 5,
    snap: int = 262_144,
    fmt: str = "pcap",
    stop: threading.Event | None = None,
) -> CaptureOutcome:
    return capture(
        handle,
        CaptureLimits(snap=snap, packets=packets, bytes=size, duration=duration, timeout=timeout),
        fmt=fmt,
        interface="lo",
        comments={"request_id": "t1", "alertid": 42, "node": "testnode", "tags": "a,b"},
        stop=stop or threading.Event(),
    )


def records(data: bytes | bytearray) -> list[tuple[int, int, int, int]]:
    """(ts_sec, ts_nsec, caplen, wire) of every record in a pcap file."""
    offset, found = PCAP_HEADER, []
    while offset < len(data):
        sec, nsec, caplen, wire = struct.unpack_from("<IIII", data, offset)
        found.append((sec, nsec, caplen, wire))
        offset += PCAP_RECORD_OVERHEAD + caplen
    assert offset == len(data), "records must tile the file exactly"
    return found


def test_packets_bound_is_exact(lo_handle: object, port: int) -> None:
    sender(port, 20, 0.005)
    outcome = run_capture(lo_handle, packets=5)
    assert (outcome.stop, outcome.packets) == ("packets", 5)
    assert len(records(outcome.data)) == 5
    assert outcome.data[:4] == struct.pack("<I", 0xA1B23C4D)  # nanosecond pcap
    assert struct.unpack_from("<I", outcome.data, 20)[0] == 1  # DLT_EN10MB on lo


def test_bytes_bound_never_exceeded_and_next_packet_would_cross(
    lo_handle: object, port: int
) -> None:
    limit = PCAP_HEADER + 3 * RECORD + RECORD // 2
    sender(port, 10, 0.005)
    outcome = run_capture(lo_handle, size=limit)
    assert outcome.stop == "bytes"
    assert outcome.packets == 3
    assert len(outcome.data) <= limit < len(outcome.data) + RECORD


def test_timeout_counts_from_the_last_packet(lo_handle: object, port: int) -> None:
    sender(port, 4, 0.3)  # packets at ~0.1, 0.4, 0.7, 1.0 s
    began = time.monotonic()
    outcome = run_capture(lo_handle, timeout=0.6, duration=10)
    elapsed = time.monotonic() - began
    assert (outcome.stop, outcome.packets) == ("timeout", 4)
    assert 1.5 <= elapsed < 4.0  # last packet ~1.0 s + 0.6 s quiet


def test_timeout_without_any_packet(lo_handle: object) -> None:
    began = time.monotonic()
    outcome = run_capture(lo_handle, timeout=0.5, duration=10)
    assert (outcome.stop, outcome.packets) == ("timeout", 0)
    assert 0.5 <= time.monotonic() - began < 3.0
    assert bytes(outcome.data) == bytes(outcome.data[:PCAP_HEADER])


def test_duration_wins_over_timeout_while_packets_flow(lo_handle: object, port: int) -> None:
    sender(port, 40, 0.05)
    began = time.monotonic()
    outcome = run_capture(lo_handle, duration=1, timeout=0.5)
    assert outcome.stop == "duration"
    assert 1.0 <= time.monotonic() - began < 3.0
    assert 5 <= outcome.packets <= 30


def test_shutdown_ends_the_capture_with_what_it_holds(lo_handle: object, port: int) -> None:
    stop = threading.Event()
    sender(port, 3, 0.01)
    threading.Timer(0.5, stop.set).start()
    outcome = run_capture(lo_handle, duration=30, timeout=30, stop=stop)
    assert (outcome.stop, outcome.packets) == ("shutdown", 3)


def test_snap_truncates_but_keeps_wire_length(lo_handle: object, port: int) -> None:
    sender(port, 2, 0.01)
    outcome = run_capture(lo_handle, packets=2, snap=60)
    assert [(caplen, wire) for _, _, caplen, wire in records(outcome.data)] == [(60, FRAME)] * 2
    assert struct.unpack_from("<I", outcome.data, 16)[0] == 60  # header snaplen


def test_timestamps_are_nanoseconds_of_now(lo_handle: object, port: int) -> None:
    sender(port, 1, 0)
    before = time.time()
    outcome = run_capture(lo_handle, packets=1)
    sec, nsec, _, _ = records(outcome.data)[0]
    assert before - 1 <= sec + nsec / 1e9 <= time.time()
    assert 0 <= nsec < 1_000_000_000


def test_pcap_and_pcapng_are_read_by_tshark_and_capinfos(
    lo_handle: object, port: int, tmp_path: Path
) -> None:
    for fmt in ("pcap", "pcapng"):
        sender(port, 7, 0.005)
        outcome = run_capture(lo_handle, packets=7, fmt=fmt, snap=80)
        path = tmp_path / f"t.{fmt}"
        path.write_bytes(outcome.data)
        fields = run(
            "tshark", "-r", str(path), "-T", "fields", "-e", "frame.len", "-e", "frame.cap_len",
            "-e", "udp.dstport",
        ).stdout.split("\n")  # fmt: skip
        assert [line for line in fields if line] == [f"{FRAME}\t80\t{port}"] * 7
        info = run("capinfos", "-c", "-E", "-T", "-m", str(path)).stdout
        assert info.splitlines()[1].split(",")[1:3] == ["ether", "7"]
        if fmt == "pcapng":
            comments = run("capinfos", "-k", str(path)).stdout
            for comment in ("request_id=t1", "alertid=42", "node=testnode", "tags=a,b"):
                assert f"Capture comment:     {comment}" in comments
            with path.open("rb") as handle:
                assert len(list(dpkt.pcapng.Reader(handle))) == 7


def test_pcapng_bytes_bound_counts_block_framing(lo_handle: object, port: int) -> None:
    sender(port, 10, 0.005)
    outcome = run_capture(lo_handle, fmt="pcapng", size=1000)
    assert outcome.stop == "bytes"
    assert len(outcome.data) <= 1000
    epb = 32 + FRAME + (-FRAME & 3)
    assert len(outcome.data) + epb > 1000


def test_bad_bpf_names_the_filter_and_interface(lo_handle: object) -> None:
    with pytest.raises(CaptureError, match=r"bpf: 'udp port nonsense' does not compile for lo"):
        set_filter(lo_handle, "lo", "udp port nonsense")


def test_unknown_interface_never_opens_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pcap_open would read a savefile named like the interface if one existed.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evil0").write_bytes(b"\xd4\xc3\xb2\xa1" + b"\0" * 20)
    with pytest.raises(CaptureError, match="interface 'evil0': no such device"):
        open_handle("evil0", 1 << 20)


def test_two_captures_at_once_on_one_interface(port: int) -> None:
    handles = [open_handle("lo", 1 << 20) for _ in range(2)]
    for handle in handles:
        set_filter(handle, "lo", f"udp and dst port {port}")
    results: list[CaptureOutcome] = []
    threads = [
        threading.Thread(target=lambda h=h: results.append(run_capture(h, packets=5)))
        for h in handles
    ]
    for thread in threads:
        thread.start()
    send_udp(port, 5, 0.01)
    for thread in threads:
        thread.join(10)
    assert sorted((r.stop, r.packets) for r in results) == [("packets", 5)] * 2
    for handle in handles:
        close_handle(handle)


@needs_root
def test_capture_cli_across_a_veth_pair(tmp_path: Path) -> None:
    out = tmp_path / "veth.pcap"
    with veth_pair(subnet=11) as pair:
        proc = subprocess.Popen(
            pair.exec_a(
                sys.executable, "-m", "pcapd", "capture", "-i", pair.dev_a, "-c", "6",
                "--timeout", "5", "-w", str(out), "icmp",
            ),
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        # Pings until the capture has its 6 packets, however late it opens.
        pinger = subprocess.Popen(pair.exec_b("ping", "-c", "100", "-i", "0.1", pair.addr_a),
                                  stdout=subprocess.DEVNULL)  # fmt: skip
        try:
            _, stderr = proc.communicate(timeout=15)
        finally:
            pinger.terminate()
            pinger.wait()
    assert proc.returncode == 0, stderr
    assert "6 packets captured" in stderr and "stopped by packets" in stderr
    kinds = run("tshark", "-r", str(out), "-T", "fields", "-e", "icmp.type").stdout.split()
    # Echo requests and replies alternate; the first may be either.
    assert len(kinds) == 6 and all(a != b for a, b in itertools.pairwise(kinds))
    assert set(kinds) == {"0", "8"}


def test_a_filter_pypcap_cannot_encode_never_reaches_it() -> None:
    """pypcap's setfilter, given a lone surrogate, frees memory it frees again
    later and the process aborts; set_filter refuses it and the handle works on."""
    script = (
        "from pcapd.engine import CaptureError, close_handle, open_handle, set_filter\n"
        "handle = open_handle('lo', 1 << 20)\n"
        "try:\n"
        "    set_filter(handle, 'lo', 'host \\ud800')\n"
        "except CaptureError as exc:\n"
        "    print(exc)\n"
        "set_filter(handle, 'lo', 'udp')\n"
        "close_handle(handle)\n"
        "print('alive')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines() == [
        'bpf: "host \\ud800" holds U+D800 at character 5; a filter is printable ASCII',
        "alive",
    ]
