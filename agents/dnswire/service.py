"""Running the agent: one process, or DNSFlow's -M N supervised processes.

One process: bootstrap -> signal handlers -> capture loop -> `finally`
send what is queued. The first SIGTERM/SIGINT is a warm stop (the export's
last packet and the Redis queue are sent, at most `FLUSH_TIMEOUT` s), the
second leaves at once.

-M N: the parent holds the PID file and forks N children, child i taking
slot i/N (its BPF keeps 1/N of the responses, see `filters`). A child that
dies is logged and started again (at most once per `RESTART_DELAY` s per
slot); SIGTERM to the parent is passed on to every child (as SIGUSR1, which
asks for a warm stop but never counts as the cold one's second signal: a
child may already have had SIGTERM from its process group), which flush and
exit, then the parent exits (one still running `CHILD_EXIT_TIMEOUT` s after
is killed, logged, and the parent exits 1). Children get SIGTERM if the
parent dies (Linux's PR_SET_PDEATHSIG, as dnsflow.c does).
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from agents.dnswire import export
from agents.dnswire.agent import WireAgent
from agents.dnswire.config import DnswireConfig
from agents.dnswire.source import AgentError, CaptureError, check_interface
from agents.metrics import dnswire_families, serve_agent_metrics
from agents.redis_writer import dropped_status, make_writer
from pcapd.core.fields import printable
from pcapd.core.lifecycle import EXIT_COLD, EXIT_FAILURE, StopSignals
from pcapd.core.logs import event
from pcapd.core.redis_conn import Client

log = logging.getLogger("pcapd.agents.dnswire")

FLUSH_TIMEOUT = 10.0  # s: how long a stopping agent keeps sending what is queued
RESTART_DELAY = 1.0  # s: a slot whose child keeps dying restarts at most this often
CHILD_EXIT_TIMEOUT = 15.0  # s: a child still running this long after SIGTERM is killed
JOIN_POLL = 0.1  # s: the supervisor's loop wakes this often (a signal waits at most this)
# Redis writer thread vs capture loop: see agents.dnstap.agent.GIL_SWITCH_INTERVAL.
GIL_SWITCH_INTERVAL = 0.0005
# The cyclic GC's generation thresholds (Python's are 700, 10, 10). The
# capture loop allocates a few short-lived tuples and lists per response,
# freed by reference counting (none is cyclic), while the parse cache and
# the deduper hold ~10^5 long-lived objects: with the defaults a young
# collection ran every ~100 responses and the full ones walked the caches,
# ~5 us per response of the ~28 measured in-process (docs/performance.md).
GC_THRESHOLDS = (50_000, 20, 100)
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
FORWARDED_STOP = signal.SIGUSR1  # the parent's stop, passed on to its children


class PidFileBusy(AgentError):
    pass


def hold_pidfiles(paths: Sequence[str]) -> list[int]:
    """Lock each of `paths` (flock, as dnsflow.c) and write our PID in it; the
    descriptors are kept open for the life of the process, children included.
    dnsflow.c locks every -P it is given (its init script passes its own
    before the user's options). All are locked before any is written, so a
    refusal leaves each file as it was; one file named twice (or by two
    paths) is held once."""
    held: dict[tuple[int, int], int] = {}  # (device, inode) -> its descriptor
    try:
        for path in paths:
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
            except OSError as exc:
                raise AgentError(f"-P {path!r}: {exc.strerror}") from exc
            info = os.fstat(fd)
            file = (info.st_dev, info.st_ino)
            if file in held:
                os.close(fd)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = printable(os.pread(fd, 32, 0).decode(errors="replace").strip() or "?")
                os.close(fd)
                raise PidFileBusy(
                    f"dnsflow already running: {path} is locked by PID {holder}"
                ) from None
            held[file] = fd
    except AgentError:
        for fd in held.values():
            os.close(fd)
        raise
    for fd in held.values():
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
    return list(held.values())


def _senders(config: DnswireConfig, stats: export.ExportStats) -> list[Any]:
    out: list[Any] = []
    if config.udp_dst:
        out.append(export.UdpSender([(d.host, d.port) for d in config.udp_dst], stats))
    if config.write:
        try:
            out.append(export.PcapWriter(config.write))
        except OSError as exc:
            for sender in out:
                sender.close()
            raise AgentError(f"-w {config.write!r}: {exc.strerror or exc}") from exc
    return out


def run_one(
    config: DnswireConfig,
    connect: Callable[[], Client] | None,
    warm_only: tuple[signal.Signals, ...] = (),
) -> int:
    """Capture until the file ends or SIGTERM/SIGINT (or a `warm_only`
    signal); 0, or 1 on a capture failure."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    gc.set_threshold(*GC_THRESHOLDS)
    writer = make_writer(config, connect) if config.record and connect is not None else None
    export_stats = export.ExportStats()
    senders = _senders(config, export_stats)

    def send(packet: bytes) -> None:
        for sender in senders:
            sender(packet)

    agent = WireAgent(config, writer, send if senders else None, export_stats=export_stats)
    # Before the source opens, so a stop from dnswire_started on is warm.
    signals = StopSignals("dnswire", warm_only=warm_only)
    signals.install()
    stop = signals.stop
    if config.read:
        agent.open_file(config.read)
    else:
        assert config.interface is not None
        agent.open_live(config.interface)
    metrics = serve_agent_metrics(
        "dnswire", config.metrics_listen, agent.snapshot, dnswire_families, writer,
        agent.input_check,
    )  # fmt: skip
    if writer is not None:
        writer.start()
    status = 0
    try:
        if config.read:
            agent.run_file(stop)
        else:
            agent.run_live(stop)
    except (CaptureError, OSError) as exc:
        # The interface went away or libpcap failed: non-zero, so the
        # supervisor (or systemd) starts it again, after sending what is queued.
        event(log, "dnswire_capture_failed", logging.ERROR, error=str(exc))
        status = 1
    finally:
        agent.finish()
        if writer is not None:
            writer.stop(FLUSH_TIMEOUT)
        agent.log_stats("dnswire_done")
        for sender in senders:
            sender.close()
        if metrics is not None:
            metrics.stop()
    if config.read and writer is not None and not status:
        status = dropped_status(writer, "dnswire")
    return status


def _child(config: DnswireConfig, connect: Callable[[], Client] | None) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    # Until run_one installs its own handlers there is nothing to flush: a
    # stop request ends the child at once. Signals were blocked across the
    # fork (see supervise) so none hits the parent's handler in here.
    for sig in (*STOP_SIGNALS, FORWARDED_STOP):
        signal.signal(sig, lambda signum, _frame: os._exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, FORWARDED_STOP))
    try:
        code = run_one(config, connect, warm_only=(FORWARDED_STOP,))
    except AgentError as exc:
        event(log, "dnswire_child_failed", logging.ERROR, slot=f"{config.slot[0]}/{config.slot[1]}",
              error=str(exc))  # fmt: skip
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def supervise(config: DnswireConfig, connect: Callable[[], Client] | None) -> int:
    """Run `config.process_count` children, one slot each, until stopped
    (live) or until every child has read the file (-r)."""
    n = config.process_count
    if config.interface is not None:
        check_interface(config.interface)  # once here, not N times restarting
    ctx = multiprocessing.get_context("fork")
    children: dict[int, BaseProcess] = {}
    started: dict[int, float] = {}
    # The first stop signal: all the handler records, as a line it logged
    # while the loop was inside a write to stderr was lost (logging's
    # "reentrant call"). The loop, awake every JOIN_POLL s, logs and forwards.
    stop_signal: int | None = None
    forwarded_at: float | None = None  # when the first signal was sent on

    def start(i: int) -> None:
        child_cfg = replace(
            config, slot=(i, n), processes=None, pidfile=(),
            metrics_listen=config.metrics_listen and replace(
                config.metrics_listen, port=config.metrics_listen.port + i - 1
            ),
        )  # fmt: skip
        proc = ctx.Process(target=_child, args=(child_cfg, connect), name=f"dnswire-{i}/{n}")
        # Blocked until the child is in `children`, so a second signal's
        # SIGKILL reaches it too.
        # FORWARDED_STOP too: its default action would end a child not yet
        # past the handlers above.
        signal.pthread_sigmask(signal.SIG_BLOCK, (*STOP_SIGNALS, FORWARDED_STOP))
        try:
            proc.start()
            children[i] = proc
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, (*STOP_SIGNALS, FORWARDED_STOP))
        started[i] = time.monotonic()
        event(log, "dnswire_child_started", slot=f"{i}/{n}", pid=proc.pid)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal stop_signal
        if stop_signal is not None:  # the second: cold, at once
            for proc in children.values():
                if proc.pid is not None and proc.is_alive():
                    os.kill(proc.pid, signal.SIGKILL)
            os._exit(EXIT_COLD)
        stop_signal = signum

    def forward_stop() -> None:
        """The first signal, once: said, and sent on to every child (one
        started since is among them: `start` runs only before it)."""
        nonlocal forwarded_at
        if forwarded_at is not None or stop_signal is None:
            return
        forwarded_at = time.monotonic()
        event(log, "dnswire_stopping", signal=stop_signal, children=len(children))
        for proc in children.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, FORWARDED_STOP)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for i in range(1, n + 1):
        if stop_signal is None:
            start(i)
    last_status: dict[int, int] = {}  # slot -> how its latest child ended
    while children:
        if forwarded_at is not None and time.monotonic() > forwarded_at + CHILD_EXIT_TIMEOUT:
            # Deaf to SIGTERM (stopped, or stuck in its flush): what it held is lost.
            for i, proc in children.items():
                event(log, "dnswire_child_killed", logging.ERROR, slot=f"{i}/{n}", pid=proc.pid,
                      after=CHILD_EXIT_TIMEOUT)  # fmt: skip
                proc.kill()
                proc.join()
            return EXIT_FAILURE
        for i, proc in list(children.items()):
            forward_stop()
            proc.join(JOIN_POLL)
            if proc.exitcode is None:
                continue
            del children[i]
            code = last_status[i] = proc.exitcode
            if stop_signal is not None or (config.read and code == 0):
                event(log, "dnswire_child_done", slot=f"{i}/{n}", status=code)
                continue
            restart = not config.read  # a file is not read twice
            event(log, "dnswire_child_exited", logging.ERROR, slot=f"{i}/{n}", status=code,
                  restarting=restart)  # fmt: skip
            if not restart:
                continue
            # In steps, so a signal meanwhile is forwarded within JOIN_POLL.
            while stop_signal is None and time.monotonic() < started[i] + RESTART_DELAY:
                time.sleep(JOIN_POLL)
            if stop_signal is None:
                start(i)
    forward_stop()  # a signal after the last child ended: said all the same
    # A child that did not end well (a capture failure, writes dropped, killed)
    # fails the run, stopped or not; one restarted since does not.
    return EXIT_FAILURE if any(last_status.values()) else 0
