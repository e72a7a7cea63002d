"""pcap and pcapng layouts, written straight into one bytearray.

Both carry nanosecond timestamps, the handle's real link type and the
request's snaplen. The capture engine appends records itself (hot path); this
module owns the byte layouts: file headers and per-record framing.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

PCAP_MAGIC_NS = 0xA1B23C4D
PCAP_RECORD = struct.Struct("<IIII")  # ts_sec, ts_nsec, caplen, origlen
PCAP_RECORD_OVERHEAD = PCAP_RECORD.size

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_IDB = 0x00000001
PCAPNG_EPB = 0x00000006
PCAPNG_BYTE_ORDER = 0x1A2B3C4D
OPT_END = 0
OPT_COMMENT = 1
IF_NAME = 2
IF_TSRESOL = 9
SHB_USERAPPL = 4
# EPB: type, length, interface id, ts high, ts low, caplen, origlen ... length
EPB_HEAD = struct.Struct("<IIIIIII")
EPB_OVERHEAD = EPB_HEAD.size + 4


def pcap_header(linktype: int, snaplen: int) -> bytes:
    return struct.pack("<IHHiIII", PCAP_MAGIC_NS, 2, 4, 0, 0, snaplen, linktype)


def _pad4(length: int) -> int:
    return (4 - length % 4) % 4


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * _pad4(len(value))


def _block(block_type: int, body: bytes) -> bytes:
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def pcapng_header(
    linktype: int, snaplen: int, interface: str, comments: Mapping[str, object]
) -> bytes:
    """Section header (one comment per fact) and one interface block (ns resolution)."""
    shb_options = b"".join(
        _option(OPT_COMMENT, f"{key}={value}".encode())
        for key, value in comments.items()
        if value not in (None, "")
    )
    shb_options += _option(SHB_USERAPPL, b"pcapd") + _option(OPT_END, b"")
    shb = _block(PCAPNG_SHB, struct.pack("<IHHq", PCAPNG_BYTE_ORDER, 1, 0, -1) + shb_options)
    idb_options = (
        _option(IF_NAME, interface.encode())
        + _option(IF_TSRESOL, bytes([9]))
        + _option(OPT_END, b"")
    )
    idb = _block(PCAPNG_IDB, struct.pack("<HHI", linktype, 0, snaplen) + idb_options)
    return shb + idb


# Options of an EPB for a packet from the lookback ring (from before the
# request): a comment, then the end of options.
LOOKBACK_EPB_OPTIONS = _option(OPT_COMMENT, b"lookback") + _option(OPT_END, b"")
