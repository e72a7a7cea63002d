"""The lookback ring's reader per packet, in-process, against the floor of any
pypcap reader: a callback that only appends each packet to one bytearray.

No kernel and no sender: a stand-in handle whose `dispatch` calls the
callback as pypcap does (a timestamp in ns, the packet as bytes), 4096
packets a read, 64-byte UDP frames. The reader is the ring's own: the chunk
store's writer (`ChunkStore.writer`) and, after each read, the run handed to
each capture served (`Feed.take`), as `Ring` does under its lock. Per case
it prints the reader's CPU per packet (thread time, the stand-in's own cost
subtracted), the peer's, and the ratio; best of `--repeat` runs, taken in
turn across the cases, as the machine is shared. Packets are stamped past the seam (`SEAM_SLACK`).

Run: `.venv/bin/python bench/ring_reader.py [--packets N] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.engine import CaptureLimits
from pcapd.pcapfile import PCAP_RECORD, pcap_header, pcapng_header
from pcapd.ring.feed import SEAM_SLACK, Feed, compiled_filter
from pcapd.ring.store import ChunkStore

PACKETS = 200_000
REPEAT = 3
READ = 4096  # packets per dispatch, as the ring's DISPATCH_BATCH
RING_BYTES = 64 * 1024 * 1024
GAP_NS = 3_000  # between packets: ~330k pps
FRAME = (
    b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00"
    + bytes([0x45, 0, 0, 50, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2])
    + struct.pack("!HHHH", 40_000, 9999, 30, 0) + bytes(22)
)  # fmt: skip
LIMITS = CaptureLimits(snap=MAX_SNAPLENGTH, packets=10**9, bytes=2 * 10**9, duration=600,
                       timeout=600)  # fmt: skip
Callback = Callable[[int, bytes], None]


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    feeds: tuple[tuple[str, str], ...]  # (bpf, format) of each capture served


CASES = (
    Case("no capture", ()),
    Case("1 capture, no BPF (pcap, full snap)", (("", "pcap"),)),
    Case("1 capture, BPF matching every packet", (("udp", "pcap"),)),
    Case("1 capture, BPF matching none", (("tcp", "pcap"),)),
    Case("1 capture, pcapng", (("", "pcapng"),)),
    Case("4 captures, no BPF", (("", "pcap"),) * 4),
    Case("4 captures, BPF matching every packet", (("udp", "pcap"),) * 4),
    Case("4 captures, BPF matching none", (("tcp", "pcap"),) * 4),
)


def dispatch_all(callback: Callback, packets: int, after_read: Callable[[], None]) -> float:
    """Thread CPU seconds to hand `packets` frames to `callback`, a read at a time."""
    ts = time.time_ns() + 2 * SEAM_SLACK
    began = time.thread_time()
    for _ in range(packets // READ):
        for _ in range(READ):
            ts += GAP_NS
            callback(ts, FRAME)
        after_read()
    return time.thread_time() - began


def stand_in(packets: int) -> float:
    def nothing(ts: int, pkt: bytes) -> None:
        pass

    return dispatch_all(nothing, packets, lambda: None)


def peer(packets: int) -> float:
    """The floor: one bytearray, a pcap record head and the packet appended."""
    out = bytearray()
    pack = PCAP_RECORD.pack

    def append(ts: int, pkt: bytes) -> None:
        wire = len(pkt)
        sec, nsec = divmod(ts, 1_000_000_000)
        out.extend(pack(sec, nsec, wire, wire))
        out.extend(pkt)

    return dispatch_all(append, packets, lambda: None)


def header(fmt: str) -> bytes:
    if fmt == "pcapng":
        return pcapng_header(1, LIMITS.snap, "bench", {})
    return pcap_header(1, LIMITS.snap)


def ring_reader(case: Case, packets: int) -> float:
    since = time.time_ns()
    feeds = [
        Feed(
            header(fmt),
            LIMITS,
            pcapng=fmt == "pcapng",
            since=since,
            trigger=since,
            debug=None,
            match=compiled_filter(bpf, 1) if bpf else None,
        )
        for bpf, fmt in case.feeds
    ]

    def segment(data: memoryview, start: int, end: int, records: int) -> None:
        if feeds:  # as Ring._segment: the first record's stamp, then each capture
            first = PCAP_RECORD.unpack_from(data, start)
            stamp = first[0] * 1_000_000_000 + first[1]
            for feed in feeds:
                feed.take(data, start, end, records, stamp)

    append, settle = ChunkStore(RING_BYTES).writer(segment)
    return dispatch_all(append, packets, settle)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=PACKETS)
    parser.add_argument("--repeat", type=int, default=REPEAT)
    args = parser.parse_args()
    packets = args.packets // READ * READ
    if packets <= 0 or args.repeat <= 0:
        print("ring_reader: --packets must be >= 4096 and --repeat >= 1", file=sys.stderr)
        return 2
    # Round-robin over the cases, best of each: load on a shared machine
    # comes and goes, and each case sees the same spells of it.
    best: dict[str, float] = {}
    runs: list[tuple[str, Callable[[], float]]] = [
        ("stand-in", lambda: stand_in(packets)),
        ("peer", lambda: peer(packets)),
        *((case.name, lambda case=case: ring_reader(case, packets)) for case in CASES),
    ]
    for _ in range(args.repeat):
        for name, run in runs:
            spent = run()
            best[name] = min(best.get(name, spent), spent)
    base, per = best["stand-in"], 1e6 / packets
    floor = best["peer"] - base
    print(f"{packets} 64-byte frames, {READ} a read; best of {args.repeat}; "
          f"stand-in dispatch {base * per:.2f} us/packet (subtracted)")  # fmt: skip
    print(f"peer (append-only callback): {floor * per:.2f} us/packet")
    print(f"{'captures served':>40} {'ring us/p':>9} {'ratio':>6}")
    for case in CASES:
        cost = best[case.name] - base
        print(f"{case.name:>40} {cost * per:>9.2f} {cost / floor:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
