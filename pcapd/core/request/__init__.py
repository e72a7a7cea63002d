"""Capture requests: pcapdaemon's JSON message, checked field by field.

`parse_request` turns raw bytes into a frozen `CaptureRequest` or raises
`RequestError` whose message names the field, the value and the rule
(`packets=900000 exceeds maxpackets=50000`). Fields pcapd does not know are
ignored, as pcapdaemon's JSON decoding ignored them, and reported as warnings.

One module a concern: `model` (CaptureRequest), `fields` (the field checks,
`parse_fields`), `body` (`decode_body`, `parse_request`), `addressing`
(`addressed_to`, `named_nodes`, `request_for`), `interfaces` (where it can be served).
"""

from pcapd.core.errors import RequestError as RequestError  # what parse_request raises
from pcapd.core.request.addressing import addressed_to, named_nodes, request_for
from pcapd.core.request.body import decode_body, parse_request
from pcapd.core.request.fields import compile_nodere, parse_fields
from pcapd.core.request.interfaces import (
    interface_problem,
    lookback_problem,
    resolve_interfaces,
    skipped_device,
)
from pcapd.core.request.model import CaptureRequest

__all__ = [
    "CaptureRequest", "RequestError", "addressed_to", "compile_nodere", "decode_body",
    "interface_problem", "lookback_problem", "named_nodes", "parse_fields", "parse_request",
    "request_for", "resolve_interfaces", "skipped_device",
]  # fmt: skip
