"""Spare handles: one opened ahead per configured interface, so a request
never waits the ~10 ms a handle takes to open (DESIGN.md)."""

from __future__ import annotations

import logging
import threading

import pcap

from pcapd.core.logs import event
from pcapd.engine.capture import close_handle, first_dispatch, open_handle

log = logging.getLogger("pcapd.engine")  # the engine's lines, as before the move

REFILL_RETRY = 5.0


class HandlePool:
    """One spare handle per configured interface, replaced in the background.

    Worst case: one extra kernel ring (buffer_size bytes) per configured
    interface, plus the rings of running captures.
    """

    def __init__(self, interfaces: tuple[str, ...], buffer_size: int) -> None:
        self.buffer_size = buffer_size
        self._spares: dict[str, pcap.pcap | None] = dict.fromkeys(interfaces)
        self._linktypes: dict[str, int] = {}  # DLT of each interface, once opened
        self._lock = threading.Lock()
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refill, name="handle-pool", daemon=True)

    def start(self) -> None:
        self._wanted.set()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wanted.set()
        with self._lock:
            for name, handle in self._spares.items():
                if handle is not None:
                    close_handle(handle)
                self._spares[name] = None

    def take(self, interface: str) -> pcap.pcap:
        """The spare for `interface` if one is ready, else a freshly opened one.

        The spare is not replaced until `replenish()`: opening a handle holds
        the GIL for 8-70 ms, which must not delay the capture that took it.
        A spare opened before its interface was deleted and made again is
        bound to the old one: its first dispatch fails (then libpcap's filter
        change says "Network is down"), so it is closed and a handle opened
        afresh, once.
        """
        with self._lock:
            handle = self._spares.get(interface)
            if handle is not None:
                self._spares[interface] = None
        if handle is not None:
            error = first_dispatch(handle)
            if error is None:
                return handle
            event(log, "spare_handle_stale", logging.WARNING, interface=interface, error=error)
            close_handle(handle)
        return open_handle(interface, self.buffer_size)

    def linktypes(self) -> dict[str, int]:
        """The link type (DLT) of each configured interface a handle was opened on."""
        with self._lock:
            return dict(self._linktypes)

    def spares(self) -> dict[str, bool]:
        """interface -> whether a spare handle is ready for it now."""
        with self._lock:
            return {name: handle is not None for name, handle in self._spares.items()}

    def replenish(self) -> None:
        """Open replacements for the spares taken (in the background)."""
        self._wanted.set()

    def _refill(self) -> None:
        failed = False
        while not self._stop.is_set():
            # After a failure, try again in REFILL_RETRY s even if nobody asks.
            self._wanted.wait(REFILL_RETRY if failed else None)
            self._wanted.clear()
            failed = False
            for name in list(self._spares):
                if self._stop.is_set() or self._spares.get(name) is not None:
                    continue
                try:
                    handle = open_handle(name, self.buffer_size)
                except Exception as exc:  # the refill thread must outlive any failure
                    event(
                        log, "spare_handle_failed", logging.WARNING, interface=name, error=str(exc)
                    )
                    failed = True
                    continue
                with self._lock:
                    if self._stop.is_set():
                        close_handle(handle)
                        return
                    self._spares[name] = handle
                    self._linktypes[name] = handle.datalink()
