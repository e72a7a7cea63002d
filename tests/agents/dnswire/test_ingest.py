"""`pcapd agent dnsflow-ingest` (a subprocess, with a real redis-server)
against datagrams that look like DNSFlow v4 and lie: each is counted, at
most MAX_ERROR_LOGS are logged, and a sound packet after them is recorded."""

from __future__ import annotations

import json
import re
import signal
import socket
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dnswire import export
from agents.dnswire.ingest import MAX_ERROR_LOGS, BadPacket, parse_sets
from tests.agents.dnswire import wire as w
from tests.helpers import RedisServer, wait_for

WWW = b"\x03www\x07example\x04test\x00"


@st.composite
def lookalike(draw: st.DrawFn) -> bytes:
    """A header and sets whose versions, counts and lengths are drawn apart
    from what follows them (names_len often fitting the bytes, so the names
    and addresses are read), then perhaps cut short."""
    version = draw(st.sampled_from([4, 4, 4, 0, 3, 5, 255]))
    flags = draw(st.sampled_from([0, 0, export.FLAG_STATS, 0xFFFF]))
    packet = export.HEADER.pack(version, draw(st.integers(0, 255)), flags,
                                draw(st.integers(0, 0xFFFFFFFF)))  # fmt: skip
    for _ in range(draw(st.integers(0, 3))):
        body = draw(st.binary(max_size=80) | st.just(WWW + bytes(3)))
        names_len = draw(
            st.sampled_from([len(body) // 4 * 4, len(body) - 12]) | st.integers(0, 0xFFFF)
        )
        counts = draw(st.tuples(*[st.integers(0, 3) | st.integers(0, 255)] * 3))
        vers = draw(st.sampled_from([4, 6, 0, 5]))
        packet += export.SET_HEADER.pack(vers, *counts, max(names_len, 0), bytes(16), bytes(16))
        packet += body
    return packet[: draw(st.integers(0, len(packet)))] if draw(st.booleans()) else packet


def test_lying_datagrams_are_counted_and_a_sound_one_after_them_recorded(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    log = tmp_path / "ingest.log"
    with w.ingest_process(redis_srv.url, log, stats_interval=0) as (proc, port):
        sent = _send_hostile(port)
        wait_for(lambda: w.keys(redis_srv.client()).get("10.0.0.9;192.0.2.10;dns")
                 == ";www.example.test.;")  # fmt: skip
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    text = log.read_text()
    assert "Traceback" not in text
    assert 0 < text.count("event=dnsflow_bad_packet") <= MAX_ERROR_LOGS
    done = next(line for line in text.splitlines() if "event=dnsflow_ingest_done" in line)
    fields = dict(re.findall(r"(\w+)=(\{[^}]*\}|\S+)", done))
    assert int(fields["datagrams"]) == len(sent)  # every one arrived and was looked at
    assert int(fields["restarts"]) >= 2  # 5 -> 2 and 2 -> 1 went back
    bad = json.loads(fields["bad"])
    assert set(bad) <= BAD_REASONS
    # Each datagram counted once: by its reason, or as a data or stats packet.
    short_stats = bad.pop("short_stats", 0)
    counted = sum(bad.values()) + int(fields["data_packets"]) + int(fields["stats_packets"])
    assert counted == len(sent)
    assert bad == _reasons(sent)
    assert short_stats == sum(_short_stats(p) for p in sent)


BAD_REASONS = {"short", "version", "truncated", "ip_vers", "counts", "names", "short_stats"}


def _reasons(sent: list[bytes]) -> dict[str, int]:
    """Why parse_sets refuses each datagram (the reference is run here, in the
    test's process, on what was sent): the counts the agent must report."""
    found: Counter[str] = Counter()
    for packet in sent:
        try:
            parse_sets(packet)
        except BadPacket as exc:
            found[exc.reason] += 1
    return dict(found)


def _short_stats(packet: bytes) -> bool:
    """A sound header flagged as stats, without the five counters."""
    if len(packet) < export.HEADER.size:
        return False
    version, _, flags, _ = export.HEADER.unpack_from(packet)
    short = len(packet) < export.HEADER.size + export.STATS.size
    return version == export.VERSION and bool(flags & export.FLAG_STATS) and short


def _send_hostile(port: int) -> list[bytes]:
    """Lookalikes, a sequence that wraps and goes back, then one sound data
    packet; returns the datagrams sent."""
    sent: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        @settings(max_examples=300, database=None)
        @given(packet=lookalike())
        def send(packet: bytes) -> None:
            sock.sendto(packet, ("127.0.0.1", port))
            sent.append(packet)

        send()
        for sequence in (0xFFFFFFFE, 0xFFFFFFFF, 0, 5, 2, 1):
            sent.append(export.HEADER.pack(4, 0, 0, sequence))
            sock.sendto(sent[-1], ("127.0.0.1", port))
        packer = export.Packer(sent.append)
        packer.add_set(bytes([10, 0, 0, 9]), bytes(4), [WWW], [bytes([192, 0, 2, 10])], [])
        packer.flush()
        sock.sendto(sent[-1], ("127.0.0.1", port))
        return sent
