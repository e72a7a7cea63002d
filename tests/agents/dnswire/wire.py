"""DNS responses on the wire for the dnswire tests: dnspython builds the DNS
messages, tests.agents.flow.frames (dpkt) the packets around them."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import redis

from agents.dnstap.agent import DnstapAgent
from agents.dnstap.config import parse_dnstap_config
from agents.dnstap.server import ConnectionStats
from agents.dnswire.agent import WireAgent
from agents.dnswire.config import parse_dnswire_config
from agents.redis_writer import make_writer
from tests.agents.dnstap.builders import tap_payload
from tests.agents.flow import frames as f
from tests.helpers import free_port, stop_process, wait_for

RESOLVER4, CLIENT4 = "10.200.9.53", "10.200.9.7"
RESOLVER6, CLIENT6 = "fd00:200:9::53", "fd00:200:9::7"
Answer = tuple[str, str, str]


def response(
    qname: str,
    qtype: str = "A",
    answers: Sequence[Answer] = (),
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    *,
    recursive: bool = True,
) -> bytes:
    """A reply as a recursive resolver sends it (RD and RA set unless not `recursive`)."""
    query = dns.message.make_query(qname, qtype)
    if not recursive:
        query.flags &= ~dns.flags.RD
    reply = dns.message.make_response(query)
    if recursive:
        reply.flags |= dns.flags.RA
    reply.set_rcode(rcode)
    for owner, rtype, value in answers:
        name = owner if owner.endswith(".") else owner + "."
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", rtype, value))
    wire: bytes = reply.to_wire()
    return wire


def udp_packet(message: bytes, *, v6: bool = False, sport: int = 53, dport: int = 40000) -> bytes:
    payload = f.udp(sport, dport, message)
    if v6:
        return f.ip6(RESOLVER6, CLIENT6, 17, payload)
    return f.ip4(RESOLVER4, CLIENT4, 17, payload)


def ip4_fragments(packet: bytes, size: int = 512) -> list[bytes]:
    """An IPv4 packet cut into fragments of `size` payload bytes (a multiple of 8)."""
    header, body = packet[:20], packet[20:]
    out = []
    for offset in range(0, len(body), size):
        piece = body[offset : offset + size]
        more = offset + size < len(body)
        frag = bytearray(header)
        struct.pack_into("!H", frag, 2, 20 + len(piece))
        struct.pack_into("!H", frag, 6, (0x2000 if more else 0) | offset // 8)
        out.append(bytes(frag) + piece)
    return out


def ip6_fragments(
    transport: bytes, proto: int = 17, size: int = 512, ident: int = 7
) -> list[bytes]:
    out = []
    for offset in range(0, len(transport), size):
        piece = transport[offset : offset + size]
        more = offset + size < len(transport)
        ext = struct.pack("!BBHI", proto, 0, offset | int(more), ident)
        out.append(f.ip6(RESOLVER6, CLIENT6, 44, ext + piece))
    return out


def tcp_segments(
    messages: Sequence[bytes], *, v6: bool = False, cut: int = 300, seq: int = 1000,
    shuffle: bool = False, dport: int = 40001,
) -> list[bytes]:  # fmt: skip
    """One TCP connection from port 53: SYN-ACK, the length-prefixed messages
    cut into `cut`-byte segments (optionally out of order), FIN."""
    stream = b"".join(struct.pack("!H", len(m)) + m for m in messages)
    src, dst = (RESOLVER6, CLIENT6) if v6 else (RESOLVER4, CLIENT4)

    def seg(flags: int, sequence: int, data: bytes = b"") -> bytes:
        body = struct.pack("!HHIIBBHHH", 53, dport, sequence, 1, 5 << 4, flags, 65535, 0, 0)
        return (f.ip6 if v6 else f.ip4)(src, dst, 6, body + data)

    pieces = [seg(0x18, seq + 1 + i, stream[i : i + cut]) for i in range(0, len(stream), cut)]
    if shuffle:
        random.Random(5).shuffle(pieces)
    return [seg(0x12, seq), *pieces, seg(0x11, seq + 1 + len(stream))]


@contextmanager
def file_agent(redis_url: str | None, path: Path, **options: Any) -> Iterator[WireAgent]:
    """Read `path` with a WireAgent in this process; yields it once done and
    every Redis write has landed."""
    raw: dict[str, Any] = {"read": str(path), "stats_interval": 0, "flush_interval": 0.01}
    raw.update(options)
    config = parse_dnswire_config(raw)
    writer = (
        make_writer(config, lambda: redis.Redis.from_url(redis_url, socket_timeout=5))
        if redis_url
        else None
    )
    sent: list[bytes] = []
    agent = WireAgent(config, writer, sent.append)
    agent.sent = sent  # type: ignore[attr-defined]
    if writer is not None:
        writer.start()
    try:
        agent.open_file(str(path))
        agent.run_file()
        agent.finish()
    finally:
        if writer is not None:
            writer.stop(10)
    yield agent


@contextmanager
def ingest_process(
    redis_url: str, log: Path, *, stats_interval: float
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """`pcapd agent dnsflow-ingest` on a free loopback port, its log in `log`,
    once it said it started; stopped after, if the test did not."""
    port = free_port()
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pcapd", "agent", "dnsflow-ingest", "--listen",
             f"127.0.0.1:{port}", "--redis-url", redis_url,
             "--stats-interval", str(stats_interval)],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_for(lambda: b"event=dnsflow_ingest_started" in log.read_bytes(), timeout=20)
        yield proc, port
    finally:
        stop_process(proc)


def keys(client: redis.Redis) -> dict[str, str]:
    """Every key (SCAN) with its value as text."""
    out = {}
    for key in client.scan_iter(count=1000):
        value = client.get(key)
        assert isinstance(key, bytes) and isinstance(value, bytes)
        out[key.decode()] = value.decode()
    return out


def dnstap_view(redis_url: str, answers: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """What the dnstap agent records for the same (client, DNS message)
    pairs: each sent through its decoder as a CLIENT_RESPONSE frame, into
    database 1 of the same redis-server. The wire agent must match it."""
    url = redis_url.rsplit("/", 1)[0] + "/1"
    config = parse_dnstap_config({"socket": "/nonexistent/tap.sock", "flush_interval": 0.01})
    writer = make_writer(config, lambda: redis.Redis.from_url(url, socket_timeout=5))
    writer.start()
    agent = DnstapAgent(config, writer)
    conn = ConnectionStats(1, "test", "test")
    for address, message in answers:
        agent.handle(tap_payload(message, address), conn)
    writer.stop(10)
    db = redis.Redis.from_url(url)
    try:
        return keys(db)
    finally:
        db.flushdb()
