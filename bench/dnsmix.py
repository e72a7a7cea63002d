"""The DNS response mix bench/dnswire.py reads: a pcap of `responses` frames,
Zipf (s = 1) over 50k names, 10k clients (10% IPv6, of either parity so -M
slots split them evenly), a fifth of the names behind one- or two-link CNAME
chains, 25% AAAA, 5% NXDOMAIN, RD and RA set, real UDP checksums (-M slots
IPv6 by them, as DNSFlow does). Deterministic for a seed.

    .venv/bin/python bench/dnsmix.py OUT.pcap [RESPONSES]
"""

from __future__ import annotations

import ipaddress
import random
import struct
import sys
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
from benchlib import internet_checksum

NAMES = 50_000
NX_NAMES = 5_000
CLIENTS = 10_000
ZIPF_S = 1.0
DNSPYTHON_SAMPLE = 20_000  # messages returned for the dnspython peer
BENCH_SUBNET = 251  # 10.200.251.0/24 and fd00:200:251::/64, the live part's veth

ETH4 = bytes.fromhex("020000000001020000000002") + b"\x08\x00"
ETH6 = bytes.fromhex("020000000001020000000002") + b"\x86\xdd"
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
RESOLVER4 = bytes((10, 200, BENCH_SUBNET, 2))
RESOLVER6 = ipaddress.IPv6Address(f"fd00:200:{BENCH_SUBNET}::2").packed


def _reply(qname: str, qtype: str, answers: list[tuple[str, str, str]], nx: bool) -> bytes:
    query = dns.message.make_query(qname, qtype)
    reply = dns.message.make_response(query)
    reply.flags |= dns.flags.RA
    if nx:
        reply.set_rcode(dns.rcode.NXDOMAIN)
    for owner, rtype, value in answers:
        reply.answer.append(dns.rrset.from_text(owner, 300, "IN", rtype, value))
    wire: bytes = reply.to_wire()
    return wire


def templates(rng: random.Random) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """DNS replies per name: A, AAAA, and NXDOMAIN ones."""
    a, aaaa = [], []
    for k in range(NAMES):
        name = f"host{k}.site{k % 997}.example."
        chain: list[tuple[str, str, str]] = []
        owner = name
        if k % 5 == 0:  # a CNAME chain of one or two links
            for depth in range(1 + k % 2):
                target = f"edge{k}-{depth}.cdn{k % 31}.example."
                chain.append((owner, "CNAME", target))
                owner = target
        v4 = [(owner, "A", f"198.{18 + k % 2}.{k >> 8 & 255}.{k & 255}")]
        if k % 3 == 0:
            v4.append((owner, "A", f"203.0.{k >> 8 & 255}.{k & 255}"))
        a.append(_reply(name, "A", chain + v4, False))
        aaaa.append(_reply(name, "AAAA", [*chain, (owner, "AAAA", f"2001:db8::{k:x}")], False))
    nx = [_reply(f"missing{j}.example.", "A", [], True) for j in range(NX_NAMES)]
    return a, aaaa, nx


def _udp(src: bytes, dst: bytes, dport: int, message: bytes) -> bytes:
    """A UDP header with its real checksum: -M slots IPv6 by it, as DNSFlow
    does, so a zero one would put every IPv6 answer in one slot."""
    length = 8 + len(message)
    data = src + dst + struct.pack("!HHHHHH", 17, length, 53, dport, length, 0) + message
    checksum = internet_checksum(data) or 0xFFFF  # 0 means "none" in UDP
    return struct.pack("!HHHH", 53, dport, length, checksum) + message


def generate(path: Path, responses: int, seed: int = 7) -> list[bytes]:
    """The pcap of `responses` frames; returns a sample of the DNS messages."""
    rng = random.Random(seed)
    a, aaaa, nx = templates(rng)
    weights = [1 / (k + 1) ** ZIPF_S for k in range(NAMES)]
    picks = rng.choices(range(NAMES), weights=weights, k=responses)
    clients4 = [bytes((10, 10, c >> 8, c & 255)) for c in range(CLIENTS)]
    clients6 = [
        ipaddress.IPv6Address(0xFD00_0000_0000_0001 << 64 | c).packed for c in range(CLIENTS)
    ]
    pack = struct.Struct("<IIII").pack
    sample: list[bytes] = []
    with path.open("wb") as out:
        out.write(PCAP_HEADER)
        chunk: list[bytes] = []
        for n, k in enumerate(picks):
            roll = rng.random()
            if roll < 0.05:
                message = nx[k % NX_NAMES]
            elif roll < 0.30:
                message = aaaa[k]
            else:
                message = a[k]
            c = rng.randrange(CLIENTS)
            dport = 1024 + n % 60000
            length = 8 + len(message)
            if c // 2 % 10 == 0:  # a tenth of the clients, of either parity (-M slots)
                udp = _udp(RESOLVER6, clients6[c], dport, message)
                ip = struct.pack("!IHBB", 6 << 28, length, 17, 64) + RESOLVER6 + clients6[c]
                frame = ETH6 + ip + udp
            else:
                udp = _udp(RESOLVER4, clients4[c], dport, message)
                ip = struct.pack("!BBHHHBBH", 0x45, 0, 20 + length, 0, 0, 64, 17, 0)
                frame = ETH4 + ip + RESOLVER4 + clients4[c] + udp
            usec = n * 10
            chunk.append(pack(1_700_000_000 + usec // 1_000_000, usec % 1_000_000,
                              len(frame), len(frame)))  # fmt: skip
            chunk.append(frame)
            if len(sample) < DNSPYTHON_SAMPLE:
                sample.append(message)
            if len(chunk) >= 20_000:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))
    return sample


def main(argv: list[str]) -> int:
    count_ok = len(argv) == 1 or (len(argv) == 2 and argv[1].isascii() and argv[1].isdecimal())
    if not count_ok or argv[0].startswith("-"):
        print(f"usage: {__doc__.strip().splitlines()[-1].strip()}", file=sys.stderr)
        return 2
    generate(Path(argv[0]), int(argv[1]) if len(argv) > 1 else 200_000)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
