"""The capture engine: one bounded capture on one pypcap handle, into memory.

pypcap facts this relies on (DESIGN.md): a blocking dispatch() holds the GIL
and may never return, so handles are non-blocking and waited on with poll();
opening a handle costs ~10 ms, so `HandlePool` (pcapd/engine/pool.py) keeps
one opened ahead per configured interface.

Handles are *not* in immediate mode: libpcap then falls back to TPACKET_V2,
whose ring has one maximum-size slot per packet, so an 8 MiB buffer holds
64-128 packets and drops under load (measured: bench/capture_vs_tcpdump.py).
With TPACKET_V3 the kernel hands over a block at most BLOCK_TIMEOUT_MS after
its first packet; when a capture stops on time, a last read collects what
the open block holds and keeps only the packets from before the stop.

Handles are opened with the largest snaplen so that the kernel hands over
whole packets: pypcap's callback gives no wire length, and this way the
length of the packet *is* its wire length. The request's snap is applied
while writing, and the file header carries that snap.
"""

from __future__ import annotations

import contextlib
import select
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import pcap

from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.core.errors import CaptureError as CaptureError  # what capture() raises
from pcapd.core.fields import bpf_problem, show
from pcapd.pcapfile import (
    EPB_HEAD,
    EPB_OVERHEAD,
    PCAP_RECORD,
    PCAPNG_EPB,
    pcap_header,
    pcapng_header,
)

PROMISC = True  # as tcpdump and pcapdaemon
BLOCK_TIMEOUT_MS = 10  # longest a packet waits in the kernel before it is readable
NOTHING_FILTER = "len < 0"  # what a spare handle holds until a request takes it
MAX_POLL_WAIT = 0.1  # how often a waiting capture looks at the stop flag (s)


@dataclass(frozen=True, slots=True)
class CaptureLimits:
    snap: int
    packets: int
    bytes: int
    duration: float
    timeout: float


@dataclass(frozen=True, slots=True)
class CaptureOutcome:
    data: bytearray  # the whole file, header included
    packets: int
    stop: str  # packets | bytes | duration | timeout | shutdown
    kernel_dropped: int
    started: float  # Unix time
    ended: float
    linktype: int
    error: str | None = None  # the handle failed mid-capture; data holds what came
    lookback: float | None = None  # seconds from before the start, from a ring
    ring: bool = False  # served by a lookback ring: its drops are the ring handle's


def available_devices() -> set[str]:
    """Interface names pcap can open; checked before any name reaches pcap_open."""
    return set(pcap.findalldevs())


def open_handle(interface: str, buffer_size: int) -> pcap.pcap:
    """A non-blocking TPACKET_V3 handle that passes nothing until a filter is set."""
    try:
        devices = available_devices()
    except OSError as exc:
        raise CaptureError(f"cannot list interfaces: {error_text(exc)}") from exc
    if interface not in devices:
        # pcap_open on an unknown name would open a *file* of that name.
        raise CaptureError(f"interface {interface!r}: no such device on this node")
    try:
        handle = pcap.pcap(
            name=interface,
            snaplen=MAX_SNAPLENGTH,
            promisc=PROMISC,
            timeout_ms=BLOCK_TIMEOUT_MS,
            timestamp_in_ns=True,
            buffer_size=buffer_size,
        )
        handle.setfilter(NOTHING_FILTER)
        handle.setnonblock(True)
        handle.dispatch(-1, _discard)
    except OSError as exc:
        raise CaptureError(f"interface {interface!r}: cannot open: {error_text(exc)}") from exc
    return handle


def _discard(ts: int, pkt: bytes) -> None:
    pass


def dispatch(handle: pcap.pcap, count: int, callback: Callable[[int, bytes], None]) -> int:
    """`handle.dispatch`, raising OSError for the PCAP_ERROR pypcap returns
    unraised (an interface gone), so every caller sees one kind of failure."""
    got = handle.dispatch(count, callback)
    if got < 0:
        raise OSError(handle.geterr() or "dispatch failed")
    return int(got)


def first_dispatch(handle: pcap.pcap) -> str | None:
    """A spare's first read (it passes nothing yet): None, or why it failed."""
    try:
        dispatch(handle, -1, _discard)
    except OSError as exc:
        return error_text(exc)
    return None


def error_text(exc: BaseException) -> str:
    """pypcap's message (bytes or text) of `exc`, as text."""
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def check_bpf(bpf: str) -> None:
    """Refuse a filter text that must not reach libpcap (see set_filter)."""
    problem = bpf_problem(bpf)
    if problem is not None:
        raise CaptureError(f"bpf: {show(bpf)} {problem}")


def bpf_compile_error(bpf: str, interface: str, linktype: int, exc: OSError) -> CaptureError:
    return CaptureError(
        f"bpf: {bpf!r} does not compile for {interface} (link type {linktype}): {error_text(exc)}"
    )


def set_filter(handle: pcap.pcap, interface: str, bpf: str) -> None:
    """Install the request's filter, then drop whatever the ring held before.

    Every filter reaches libpcap through here, whoever sent it (a request, the
    command line), so here it is checked: pypcap's setfilter, given text it
    cannot encode, corrupts the heap and the process aborts later.
    """
    check_bpf(bpf)
    try:
        handle.setfilter(bpf)
    except OSError as exc:
        raise bpf_compile_error(bpf, interface, handle.datalink(), exc) from exc
    error = first_dispatch(handle)  # e.g. the interface went down under a spare handle
    if error is not None:
        raise CaptureError(f"interface {interface!r}: cannot capture: {error}")


