"""DNSFlow's v4 UDP export, packed as dnsflow.c packs it (see DESIGN.md).

Packet header (8 bytes, network order): version 4, sets_count, flags
(0x0001 = stats), sequence number, one counter shared by data and stats
packets. A data set: a 40-byte header (ip_vers, names_count, ips_count,
ip6s_count, names_len, 2 pad bytes, client and resolver address in 16
bytes each, IPv4 in the first 4), the names in DNS wire format (question
first, then each CNAME target) padded with NULs to 4 bytes, then the IPv4
and the IPv6 addresses. Sets are appended until the packet reaches
`TARGET_SIZE` or holds `MAX_SETS`; a set that would take the packet past
`MAX_SIZE` starts the next one. A stats packet carries five 32-bit counters.

Where this differs from dnsflow.c, on purpose: names are sent lowercased
(the shared parser lowercases; DNSFlow copied the wire's case), only the
CNAME chain from the question and the addresses owned by its end are sent
(DNSFlow took every CNAME and address of the answer section), and a set
exactly at the size limit is dropped and counted where dnsflow.c recursed
without end.

Memory: one packet buffer (at most `MAX_SIZE` bytes).
"""

from __future__ import annotations

import logging
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import dns.name

from agents.dnstap.response import TYPE_A, TYPE_AAAA, Response
from pcapd.core.logs import event

log = logging.getLogger("pcapd.agents.dnswire")

VERSION = 4
PORT = 5300
MAX_DESTINATIONS = 10
TARGET_SIZE = 1200
MAX_SIZE = 1500
MAX_SETS = 255
MAX_COUNT = 255  # names, IPv4 and IPv6 addresses per set (one byte each)
FLAG_STATS = 0x0001
HEADER = struct.Struct(">BBHI")
SET_HEADER = struct.Struct(">BBBBH2x16s16s")
STATS = struct.Struct(">IIIII")
PUSH_INTERVAL = 1.0  # s: a part-filled packet waits at most this long
STATS_INTERVAL = 10.0  # s: DNSFlow's stats period
EXPORT_QTYPES = frozenset((TYPE_A, TYPE_AAAA))  # dnsflow_dns_check's: not ANY
_RD_RA = 0x0180
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
STDOUT = "-"  # -w -
NAME_CACHE_ENTRIES = 65_536  # ~150 bytes each: ~10 MB at most
_wire_names: dict[str, bytes] = {}


def name_wire(text: str) -> bytes:
    """A name from the parser's text form (lowercase, trailing dot) in wire
    format. Cached: names repeat (Zipf), and building one costs ~2 µs."""
    wire = _wire_names.get(text)
    if wire is None:
        if len(_wire_names) >= NAME_CACHE_ENTRIES:
            _wire_names.clear()
        wire = _wire_names[text] = _name_wire(text)
    return wire


def _name_wire(text: str) -> bytes:
    if "\\" in text:  # escaped bytes: rare, let dnspython read the escapes
        wire = dns.name.from_text(text).to_wire()
        assert wire is not None  # to_wire without a file returns the bytes
        return wire
    if text == ".":
        return b"\0"
    out = bytearray()
    for label in text[:-1].encode("ascii").split(b"."):
        out.append(len(label))
        out += label
    out.append(0)
    return bytes(out)


def exportable(message: bytes, resp: Response) -> bool:
    """DNSFlow's choice: a recursive reply (RD and RA), NOERROR, one question
    of type A or AAAA, with at least one address. QR and the single
    question are already checked by the parser."""
    return (
        (message[2] << 8 | message[3]) & _RD_RA == _RD_RA
        and resp.rcode == 0
        and resp.qtype in EXPORT_QTYPES
        and bool(resp.addresses)
    )


@dataclass(slots=True)
class ExportStats:
    sets: int = 0
    packets: int = 0
    stats_packets: int = 0
    too_large: int = 0  # a set that fits in no packet
    send_errors: int = 0


Send = Callable[[bytes], None]


class SetBody(NamedTuple):
    """What a data set carries for any client: its counts, its size with its
    header, and every byte after that header (names, padding, addresses).
    agents.dnswire keeps one beside each cached parse, so a repeated answer
    is packed without building its names and addresses again. A tuple of
    ints and bytes, which the cyclic GC stops tracking."""

    names: int
    ip4: int
    ip6: int
    names_len: int  # the names with their padding
    size: int  # SET_HEADER.size + len(the tail), kept when the tail is not
    tail: bytes  # empty for a set too large for any packet: it is never sent


def set_body(names: Sequence[bytes], ip4: Sequence[bytes], ip6: Sequence[bytes]) -> SetBody:
    blob = b"".join(names)
    pad = _PAD[len(blob) % 4]
    names_len = len(blob) + len(pad)
    size = SET_HEADER.size + names_len + 4 * len(ip4) + 16 * len(ip6)
    tail = b"".join((blob, pad, *ip4, *ip6)) if HEADER.size + size <= MAX_SIZE else b""
    return SetBody(len(names), len(ip4), len(ip6), names_len, size, tail)


