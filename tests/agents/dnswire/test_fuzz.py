"""Bad packets: counted by reason, never raised, the process keeps going."""

from __future__ import annotations

import logging
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dnswire import agent as wire_agent
from agents.dnswire.agent import WireAgent
from agents.dnswire.config import parse_dnswire_config
from agents.flow.packets import LINK_TYPES
from agents.log_limit import WINDOW
from tests.agents.dnswire import wire as w
from tests.agents.flow import frames as f

DNSFLOW = str(Path(sys.executable).parent / "dnsflow")
GOOD = w.response("alias.example.test", "A", [
    ("alias.example.test", "CNAME", "target.example.test."),
    ("target.example.test", "A", "198.51.100.7"),
])  # fmt: skip
HEADER = struct.Struct(">HHHHHH")


def agent() -> WireAgent:
    config = parse_dnswire_config({"read": "-", "record": False, "pcap_record_port": 2055,
                                   "jmirror_port": 30030})  # fmt: skip
    return WireAgent(config, None, lambda packet: None)


def dns(ancount: int, body: bytes) -> bytes:
    return HEADER.pack(1, 0x8180, 1, ancount, 0, 0) + body


QUESTION = b"\x01a\x00\x00\x01\x00\x01"
BAD_MESSAGES = {
    "bad_pointer": dns(1, QUESTION + b"\xc0\x19" + b"\x00" * 10),  # points at itself: a loop
    "truncated": dns(65535, QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04"),
    "short_header": b"\x00\x01\x81",
    "question_count": HEADER.pack(1, 0x8180, 2, 0, 0, 0),
    "bad_rdata": dns(1, QUESTION + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x05" + bytes(5)),
    "bad_label": dns(0, b"\x41a\x00\x00\x01\x00\x01"),
}


def test_each_bad_message_is_counted_by_reason_and_logged(tmp_path: Path) -> None:
    path = tmp_path / "bad.pcap"
    f.write_pcap(path, [f.ether(w.udp_packet(m)) for m in BAD_MESSAGES.values()]
                 + [f.ether(w.udp_packet(GOOD))])  # fmt: skip
    done = subprocess.run([DNSFLOW, "-r", str(path), "-w", str(tmp_path / "out.pcap")],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for reason in BAD_MESSAGES:
        assert f"event=dnswire_bad_message reason={reason} " in done.stderr, reason
    stats = next(x for x in done.stderr.splitlines() if "event=dnswire_done" in x)
    expected = ",".join(f'"{r}":1' for r in BAD_MESSAGES)  # compact JSON: one token
    assert f"bad_messages={{{expected}}}" in stats
    assert "export_sets=1" in stats  # the good one after them all
    assert "Traceback" not in done.stderr


def test_bad_message_lines_renew_each_window_without_stats_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """stats_interval = 0 logs no stats line: the budget still renews."""
    config = parse_dnswire_config({"read": "-", "record": False, "stats_interval": 0})
    now = [50.0]
    wire = WireAgent(config, None, lambda packet: None, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="pcapd.agents.dnswire")

    def lines() -> int:
        return sum("event=dnswire_bad_message" in caplog.handler.format(r) for r in caplog.records)

    for _ in range(wire_agent.MAX_ERROR_LOGS + 5):
        wire.on_message(bytes(4), bytes(4), BAD_MESSAGES["short_header"])
    now[0] += WINDOW - 0.1
    wire.on_message(bytes(4), bytes(4), BAD_MESSAGES["short_header"])
    assert lines() == wire_agent.MAX_ERROR_LOGS
    assert wire.snapshot()["bad_logs_suppressed"] == 6
    now[0] += 0.1
    wire.on_message(bytes(4), bytes(4), BAD_MESSAGES["short_header"])
    assert lines() == wire_agent.MAX_ERROR_LOGS + 1


_TAIL_RNG = random.Random(3)
# Junk to append, made once: generating 64 KiB per packet would cost more
# than decoding it.
TAILS = [_TAIL_RNG.randbytes(n) for n in (1, 7, 100, 2000, 1, 7, 100, 1, 7, 65000)]


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.5 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind < 0.7:
            del data[rng.randrange(len(data) + 1) :]
        elif kind < 0.85 and len(data) > 20:  # a count or a length field that lies
            at = rng.randrange(len(data) - 1)
            data[at : at + 2] = rng.choice((b"\xff\xff", b"\x00\x00", b"\xc0\x0c", b"\x3f\xff"))
        elif rng.random() < 0.2:
            data += rng.choice(TAILS)
    return bytes(data)


def seeds() -> list[bytes]:
    big = w.response("big.example.test", "A",
                     [("big.example.test", "A", f"192.0.2.{i}") for i in range(1, 90)])  # fmt: skip
    out = [f.ether(w.udp_packet(GOOD)), f.ether(w.udp_packet(GOOD, v6=True), vlans=[5, 6])]
    out += [f.ether(p) for p in w.tcp_segments([GOOD, big], cut=150)]
    out += [f.ether(p) for p in w.ip4_fragments(w.udp_packet(big), 256)]
    out += [f.ether(p) for p in w.ip6_fragments(f.udp(53, 1, big), size=256)]
    inner = f.ether(w.udp_packet(GOOD))
    out.append(f.ether(f.ip4("10.0.0.1", "10.0.0.2", 17, f.udp(9, 2055, bytes(16) + inner))))
    out.append(f.ether(f.ip4("10.0.0.1", "10.0.0.2", 17, f.udp(9, 30030, bytes(8) +
                                                            w.udp_packet(GOOD)))))  # fmt: skip
    return out


def test_100k_mutated_packets_are_counted_never_raised() -> None:
    rng = random.Random(12)
    base = seeds()
    a = agent()
    handler = a.handler(1)
    start = time.monotonic()
    n = 100_000
    for i in range(n):
        handler(i / 1000, mutate(rng, base[i % len(base)]))
    elapsed = time.monotonic() - start
    counts = dict(zip(("messages", "not_ip", "other_proto", "other_port", "truncated",
                       "malformed", "encapsulated", "errors"), a.counts, strict=True))  # fmt: skip
    assert counts["errors"] == 0, counts  # every failure has a named reason
    assert counts["truncated"] > 1000 and counts["malformed"] > 100 and counts["messages"] > 1000
    assert sum(a.dns_errors.values()) > 1000
    assert a.fragments.held <= a.fragments.max_bytes and a.streams.held <= a.streams.max_total_bytes
    print(f"{n} mutated packets in {elapsed:.1f}s")


@settings(max_examples=400)
@given(linktype=st.sampled_from(LINK_TYPES), frame=st.binary(max_size=3000))
def test_random_frames_of_any_link_type(linktype: int, frame: bytes) -> None:
    a = agent()
    a.handler(linktype)(0.0, frame)
    assert a.counts[7] == 0


@settings(max_examples=400)
@given(
    ancount=st.integers(0, 65535),
    body=st.binary(max_size=600),
    v6=st.booleans(),
    tcp=st.booleans(),
)
def test_dns_messages_with_lying_counts(ancount: int, body: bytes, v6: bool, tcp: bool) -> None:
    a = agent()
    message = dns(ancount, QUESTION + body)
    packets = w.tcp_segments([message], v6=v6) if tcp else [w.udp_packet(message, v6=v6)]
    handler = a.handler(1)
    for p in packets:
        handler(0.0, f.ether(p))
    assert a.counts[0] == 1 and a.counts[7] == 0
    assert sum(a.dns_errors.values()) + a.not_exported + a.packer.stats.sets == 1  # type: ignore[union-attr]