def close_handle(handle: pcap.pcap) -> None:
    # pypcap closes the descriptor when the object is collected; `close`
    # exists only in newer releases.
    closer = getattr(handle, "close", None)
    if closer is not None:
        closer()


@dataclass(slots=True)
class CaptureProgress:
    """Counters a running capture updates after each read (not per packet)."""

    packets: int = 0
    bytes: int = 0


PacketDebug = Callable[[int, bytes], None]  # (ts_ns, packet as captured)


def capture(
    handle: pcap.pcap,
    limits: CaptureLimits,
    *,
    fmt: str,
    interface: str,
    comments: Mapping[str, object],
    stop: StopSignal,
    packet_debug: PacketDebug | None = None,
    on_start: Callable[[], None] | None = None,
    progress: CaptureProgress | None = None,
) -> CaptureOutcome:
    """Capture until the first bound is reached; the handle's filter is already set.

    Memory: the returned bytearray never exceeds `limits.bytes`.
    """
    linktype = handle.datalink()
    snap = limits.snap
    if fmt == "pcapng":
        header = pcapng_header(linktype, snap, interface, comments)
    else:
        header = pcap_header(linktype, snap)
    if len(header) > limits.bytes:
        raise CaptureError(
            f"bytes={limits.bytes} cannot hold even the {len(header)}-byte file header"
        )
    buf = bytearray(header)
    extend = buf.extend
    max_bytes = limits.bytes
    max_packets = limits.packets
    count = 0
    size = len(buf)
    stop_reason = ""
    full = False  # the packets or bytes bound was reached
    cutoff_ns = 1 << 64  # packets stamped after this are not kept (a timed stop)

    def on_pcap(ts: int, pkt: bytes) -> None:
        nonlocal count, size, stop_reason, full
        if full or ts > cutoff_ns:
            return
        wire = len(pkt)
        caplen = wire if wire <= snap else snap
        new_size = size + 16 + caplen
        if new_size > max_bytes:
            stop_reason, full = "bytes", True
            return
        sec, nsec = divmod(ts, 1_000_000_000)
        extend(PCAP_RECORD.pack(sec, nsec, caplen, wire))
        extend(pkt if wire <= snap else memoryview(pkt)[:snap])
        size = new_size
        count += 1
        if packet_debug is not None:
            packet_debug(ts, pkt)
        if count >= max_packets:
            stop_reason, full = "packets", True

    def on_pcapng(ts: int, pkt: bytes) -> None:
        nonlocal count, size, stop_reason, full
        if full or ts > cutoff_ns:
            return
        wire = len(pkt)
        caplen = wire if wire <= snap else snap
        pad = -caplen & 3
        block = EPB_OVERHEAD + caplen + pad
        if size + block > max_bytes:
            stop_reason, full = "bytes", True
            return
        extend(EPB_HEAD.pack(PCAPNG_EPB, block, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, wire))
        extend(pkt if wire <= snap else memoryview(pkt)[:snap])
        extend(b"\0" * pad + block.to_bytes(4, "little"))
        size += block
        count += 1
        if packet_debug is not None:
            packet_debug(ts, pkt)
        if count >= max_packets:
            stop_reason, full = "packets", True

    callback = on_pcapng if fmt == "pcapng" else on_pcap
    poller = select.poll()
    poller.register(handle.fileno(), select.POLLIN)
    drops_before = kernel_drops(handle)
    started = time.time()
    begin = time.monotonic()
    deadline = begin + limits.duration
    last_packet = begin
    error: str | None = None
    if on_start is not None:
        on_start()
    while not full:
        now = time.monotonic()
        stop_reason = timed_stop(stop, now, deadline, last_packet, limits.timeout)
        if stop_reason:
            # What arrived before the stop may still sit in the open block.
            cutoff_ns = time.time_ns()
            poller.poll(BLOCK_TIMEOUT_MS * 1.5)
            with contextlib.suppress(OSError):  # a failed handle: keep what came
                handle.dispatch(max_packets - count, callback)
            break
        wait = min(deadline, last_packet + limits.timeout, now + MAX_POLL_WAIT) - now
        poller.poll(max(wait, 0.0) * 1000.0)
        try:
            got = dispatch(handle, max_packets - count, callback)
        except OSError as exc:
            error = f"capture on {interface} failed: {error_text(exc)}"
            stop_reason = "shutdown"
            break
        if got > 0:
            last_packet = time.monotonic()
            if progress is not None:
                progress.packets, progress.bytes = count, size
    ended = time.time()
    return CaptureOutcome(
        data=buf,
        packets=count,
        stop=stop_reason,
        kernel_dropped=max(0, kernel_drops(handle) - drops_before),
        started=started,
        ended=ended,
        linktype=linktype,
        error=error,
    )


class StopSignal(Protocol):
    """What a capture polls for shutdown: a threading.Event, or anything
    else that answers is_set() (a ring capture's claims, pcapd.controller)."""

    def is_set(self) -> bool: ...


def timed_stop(
    stop: StopSignal, now: float, deadline: float, last_packet: float, timeout: float
) -> str:
    """Which of shutdown, duration and timeout ends a capture now, or ""."""
    if stop.is_set():
        return "shutdown"
    if now >= deadline:
        return "duration"
    if now - last_packet >= timeout:
        return "timeout"
    return ""


def kernel_drops(handle: pcap.pcap) -> int:
    """Packets the kernel dropped (ps_drop + ps_ifdrop); ps_recv is not used as
    it counts every packet twice on `lo`."""
    try:
        _received, dropped, if_dropped = handle.stats()
    except OSError:
        return 0
    return int(dropped) + int(if_dropped)
