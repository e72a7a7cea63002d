"""The lookback ring: one long-lived handle per ring interface, its last
seconds of packets in memory, and every capture on that interface served
from it.

One reader thread per ring waits on the handle's fd with poll() (the handle
is non-blocking, TPACKET_V3, as the engine's: DESIGN.md's capture engine
facts) and appends each packet to large chunks preallocated at start: a
16-byte pcap record head and the packet, no Python object kept per packet.
Chunks are reused in turn; reusing the oldest one drops its records (an
overflow, counted), and records older than `seconds` are dropped as the
clock passes them (counted apart).

A capture on the ring interface registers under the ring's lock: its BPF is
compiled once for the ring's link type (`pcap.bpf(...).filter`, in user
space); its trigger is read and the ring's records noted there, and from
the next record on the reader hands it every run of records it appends
(once per read, not per packet), under the same lock. So the seam is a
record index: no gap, no duplicate. A capture that keeps every packet
whole, in pcap, takes a run in one copy: the ring's records are already
pcap records. With a lookback, the records noted (those from trigger -
lookback) are copied and filtered later, in the capture's own thread and
without the lock, while the reader keeps reading: live packets wait in the
capture's tail meanwhile, and a chunk the writer reuses during the copy is
detected by its generation number (its records are lost, and said so).
Captures take no socket and no spare handle: registering costs ~0.3 ms of
the caller's thread for a request 20 ms after the last (its filter compiled,
~0.17 ms, and its feed made; docs/performance.md, "Fifth round"). One
registered within MAX_HEAD_START of its request's arrival starts at the
arrival (its `since` set back, the records the ring took meanwhile copied
as a lookback's are, at registration: within HEAD_START_BYTES, a quarter
of it for pcapng, none with packet debug, ~1 ms at worst; else it starts
at its registration): the packets that came while the
request was parsed and admitted are in its file.

Memory (said here only): `memory` bytes (the chunks, at most `max_bytes`),
reserved from max_memory at start; the per-chunk bookkeeping is a few
integers. A capture's file and its tail together stay within its own
`bytes` bound, as in the engine: the file is in time order, lookback first,
so when the lookback needs room the tail holds, the tail's newest packets go
and the capture is full. While its lookback is copied, a capture also holds
one `REPLAY_SLICE` copied from the ring and that slice framed.

Modules: `store` (the chunks), `feed` (one capture's framing and filter),
`reader` (`Ring`: the handle, the reader thread, registration), `capture`
(`RingCapture`: one capture's lookback copy and wait), `watch` (`Watcher`:
one thread for the timed bounds of the captures no thread waits for).
"""

from pcapd.ring.capture import STOP_FLUSH, RingCapture
from pcapd.ring.feed import BPF_CACHE_ENTRIES, compiled_filter
from pcapd.ring.reader import (
    DISPATCH_BATCH,
    EVICT_EVERY,
    HEAD_START_BYTES,
    MAX_HEAD_START,
    READ_WAIT,
    RING_BUFFER_SIZE,
    TAIL_UNDER_LOCK,
    Ring,
    RingFilterError,
)
from pcapd.ring.stats import RingStats
from pcapd.ring.store import (
    CHUNK_TARGET,
    EVICT_WALK,
    MIN_CHUNK,
    MIN_CHUNKS,
    RECORD,
    REPLAY_SLICE,
    ChunkStore,
    chunk_layout,
)

__all__ = [
    "BPF_CACHE_ENTRIES",
    "CHUNK_TARGET",
    "DISPATCH_BATCH",
    "EVICT_EVERY",
    "EVICT_WALK",
    "HEAD_START_BYTES",
    "MAX_HEAD_START",
    "MIN_CHUNK",
    "MIN_CHUNKS",
    "READ_WAIT",
    "RECORD",
    "REPLAY_SLICE",
    "RING_BUFFER_SIZE",
    "STOP_FLUSH",
    "TAIL_UNDER_LOCK",
    "ChunkStore",
    "Ring",
    "RingCapture",
    "RingFilterError",
    "RingStats",
    "chunk_layout",
    "compiled_filter",
]
