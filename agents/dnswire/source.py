"""Where the dnswire agent reads packets from: a pypcap handle on a live
interface (checked against `findalldevs()` first: pypcap would open a
*file* of that name) or on a capture file, and the errors that stop it
from starting or capturing."""

from __future__ import annotations

import os
import stat
from typing import Any

import pcap

from agents.dnswire.config import DnswireConfig
from agents.pcap_errors import pcap_error_text

BLOCK_TIMEOUT_MS = 50  # longest a captured packet waits in the kernel's ring
STDIN = "-"  # -r -


class AgentError(Exception):
    """The agent cannot start: bad interface, unreadable file, bad filter."""


class CaptureError(AgentError):
    """libpcap failed while capturing (e.g. the interface went away)."""


def open_live(config: DnswireConfig, interface: str) -> Any:
    """A non-blocking handle on `interface`, both directions."""
    check_interface(interface)
    try:
        # Not immediate mode: there libpcap uses fixed ring slots of the
        # snaplen (64 KiB for whole answers), so a 64 MiB ring held ~1,000
        # packets and dropped under bursts. Without it, packets pack into
        # blocks by their real size and arrive within BLOCK_TIMEOUT_MS.
        handle = pcap.pcap(
            name=interface,
            snaplen=config.snaplen,
            promisc=config.promisc,
            timeout_ms=BLOCK_TIMEOUT_MS,
            buffer_size=config.buffer_size,
        )
        handle.setdirection(pcap.PCAP_D_INOUT)
        handle.setnonblock(True)
    except OSError as exc:
        raise AgentError(f"cannot capture on {interface!r}: {pcap_error_text(exc)}") from exc
    return handle


def open_file(path: str) -> Any:
    """A handle reading `path`. "-" is standard input, as libpcap's
    pcap_open_offline takes it (`tcpdump -w - | dnsflow -r -`); a FIFO or a
    character device (/dev/stdin, a shell's <(...)) is read too, as
    dnsflow.c reads them. What is not a file is refused before pypcap sees
    it: it opens a live device of that name when no file opens."""
    if path != STDIN:
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise AgentError(f"-r {path!r}: no such file") from None
        except OSError as exc:
            raise AgentError(f"-r {path!r}: {exc.strerror}") from exc
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            raise AgentError(f"-r {path!r}: not a file")
        if stat.S_ISREG(mode) and not os.access(path, os.R_OK):
            raise AgentError(f"-r {path!r}: permission denied")
    try:
        return pcap.pcap(name=path)
    except OSError as exc:  # what pypcap says is its live fallback's error
        raise AgentError(f"-r {path!r}: not a pcap or pcapng capture file") from exc


def default_interface() -> str:
    """libpcap's default device, what dnsflow.c captures on without -i
    (pcap_lookupdev: the first device findalldevs() lists, unless that is a
    loopback, which means there is no other)."""
    try:
        name = pcap.lookupdev()
    except OSError as exc:
        raise AgentError(f"no -i given and no default device: {pcap_error_text(exc)}") from exc
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    if not name:
        raise AgentError("no -i given and no default device: no suitable device found")
    return str(name)


def check_interface(interface: str) -> None:
    names = pcap.findalldevs()
    if interface not in names:
        raise AgentError(f"interface {interface!r} not found; capture devices: {', '.join(names)}")
