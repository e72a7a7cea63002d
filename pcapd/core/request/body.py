"""A request body: size-checked, decoded JSON object, then parsed."""

from __future__ import annotations

import json
from typing import Any

from pcapd.core.config import Config
from pcapd.core.errors import RequestError
from pcapd.core.request.fields import parse_fields
from pcapd.core.request.model import CaptureRequest


def decode_body(body: bytes | str, max_bytes: int) -> dict[str, Any]:
    """The JSON object in `body`, or RequestError saying why there is none.
    The size is checked first, so an oversized body is never parsed."""
    size = len(body.encode(errors="surrogatepass") if isinstance(body, str) else body)
    if size > max_bytes:
        raise RequestError(
            f"request is {size} bytes; the limit is {max_bytes} (general.max_request_bytes)"
        )
    try:
        if not isinstance(body, str):  # as json.loads reads bytes
            body = body.decode(json.detect_encoding(body), "surrogatepass")
        data = strict_json(body)
    except (ValueError, RecursionError) as exc:
        raise RequestError(f"request is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# Made once: json.loads with an option builds a decoder (and its scanner) per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def strict_json(text: str) -> Any:
    """`text` as JSON, NaN and Infinity refused (json.loads takes them, and
    no other JSON reader does): ValueError or RecursionError, as json.loads."""
    return _DECODER.decode(text)


def parse_request(body: bytes | str, config: Config) -> CaptureRequest:
    return parse_fields(decode_body(body, config.general.max_request_bytes), config)
