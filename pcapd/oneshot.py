"""`pcapd capture`: one bounded capture from the command line, tcpdump-style."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from pcapd.core.atomic import write_atomic
from pcapd.core.config import MAX_SNAPLENGTH
from pcapd.core.events import iso_utc
from pcapd.core.lifecycle import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, StopSignals
from pcapd.engine import (
    CaptureError,
    CaptureLimits,
    CaptureProgress,
    capture,
    close_handle,
    open_handle,
    set_filter,
)

PROGRESS_INTERVAL = 0.5


def run_capture(
    interface: str,
    bpf: str,
    *,
    output: str | None,
    packets: int,
    snap: int,
    max_bytes: int,
    duration: float,
    timeout: float,
    fmt: str,
    buffer_size: int,
) -> int:
    if not 0 < snap <= MAX_SNAPLENGTH:
        print(f"pcapd capture: -s {snap}: must be 1..{MAX_SNAPLENGTH}", file=sys.stderr)
        return EXIT_CONFIG
    path = None
    if output != "-":
        path = Path(output or f"pcapd_{interface}_{time.strftime('%Y%m%dT%H%M%S')}.{fmt}")
        # Checked before capturing: a capture must not be taken only to be lost.
        if not os.access(path.parent.absolute(), os.W_OK):
            print(f"pcapd capture: -w {path}: directory {path.parent.absolute()} is not "
                  "writable", file=sys.stderr)  # fmt: skip
            return EXIT_CONFIG
        if path.exists():
            print(f"pcapd capture: -w {path}: exists; refusing to overwrite", file=sys.stderr)
            return EXIT_CONFIG
    # The first signal ends the capture (stop=shutdown) and writes it; a
    # second leaves at once, without the file.
    signals = StopSignals("capture")
    signals.install()
    handle = None
    try:
        handle = open_handle(interface, buffer_size)
        set_filter(handle, interface, bpf)
    except CaptureError as exc:
        if handle is not None:
            close_handle(handle)
        print(f"pcapd capture: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    limits = CaptureLimits(snap, packets, max_bytes, duration, timeout)
    done = threading.Event()
    progress = CaptureProgress()
    if sys.stderr.isatty():
        threading.Thread(target=_progress, args=(done, progress), daemon=True).start()
    print(f"pcapd capture: listening on {interface}, {fmt}, snaplen {snap}", file=sys.stderr)
    try:
        outcome = capture(
            handle, limits, fmt=fmt, interface=interface,
            comments={"bpf": bpf, "interface": interface}, stop=signals.stop, progress=progress,
        )  # fmt: skip
    except CaptureError as exc:
        print(f"pcapd capture: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        done.set()
        close_handle(handle)
    if path is None:
        sys.stdout.buffer.write(outcome.data)
        sys.stdout.flush()
        where = "standard output"
    else:
        try:
            # The check above is minutes old: publish with link(), which fails
            # rather than replace a file that appeared during the capture.
            write_atomic(path, outcome.data, 0o644, overwrite=False)
        except FileExistsError:
            print(
                f"pcapd capture: -w {path}: a file of that name appeared during the capture; "
                "it was left alone and this capture was not written",
                file=sys.stderr,
            )
            return EXIT_FAILURE
        except OSError as exc:
            print(f"pcapd capture: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return EXIT_FAILURE
        where = str(path)
    print(
        f"\r{outcome.packets} packets captured, {len(outcome.data)} bytes, "
        f"{outcome.kernel_dropped} dropped by kernel, stopped by {outcome.stop} "
        f"({iso_utc(outcome.started)} - {iso_utc(outcome.ended)}) -> {where}",
        file=sys.stderr,
    )
    if outcome.error:
        print(f"pcapd capture: {outcome.error}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _progress(done: threading.Event, progress: CaptureProgress) -> None:
    began = time.monotonic()
    while not done.wait(PROGRESS_INTERVAL):
        print(
            f"\r{progress.packets} packets, {progress.bytes} bytes, "
            f"{time.monotonic() - began:.1f}s",
            end="",
            file=sys.stderr,
        )
