"""libpcap's error words as pypcap hands them over (bytes or text, and
around an open that failed its own wrapping), as one line of text: what
the capture agents (flow, dnswire) say when a handle fails."""

from __future__ import annotations

import re
from typing import Any

UNKNOWN = "unknown libpcap error"
# How pypcap words libpcap's error when a handle does not open.
_PYPCAP_WRAPPED = re.compile(r"Error returned by packet capture library was b(['\"])(.*)\1$")


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def handle_error_text(handle: Any) -> str:
    """libpcap's last error on `handle`, as text."""
    return _text(handle.geterr()) or UNKNOWN


def pcap_error_text(exc: OSError) -> str:
    """libpcap's words in a pypcap OSError, as text: its bytes decoded, and
    without pypcap's "Activateing packet capture failed..." around them."""
    text = " ".join(_text(arg) for arg in exc.args)
    wrapped = _PYPCAP_WRAPPED.search(text)
    return (wrapped.group(2) if wrapped else text) or UNKNOWN
