"""`pcapd agent dnsflow-ingest` (a subprocess, with a real redis-server)
against datagrams that look like DNSFlow v4 and lie: each is counted, at
most MAX_ERROR_LOGS are logged per window, and a sound packet after them is
recorded; a packet with a bad set is dropped whole; reordered packets are
told from lost ones and from restarts."""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import signal
import socket
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.dnswire import export
from agents.dnswire.config import parse_dnswire_config
from agents.dnswire.ingest import MAX_ERROR_LOGS, BadPacket, Ingest, read_header, read_sets
from agents.log_limit import WINDOW
from agents.redis_writer import make_writer
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
    fields = _fields(text, "dnsflow_ingest_done")
    assert int(fields["datagrams"]) == len(sent)  # every one arrived and was looked at
    bad = json.loads(fields["bad"])
    assert set(bad) <= BAD_REASONS
    # Each datagram counted once: by its reason, or as a data or stats packet.
    short_stats = bad.pop("short_stats", 0)
    counted = sum(bad.values()) + int(fields["data_packets"]) + int(fields["stats_packets"])
    assert counted == len(sent)
    reasons, sets = _reference(sent)
    assert bad == reasons
    assert short_stats == sum(_short_stats(p) for p in sent)
    assert int(fields["sets"]) == sets


BAD_REASONS = {"short", "version", "short_stats", "truncated", "ip_vers", "padding", "counts",
               "names", "trailing"}  # fmt: skip


def _fields(text: str, name: str) -> dict[str, str]:
    """The key=value fields of the last `event=name` line."""
    line = [line for line in text.splitlines() if f"event={name} " in line][-1]
    return dict(re.findall(r"(\w+)=(\{[^}]*\}|\S+)", line))


def _reference(sent: list[bytes]) -> tuple[dict[str, int], int]:
    """Why read_header or read_sets refuses each datagram (the reference is
    run here, in the test's process, on what was sent), and how many sets
    the data packets that were not refused hold: the counts the agent must
    report."""
    found: Counter[str] = Counter()
    sets = 0
    for packet in sent:
        try:
            flags, _, count = read_header(packet)
            if not flags & export.FLAG_STATS:
                sets += len(read_sets(packet, count))
        except BadPacket as exc:
            found[exc.reason] += 1
    return dict(found), sets


def _short_stats(packet: bytes) -> bool:
    """A sound header flagged as stats, without the five counters."""
    if len(packet) < export.HEADER.size:
        return False
    version, _, flags, _ = export.HEADER.unpack_from(packet)
    short = len(packet) < export.HEADER.size + export.STATS.size
    return version == export.VERSION and bool(flags & export.FLAG_STATS) and short


def _send_hostile(port: int) -> list[bytes]:
    """Lookalikes, then one sound data packet; returns the datagrams sent."""
    sent: list[bytes] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        @settings(max_examples=300, database=None)
        @given(packet=lookalike())
        def send(packet: bytes) -> None:
            sock.sendto(packet, ("127.0.0.1", port))
            sent.append(packet)

        send()
        packer = export.Packer(sent.append)
        packer.add_body(
            bytes([10, 0, 0, 9]), bytes(4), export.set_body([WWW], [bytes([192, 0, 2, 10])], [])
        )
        packer.flush()
        sock.sendto(sent[-1], ("127.0.0.1", port))
        return sent


def _set(client: str, names: bytes, address: str) -> bytes:
    """One IPv4 data set: `names` in wire format, padded here to a multiple of 4."""
    names += bytes(-len(names) % 4)
    header = export.SET_HEADER.pack(4, 1, 1, 0, len(names), ipaddress.IPv4Address(client).packed,
                                    bytes(4))  # fmt: skip
    return header + names + ipaddress.IPv4Address(address).packed


def _data(sequence: int, *sets: bytes) -> bytes:
    return export.HEADER.pack(export.VERSION, len(sets), 0, sequence) + b"".join(sets)


def _lying_packets() -> list[bytes]:
    """Data packets of sound sets but one, each with a sound set after the
    one that lies."""
    one, two = _set("10.0.0.1", WWW, "192.0.2.1"), _set("10.0.0.2", WWW, "192.0.2.2")
    # Says 2 addresses, carries 1: its second "address" would be set 1's
    # first 4 header bytes (04 01 01 00), set 1 read from its 5th byte on.
    swallows = one[:2] + b"\x02" + one[3:]
    # names_len 4 too large: the real address would be read as padding, set
    # 1's first 4 bytes as the address.
    pads = one[:5] + bytes([one[5] + 4]) + one[6:]
    return [
        _data(1, swallows, two),
        _data(2, pads, two),
        _data(3, one, two, _set("10.0.0.3", b"\xc0\x0c", "192.0.2.3"), two),  # compressed
        _data(4, one) + bytes(4),  # ends after its last set
    ]


