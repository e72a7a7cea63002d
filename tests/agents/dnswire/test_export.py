"""DNSFlow's v4 export: `dnsflow -r FILE -u 127.0.0.1:PORT` (the console
script, a subprocess) sends to a socket here; an independent reader checks
the bytes field by field against dnsflow.c's layout."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

import dns.rcode
import dpkt
import pytest

from agents.dnswire import export
from agents.dnswire.config import parse_dnswire_config
from agents.dnswire.ingest import Ingest
from agents.redis_writer import make_writer
from tests.agents.dnswire import dnsflow_reader as reader
from tests.agents.dnswire import wire as w
from tests.agents.flow import frames as f
from tests.helpers import RedisServer, wait_for

DNSFLOW = str(Path(sys.executable).parent / "dnsflow")

CHAIN = w.response("Alias.example.test", "A", [
    ("alias.example.test", "CNAME", "mid.example.test."),
    ("mid.example.test", "CNAME", "target.example.test."),
    ("target.example.test", "A", "198.51.100.7"),
])  # fmt: skip
AAAA = w.response("www.example.test", "AAAA", [("www.example.test", "AAAA", "2001:db8::10")])
ANY = w.response("www.example.test", "ANY", [
    ("www.example.test", "A", "192.0.2.10"), ("www.example.test", "AAAA", "2001:db8::10"),
])  # fmt: skip
# Not exported: authoritative (no RD/RA), NXDOMAIN, other types (ANY too:
# dnsflow_dns_check takes A and AAAA questions only), no address.
NOT_EXPORTED = [
    ANY,
    w.response("www.example.test", "A", [("www.example.test", "A", "192.0.2.10")], recursive=False),
    w.response("nope.example.test", "A", rcode=dns.rcode.NXDOMAIN),
    w.response("www.example.test", "MX", [("www.example.test", "MX", "10 mx.example.test.")]),
    w.response("empty.example.test", "A"),
]


def receiver() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * 1024 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    return sock


def drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65535))
        except TimeoutError:
            return out


def run_dnsflow(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DNSFLOW, *args], capture_output=True, text=True, timeout=120)


def test_layout_field_by_field(tmp_path: Path) -> None:
    path = tmp_path / "mix.pcap"
    rounds = 60
    frames = []
    for i in range(rounds):
        frames += [f.ether(w.udp_packet(m, v6=i % 2 == 1)) for m in (CHAIN, AAAA)]
        frames += [f.ether(w.udp_packet(m)) for m in NOT_EXPORTED]
    f.write_pcap(path, frames)
    with receiver() as sock:
        port = sock.getsockname()[1]
        done = run_dnsflow("-r", str(path), "-u", f"127.0.0.1:{port}")
        assert done.returncode == 0, done.stderr
        packets = [reader.read(p) for p in drain(sock)]
    assert [p.sequence for p in packets] == list(range(1, len(packets) + 1))
    sets = [s for p in packets for s in p.sets]
    assert len(sets) == 2 * rounds
    for p in packets:
        assert (p.version, p.flags) == (4, 0)
        assert p.sets_count == len(p.sets) and 1 <= p.sets_count <= 255
        assert p.size <= export.MAX_SIZE
    for p in packets[:-1]:  # each full packet reached the target size
        assert p.size >= export.TARGET_SIZE
    first = sets[0]
    assert (first.ip_vers, first.client, first.resolver) == (4, w.CLIENT4, w.RESOLVER4)
    assert [reader.text(n) for n in first.names] == [
        "alias.example.test.", "mid.example.test.", "target.example.test."]  # fmt: skip
    assert first.names[0] == b"\x05alias\x07example\x04test\x00"
    assert first.names_len % 4 == 0 and set(first.padding) <= {0} and len(first.padding) < 4
    assert (first.ips, first.ip6s) == (["198.51.100.7"], [])
    assert (sets[1].ips, sets[1].ip6s) == ([], ["2001:db8::10"])
    v6 = sets[2]
    assert (v6.ip_vers, v6.client, v6.resolver) == (6, w.CLIENT6, w.RESOLVER6)


def test_write_file_holds_the_packets_as_dnsflow_writes_them(tmp_path: Path) -> None:
    path = tmp_path / "in.pcap"
    f.write_pcap(path, [f.ether(w.udp_packet(CHAIN))] * 30)
    out = tmp_path / "out.pcap"
    done = run_dnsflow("-r", str(path), "-w", str(out))
    assert done.returncode == 0, done.stderr
    with out.open("rb") as handle:
        records = list(dpkt.pcap.Reader(handle))
        handle.seek(0)
        assert dpkt.pcap.Reader(handle).datalink() == dpkt.pcap.DLT_NULL
    assert len(records) == 3  # sets of 104 bytes: 12 fill a packet past 1200, 6 left at the end
    sets = 0
    for _ts, frame in records:
        assert struct.unpack("=I", frame[:4])[0] == socket.AF_INET
        ip = dpkt.ip.IP(frame[4:])
        assert socket.inet_ntoa(ip.dst) == "127.0.0.1" and ip.data.dport == 5300
        sets += len(reader.read(bytes(ip.data.data)).sets)
    assert sets == 30


def test_a_set_too_large_for_any_packet_is_dropped_and_counted() -> None:
    sent: list[bytes] = []
    packer = export.Packer(sent.append)
    packer.add_body(
        bytes(4), bytes(4), export.set_body([b"\x01a\x00"], [bytes(4)] * 255, [bytes(16)] * 40)
    )
    assert packer.stats.too_large == 1
    packer.add_body(bytes(4), bytes(4), export.set_body([b"\x01a\x00"], [bytes(4)] * 10, []))
    packer.flush()
    assert len(sent) == 1 and len(reader.read(sent[0]).sets) == 1
    assert reader.read(sent[0]).sequence == 1


def test_sets_never_take_a_packet_past_1500_bytes() -> None:
    sent: list[bytes] = []
    packer = export.Packer(sent.append)
    for i in range(200):  # sets of 40 + 4 + 4*(i % 70) bytes
        packer.add_body(bytes(4), bytes(4), export.set_body([b"\x00"], [bytes(4)] * (i % 70), []))
    packer.flush()
    packets = [reader.read(p) for p in sent]
    assert sum(len(p.sets) for p in packets) == 200
    assert all(p.size <= 1500 for p in packets)
    assert [p.sequence for p in packets] == list(range(1, len(packets) + 1))


def test_stats_packet_carries_the_counters_and_sample_rate(redis_srv: RedisServer) -> None:
    from agents.dnswire.agent import WireAgent

    config = parse_dnswire_config({"interface": "lo", "sample_rate": 4, "record": False})
    sent: list[bytes] = []
    agent = WireAgent(config, None, sent.append)
    agent.open_live("lo")
    agent.captured = 17
    agent.packer.add_body(bytes(4), bytes(4), export.set_body([b"\x00"], [bytes(4)], []))  # type: ignore[union-attr]
    agent.packer.flush()  # type: ignore[union-attr]
    agent.send_export_stats()
    data, stats = (reader.read(p) for p in sent)
    assert (stats.version, stats.sets_count, stats.flags) == (4, 1, 1)
    assert stats.sequence == data.sequence + 1  # one counter for both kinds
    assert stats.stats is not None
    captured, received, dropped, ifdropped, rate = stats.stats
    assert (captured, rate) == (17, 4)
    assert received >= 0 and dropped >= 0 and ifdropped >= 0


def test_ingest_of_the_export_reproduces_the_keys(tmp_path: Path, redis_srv: RedisServer) -> None:
    path = tmp_path / "exportable.pcap"
    frames = [f.ether(w.udp_packet(m, v6=v6)) for m in (CHAIN, AAAA, ANY) for v6 in (False, True)]
    f.write_pcap(path, frames)
    with w.file_agent(redis_srv.url, path, dedup_window=0) as agent:
        direct = w.keys(redis_srv.client())
        sent = agent.sent  # type: ignore[attr-defined]
    assert direct and len(sent) == 1
    redis_srv.client().flushall()
    config = parse_dnswire_config({"dedup_window": 0, "flush_interval": 0.01})
    writer = make_writer(config, redis_srv.client)
    writer.start()
    ingest = Ingest(config, writer)
    for packet in sent:
        ingest.handle(packet, ("127.0.0.1", 1))
    writer.stop(10)
    assert ingest.stats.sets == 4 and ingest.stats.lost == 0
    assert w.keys(redis_srv.client()) == direct


@pytest.mark.parametrize("gap", [1, 5])
def test_ingest_counts_sequence_gaps_and_keeps_sample_rate(
    redis_srv: RedisServer, gap: int
) -> None:
    config = parse_dnswire_config({})
    writer = make_writer(config, redis_srv.client)
    ingest = Ingest(config, writer)
    sent: list[bytes] = []
    packer = export.Packer(sent.append)
    packer.send_stats(1, 2, 3, 4, 8)
    for _ in range(gap + 1):
        packer.add_body(bytes(4), bytes(4), export.set_body([b"\x00"], [bytes(4)], []))
        packer.flush()
    for packet in [sent[0], sent[-1]]:
        ingest.handle(packet, ("192.0.2.1", 5300))
    sensor = ingest.sensors[("192.0.2.1", 5300)]
    assert sensor.sample_rate == 8 and sensor.captured == 1 and sensor.ifdropped == 4
    assert ingest.stats.lost == sensor.sequence.lost == gap
    writer.stop(0)


def test_dnsflow_ingest_process_records_what_a_sensor_sends(
    tmp_path: Path, redis_srv: RedisServer
) -> None:
    path = tmp_path / "exportable.pcap"
    f.write_pcap(
        path, [f.ether(w.udp_packet(m, v6=v6)) for m in (CHAIN, AAAA) for v6 in (False, True)]
    )
    with w.file_agent(redis_srv.url, path):
        direct = w.keys(redis_srv.client())
    redis_srv.client().flushall()
    log = tmp_path / "ingest.log"
    with w.ingest_process(redis_srv.url, log, stats_interval=0.2) as (ingest, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as junk:
            junk.sendto(b"\x03\x00\x00\x00\x00\x00\x00\x01", ("127.0.0.1", port))  # version 3
        done = run_dnsflow("-r", str(path), "-u", f"127.0.0.1:{port}")
        assert done.returncode == 0, done.stderr
        wait_for(lambda: w.keys(redis_srv.client()) == direct, timeout=10)
        ingest.send_signal(signal.SIGTERM)
        assert ingest.wait(15) == 0
    text = log.read_text()
    assert 'reason=version error="version 3, expected 4"' in text
    assert 'bad={"version":1}' in text and "sets=4" in text
    assert "Traceback" not in text
