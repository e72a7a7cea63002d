"""-m I/N and -M N: the slots partition a replay, no response lost or doubled."""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from tests.agents.dnswire import dnsflow_reader as reader
from tests.agents.dnswire import wire as w
from tests.agents.dnswire.test_export import drain, receiver
from tests.agents.flow import frames as f
from tests.helpers import RedisServer

DNSFLOW = str(Path(sys.executable).parent / "dnsflow")
CLIENTS = 120


def checksummed(src: str, dst: str, message: bytes) -> bytes:
    """IP/UDP with the UDP checksum computed (dpkt fills it in), as resolvers send."""
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=message)
    udp.ulen = 8 + len(message)
    if ":" in src:
        s6, d6 = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
        ip6 = dpkt.ip6.IP6(src=s6, dst=d6, nxt=17, hlim=64, data=udp, plen=udp.ulen)
        return bytes(ip6)
    ip = dpkt.ip.IP(src=ipaddress.ip_address(src).packed, dst=ipaddress.ip_address(dst).packed,
                    p=17, data=udp)  # fmt: skip
    ip.len = 20 + udp.ulen
    return bytes(ip)


def replay(tmp_path: Path) -> tuple[Path, Counter[tuple[str, str]]]:
    frames, expected = [], Counter[tuple[str, str]]()
    for i in range(CLIENTS):
        name = f"h{i}.example.test"
        answer = w.response(name, "A", [(name, "A", f"192.0.2.{i % 250 + 1}")])
        for client in (f"10.1.{i // 250}.{i % 250 + 1}", f"fd00:1::{i + 1:x}"):
            resolver = "10.0.0.53" if "." in client else "fd00::53"
            frames.append(f.ether(checksummed(resolver, client, answer)))
            expected[(client, name + ".")] += 1
    # A TCP stream and a fragmented answer: each must land in one slot whole.
    records = [("big.example.test", "A", f"192.0.2.{i}") for i in range(1, 120)]
    big = w.response("big.example.test", "A", records)
    frames += [f.ether(s) for s in w.tcp_segments([big], cut=200)]
    frames += [f.ether(p) for p in w.ip4_fragments(w.udp_packet(big, dport=40002), 512)]
    expected[(w.CLIENT4, "big.example.test.")] += 2
    path = tmp_path / "replay.pcap"
    f.write_pcap(path, frames)
    return path, expected


def exported(path: Path, *args: str) -> Counter[tuple[str, str]]:
    with receiver() as sock:
        port = sock.getsockname()[1]
        done = subprocess.run([DNSFLOW, "-r", str(path), "-u", f"127.0.0.1:{port}", *args],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
        packets = [reader.read(p) for p in drain(sock)]
    return Counter((s.client, reader.text(s.names[0])) for p in packets for s in p.sets)


@pytest.mark.parametrize("checksum", [False, True], ids=["by_client", "by_checksum"])
def test_slots_partition_the_responses(tmp_path: Path, checksum: bool) -> None:
    path, expected = replay(tmp_path)
    extra = ("-c",) if checksum else ()
    one = exported(path, "-m", "1/2", *extra)
    two = exported(path, "-m", "2/2", *extra)
    assert one + two == expected
    assert not set(one) & set(two)
    # Both slots take a fair share of each family.
    for slot in (one, two):
        assert sum(n for (c, _), n in slot.items() if ":" in c) > CLIENTS // 4
        assert sum(n for (c, _), n in slot.items() if "." in c) > CLIENTS // 4


def test_two_processes_record_what_one_does(tmp_path: Path, redis_srv: RedisServer) -> None:
    path, _expected = replay(tmp_path)
    done = subprocess.run([DNSFLOW, "-r", str(path), "--redis", redis_srv.url],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    single = w.keys(redis_srv.client())
    redis_srv.client().flushall()
    done = subprocess.run([DNSFLOW, "-r", str(path), "--redis", redis_srv.url, "-M", "2"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "event=dnswire_child_started slot=1/2" in done.stderr
    assert "event=dnswire_child_started slot=2/2" in done.stderr
    assert done.stderr.count("event=dnswire_done") == 2
    assert len(single) > 2 * CLIENTS and w.keys(redis_srv.client()) == single


def test_c_keeps_a_checksummed_fragmented_answer_whole(tmp_path: Path) -> None:
    """With -c, IPv4 UDP goes by its checksum, but only the first fragment
    holds the UDP header (what BPF reads as `udp[6:2]` in the others is the
    answer's bytes): fragments must go by the client address, or the pieces
    split over two workers and neither reassembles the answer."""
    records = [("big.example.test", "A", f"192.0.2.{i}") for i in range(1, 120)]
    big = w.response("big.example.test", "A", records)
    frames, split = [], 0
    for i in range(1, 9):  # one client (slot 2/2 by address), a checksum per resolver
        packet = checksummed(f"10.0.0.{i}", "10.1.0.1", big)
        split += int.from_bytes(packet[26:28], "big") % 2 == 0  # slot 1/2 by checksum
        frames += [f.ether(p) for p in w.ip4_fragments(packet, 512)]
    assert split > 0
    path = tmp_path / "fragments.pcap"
    f.write_pcap(path, frames)
    one = exported(path, "-m", "1/2", "-c")
    two = exported(path, "-m", "2/2", "-c")
    assert one + two == Counter({("10.1.0.1", "big.example.test."): 8})
