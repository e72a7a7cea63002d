"""The two ends of PUBLISH -> first packet (bench/trigger_latency.py): the
PUBLISH timed at its socket write (`Publisher`), and probes, UDP datagrams
carrying their request and send time, sent on time under SCHED_FIFO where
allowed, and the first one a capture file holds."""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from benchlib import BenchError

PROBE_SLEEP = 50e-6  # s between probes; the real gap is printed
PR_SET_TIMERSLACK = 29
PR_GET_TIMERSLACK = 30
TIMER_SLACK_NS = 1000
PROBE_PRIORITY = 1  # SCHED_FIFO: the bench's probes are sent on time on a loaded machine
DONE_EVERY = 0.5e-3  # s between looks at the result subscription while probing
PROBE = struct.Struct("!16sQ")  # request id, send time (ns)
PCAP_GLOBAL = 24
PCAP_RECORD = 16
LO_HEADERS = 14 + 20 + 8  # Ethernet (lo) + IPv4 + UDP before the probe payload


def first_probe(path: Path) -> tuple[bytes, int]:
    """(request id, send ns) of the first packet in a pcap file of probes on lo."""
    data = path.read_bytes()
    start = PCAP_GLOBAL + PCAP_RECORD + LO_HEADERS
    if len(data) < start + PROBE.size:
        raise BenchError(f"{path}: no probe in the file ({len(data)} bytes)")
    tag, sent = PROBE.unpack_from(data, start)
    return tag, sent


class ProbePriority:
    """`with` it around sending probes (and only there): SCHED_FIFO and a
    1 us timer slack for this process, so the probes go out on time on a
    loaded machine; the policy and the timer slack it had are restored
    after. Without the right to (no CAP_SYS_NICE, no RT budget) it says so,
    once, and the probes run at normal priority."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._slack = 0
        self._fifo = False
        self._policy = (os.SCHED_OTHER, os.sched_param(0))
        self.refused: str | None = None

    def __enter__(self) -> None:
        self._slack = self._libc.prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)
        self._libc.prctl(PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)
        self._policy = (os.sched_getscheduler(0), os.sched_getparam(0))
        try:
            os.sched_setscheduler(
                0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(PROBE_PRIORITY)
            )
            self._fifo = True
        except OSError as exc:
            if self.refused is None:
                self.refused = exc.strerror or str(exc)
                print(f"trigger_latency: SCHED_FIFO refused ({self.refused}): "
                      "the probes run at normal priority", file=sys.stderr)  # fmt: skip

    def __exit__(self, *_exc: object) -> None:
        if self._fifo:
            os.sched_setscheduler(0, *self._policy)
            self._fifo = False
        self._libc.prctl(PR_SET_TIMERSLACK, self._slack, 0, 0, 0)


@dataclass(slots=True)
class Prober:
    """Sends probes to one port until told to stop; keeps the mean gap."""

    sock: socket.socket
    probes: int = 0
    busy: float = 0.0
    sent: list[int] = field(default_factory=list)  # the last run's send times (ns)

    def run(self, tag: bytes, port: int, done: Any) -> None:
        """Probe until done() is true; done is checked every DONE_EVERY (a
        look at a subscription costs more than a probe, and widened the gap)."""
        address = ("127.0.0.1", port)
        sent: list[int] = []
        begin = time.perf_counter()
        look = begin + DONE_EVERY
        while True:
            now = time.time_ns()
            self.sock.sendto(PROBE.pack(tag, now), address)
            sent.append(now)
            time.sleep(PROBE_SLEEP)
            if time.perf_counter() >= look:
                if done():
                    break
                look = time.perf_counter() + DONE_EVERY
        self.busy += time.perf_counter() - begin
        self.probes += len(sent)
        self.sent = sent

    def before(self, sent: int) -> int | None:
        """The send time of the last probe before `sent` in the last run."""
        earlier = [t for t in self.sent if t < sent]
        return earlier[-1] if earlier else None

    @property
    def gap_us(self) -> float:
        return self.busy / self.probes * 1e6 if self.probes else 0.0


class Publisher:
    """PUBLISH on a plain socket: `send` returns the time just before the
    command's bytes are written; `settle` reads its reply (the number of
    subscribers that got it), later."""

    def __init__(self, client: redis.Redis) -> None:
        kwargs = client.connection_pool.connection_kwargs
        self.sock = socket.create_connection((kwargs["host"], kwargs["port"]), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._reply = b""

    def pack(self, channel: str, body: str) -> bytes:
        parts = [b"PUBLISH", channel.encode(), body.encode()]
        return b"*3\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)

    def send(self, command: bytes) -> int:
        at = time.time_ns()
        self.sock.sendall(command)
        return at

    def settle(self) -> int:
        """The reply of the last `send`: how many subscribers got it."""
        while b"\r\n" not in self._reply:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BenchError("redis closed the publishing connection")
            self._reply += chunk
        line, self._reply = self._reply.split(b"\r\n", 1)
        if not line.startswith(b":"):
            raise BenchError(f"PUBLISH answered {line!r}")
        return int(line[1:])

    def close(self) -> None:
        self.sock.close()