def body_of(resp: Response) -> SetBody:
    """The set `resp` exports: its chain and the addresses owned by its end,
    at most `MAX_COUNT` of each."""
    names = [name_wire(n) for n in resp.chain[:MAX_COUNT]]
    ip4 = []
    ip6 = []
    for rtype, address in resp.addresses:
        if rtype == TYPE_A:
            ip4.append(socket.inet_aton(address))
        else:
            ip6.append(socket.inet_pton(socket.AF_INET6, address))
    return set_body(names, ip4[:MAX_COUNT], ip6[:MAX_COUNT])


class Packer:
    """Builds v4 packets and hands each finished one to `send`."""

    def __init__(
        self,
        send: Send,
        clock: Callable[[], float] = time.monotonic,
        stats: ExportStats | None = None,
    ) -> None:
        self.send = send
        self.clock = clock
        self.stats = stats if stats is not None else ExportStats()
        self.sequence = 1
        self._buf = bytearray()
        self._sets = 0
        self.last_send = clock()

    def add_body(self, client: bytes, resolver: bytes, body: SetBody) -> None:
        """One set: `body` for this client and resolver."""
        size = body.size
        if HEADER.size + size > MAX_SIZE:
            self.stats.too_large += 1
            return
        buf = self._buf  # flush() empties it in place: `buf` stays the packet being built
        if buf and len(buf) + size > MAX_SIZE:
            self.flush()
        if not buf:
            buf += bytes(HEADER.size)
        buf += SET_HEADER.pack(
            4 if len(client) == 4 else 6, body.names, body.ip4, body.ip6, body.names_len,
            client, resolver,
        )  # fmt: skip
        buf += body.tail
        self._sets += 1
        self.stats.sets += 1
        if len(buf) >= TARGET_SIZE or self._sets == MAX_SETS:
            self.flush()

    def flush(self) -> None:
        """Send the part-filled packet, if any."""
        if not self._buf:
            return
        HEADER.pack_into(self._buf, 0, VERSION, self._sets, 0, self.sequence)
        self.sequence = (self.sequence + 1) & 0xFFFFFFFF
        packet = bytes(self._buf)
        self._buf.clear()
        self._sets = 0
        self.last_send = self.clock()
        self.stats.packets += 1
        self.send(packet)

    def tick(self) -> None:
        """DNSFlow's push timer: send what waited `PUSH_INTERVAL`."""
        if self.clock() - self.last_send >= PUSH_INTERVAL:
            self.flush()

    def send_stats(
        self, captured: int, received: int, dropped: int, ifdropped: int, sample_rate: int
    ) -> None:
        packet = HEADER.pack(VERSION, 1, FLAG_STATS, self.sequence) + STATS.pack(
            *(v & 0xFFFFFFFF for v in (captured, received, dropped, ifdropped, sample_rate))
        )
        self.sequence = (self.sequence + 1) & 0xFFFFFFFF
        self.stats.stats_packets += 1
        self.send(packet)


class UdpSender:
    """Sends each packet to every destination; a failed send is counted."""

    def __init__(self, destinations: Sequence[tuple[str, int]], stats: ExportStats) -> None:
        self.destinations = list(destinations)
        self.stats = stats
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def __call__(self, packet: bytes) -> None:
        for dst in self.destinations:
            try:
                self.sock.sendto(packet, dst)
            except OSError as exc:
                self.stats.send_errors += 1
                if self.stats.send_errors == 1:
                    event(
                        log,
                        "dnswire_send_failed",
                        logging.WARNING,
                        dst=f"{dst[0]}:{dst[1]}",
                        error=str(exc),
                    )

    def close(self) -> None:
        self.sock.close()


class PcapWriter:
    """`-w FILE`: what dnsflow.c writes there, the export packets as they
    would arrive on 127.0.0.1:5300 (BSD loopback link type, IPv4, UDP), so
    DNSFlow's reader takes the file. Written straight to one file object."""

    LINKTYPE_NULL = 0
    _FILE_HEADER = struct.Struct("<IHHiIII")
    _RECORD = struct.Struct("<IIII")
    _LOOPBACK = struct.Struct("=I").pack(socket.AF_INET)
    _LOCAL = socket.inet_aton("127.0.0.1")

    def __init__(self, path: str, clock: Callable[[], float] = time.time) -> None:
        """`path` "-" is standard output, as libpcap's pcap_dump_open takes it
        (`dnsflow -i eth0 -w - | ...`); nothing else of pcapd's goes there."""
        self.clock = clock
        self.file: BinaryIO
        if path == STDOUT:
            self.file = sys.stdout.buffer
        else:
            self.file = open(path, "wb")  # noqa: SIM115 - held open for the agent's life
        self.file.write(self._FILE_HEADER.pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, self.LINKTYPE_NULL))

    def __call__(self, packet: bytes) -> None:
        udp = struct.pack(">HHHH", 0, PORT, 8 + len(packet), 0)
        total = 20 + len(udp) + len(packet)
        ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, 64, 17, 0,
                         self._LOCAL, self._LOCAL)  # fmt: skip
        record = self._LOOPBACK + ip + udp + packet
        now = self.clock()
        sec = int(now)
        self.file.write(
            self._RECORD.pack(sec, int((now - sec) * 1e6), len(record), len(record)) + record
        )

    def close(self) -> None:
        if self.file is sys.stdout.buffer:
            self.file.flush()
        else:
            self.file.close()