def test_a_packet_with_a_bad_set_is_dropped_whole_as_dnsflows_reader_drops_it(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    """A set's address count is checked only by where the next set starts,
    so any set before a bad one may be what lies: nothing of the packet is
    recorded, and the sound packet after it is."""
    log = tmp_path / "ingest.log"
    with w.ingest_process(redis_srv.url, log, stats_interval=0) as (proc, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for packet in _lying_packets():
                sock.sendto(packet, ("127.0.0.1", port))
            sock.sendto(_data(5, _set("10.0.0.5", WWW, "192.0.2.5")), ("127.0.0.1", port))
            peer = sock.getsockname()[1]
        wait_for(lambda: "10.0.0.5;192.0.2.5;dns" in w.keys(redis_srv.client()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    keys = w.keys(redis_srv.client())
    assert keys == {"client;10.0.0.5": "1", "10.0.0.5;192.0.2.5;dns": ";www.example.test.;"}
    text = log.read_text()
    lines = [line[line.index("event=") :] for line in text.splitlines() if "bad_packet" in line]
    assert lines == [
        f"event=dnsflow_bad_packet peer=127.0.0.1:{peer} sequence={n} {why}"
        for n, why in [
            (1, 'reason=ip_vers error="set 1: ip_vers 0, expected 4 or 6"'),
            (2, 'reason=names error="set 0: names end 6 bytes before names_len"'),
            (3, 'reason=names error="set 2: name 0: compression pointer at offset 0 does not '
                'point back"'),
            (4, 'reason=trailing error="4 bytes after the last of 1 sets"'),
        ]
    ]  # fmt: skip
    fields = _fields(text, "dnsflow_ingest_done")
    assert (fields["data_packets"], fields["sets"], fields["lost"]) == ("1", "1", "0")
    assert fields["bad"] == '{"ip_vers":1,"names":2,"trailing":1}'


def test_reordered_packets_are_neither_lost_nor_a_restart_nor_a_stray(
    redis_srv: RedisServer, tmp_path: Path
) -> None:
    top = 0xFFFFFFFF
    order = [top - 2, top - 1, 0, top, top, 1, 2, 3 << 30, 4, 3, 100_000, 5_000, 5_001]
    log = tmp_path / "ingest.log"
    with w.ingest_process(redis_srv.url, log, stats_interval=0) as (proc, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for sequence in order:  # loopback keeps the order they are sent in
                sock.sendto(_data(sequence), ("127.0.0.1", port))
            sock.sendto(_data(5_002, _set("10.0.0.5", WWW, "192.0.2.5")), ("127.0.0.1", port))
            peer = sock.getsockname()[1]
        wait_for(lambda: "10.0.0.5;192.0.2.5;dns" in w.keys(redis_srv.client()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    text = log.read_text()
    # top -> 0 wraps; 0 skipped `top`, which came next (late), then again (a
    # duplicate); 3 << 30 is far, and 4 follows 2, not it: a stray; 3 came
    # after 4; 99,995 numbers before 100,000 never came; 5,000 is far back
    # and 5,001 follows it: a restart, followed from there.
    done = _fields(text, "dnsflow_ingest_done")
    counts = {k: int(done[k]) for k in ("lost", "reordered", "duplicates", "restarts", "strays")}
    assert counts == {"lost": 99_995, "reordered": 2, "duplicates": 1, "restarts": 1, "strays": 1}
    assert (
        f"event=dnsflow_sensor sensor=127.0.0.1:{peer} packets={len(order) + 1} lost=99995 "
        "reordered=2 duplicates=1 restarts=1 strays=1 "
    ) in text


def test_bad_packet_lines_renew_each_window_and_the_rest_are_counted(
    redis_srv: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With stats_interval = 0 as well: the budget has a window of its own."""
    config = parse_dnswire_config({"stats_interval": 0})
    now = [1000.0]
    writer = make_writer(config, redis_srv.client)
    ingest = Ingest(config, writer, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="pcapd.agents.dnswire.ingest")

    def lines(name: str) -> list[str]:
        return [m for r in caplog.records if f"event={name} " in (m := caplog.handler.format(r))]

    for _ in range(MAX_ERROR_LOGS + 30):
        ingest.handle(b"\x03" + bytes(7), ("192.0.2.1", 5300))
    ingest.handle(_data(1, _set("10.0.0.3", b"\xc0\x0c", "192.0.2.3")), ("192.0.2.1", 5300))
    assert len(lines("dnsflow_bad_packet")) == MAX_ERROR_LOGS
    now[0] += WINDOW - 0.1
    ingest.handle(b"\x03" + bytes(7), ("192.0.2.1", 5300))
    assert len(lines("dnsflow_bad_packet")) == MAX_ERROR_LOGS
    now[0] += 0.1  # WINDOW after the first
    ingest.handle(b"\x03" + bytes(7), ("192.0.2.1", 5300))
    assert len(lines("dnsflow_bad_packet")) == MAX_ERROR_LOGS + 1
    ingest.log_stats()
    stats = lines("dnsflow_ingest_stats")[-1]
    assert 'bad={"version":132,"names":1}' in stats
    assert " bad_logs_suppressed=32 " in stats
    writer.stop(0)
