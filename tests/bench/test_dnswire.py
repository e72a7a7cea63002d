"""bench/dnswire.py's export counter: every datagram and set of a burst is
counted, read by polling (no reader asleep in recv for a datagram to wake)."""

from __future__ import annotations

import socket
import struct
import sys
import time
from pathlib import Path

from tests.helpers import needs_root

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

from dnswire import Counter  # noqa: E402


def _packet(sets: int) -> bytes:
    # A v4 header (version, sets_count, flags, sequence) and a body of the
    # export's typical size.
    return struct.pack(">BBHI", 4, sets, 0, 1) + bytes(1192)


@needs_root  # SO_RCVBUFFORCE: as another user the buffer is rmem_max's, too small for the burst
def test_counter_counts_a_burst_larger_than_a_default_buffer() -> None:
    counter = Counter()
    host, port = counter.address.split(":")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for n in range(5_000):
            sender.sendto(_packet(1 + n % 20), (host, int(port)))
    counter.close()
    assert counter.packets == 5_000
    assert counter.sets == sum(1 + n % 20 for n in range(5_000))


def test_counter_reads_by_polling_while_the_run_goes_on() -> None:
    counter = Counter()
    try:
        # Non-blocking: its thread empties the socket on a timer, so no
        # thread waits on the socket for a datagram to wake.
        assert counter.sock.gettimeout() == 0.0
        host, port = counter.address.split(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.sendto(_packet(3), (host, int(port)))
        deadline = time.monotonic() + 5.0
        while counter.packets == 0 and time.monotonic() < deadline:
            time.sleep(Counter.POLL_S)
        assert (counter.packets, counter.sets) == (1, 3)
    finally:
        counter.close()
    assert not counter._thread.is_alive()
