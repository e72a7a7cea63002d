"""Signed requests: HMAC-SHA256 over the canonical JSON of a request.

A signed request carries three fields besides its own: `ts` (Unix seconds,
a JSON integer), `kid` (the name of a key in `[security] keys`) and `sig`
(lower-case hex HMAC-SHA256). The signed bytes are the canonical JSON of every
field except `sig` (so `ts` and `kid` are covered): keys sorted, separators
`,` and `:` without spaces, UTF-8 without `\\u` escapes for non-ASCII. In
shell: `jq -cS 'del(.sig)' | tr -d '\\n' | openssl dgst -sha256 -hmac "$KEY"`.

Secrets are `Secret` values and appear in no message this module builds.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from typing import Any

from pcapd.core.config import SecurityConfig
from pcapd.core.fields import show
from pcapd.core.request import RequestError
from pcapd.core.secret import Secret
from pcapd.dedup import SeenSet

SIG_FIELD = "sig"
TS_FIELD = "ts"
KID_FIELD = "kid"
_SIG_RE = re.compile(r"[0-9a-fA-F]{64}")


def canonical(fields: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: every field but `sig`, in one fixed spelling."""
    unsigned = {key: value for key, value in fields.items() if key != SIG_FIELD}
    return json.dumps(
        unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def signature(fields: Mapping[str, Any], key: Secret) -> str:
    return hmac.new(key.reveal().encode("utf-8"), canonical(fields), hashlib.sha256).hexdigest()


def sign(fields: Mapping[str, Any], kid: str, key: Secret, now: float) -> dict[str, Any]:
    """A copy of `fields` with `ts`, `kid` and `sig` set (any old `sig` dropped)."""
    signed = {k: v for k, v in fields.items() if k != SIG_FIELD}
    signed[TS_FIELD] = int(now)
    signed[KID_FIELD] = kid
    signed[SIG_FIELD] = signature(signed, key)
    return signed


def verify(
    fields: Mapping[str, Any], security: SecurityConfig, now: float, replay: SeenSet
) -> None:
    """Accept `fields` or raise `RequestError` saying which rule it broke.

    Unsigned requests pass only when `security.require_signed` is false; a
    request that *is* signed must verify either way, since a wrong signature
    means it was altered. `replay` must remember signatures for at least
    `2 * max_skew` seconds (a `ts` up to `max_skew` in the future stays
    acceptable that long); a signature is recorded only once it verified.
    Callers that also drop duplicate request ids should look the id up
    *before* `verify` and record it after, so an at-least-once redelivery is
    reported as a duplicate and not as a replay.
    """
    request_id = fields.get("id") if isinstance(fields.get("id"), str) else None

    def fail(message: str) -> RequestError:
        return RequestError(message, request_id)

    sig = fields.get(SIG_FIELD)
    if sig is None:
        if security.require_signed:
            raise fail("sig: missing; this node accepts only signed requests (require_signed)")
        return
    if not isinstance(sig, str) or not _SIG_RE.fullmatch(sig):
        raise fail(f"sig: expected 64 hex digits (HMAC-SHA256), got {show(sig)}")

    kid = fields.get(KID_FIELD)
    if kid is None:
        raise fail("kid: missing; a signed request names its key in kid")
    if not isinstance(kid, str) or kid not in security.keys:
        raise fail(f"kid={show(kid)}: not a key in this node's [security] keys")

    ts = fields.get(TS_FIELD)
    if ts is None:
        raise fail("ts: missing; a signed request carries ts (Unix seconds)")
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise fail(f"ts: expected a JSON integer (Unix seconds), got {show(ts)}")
    age = now - ts
    if age > security.max_skew:
        raise fail(f"ts={ts}: {age:.0f} s old; the limit is max_skew={security.max_skew} s")
    if -age > security.max_skew:
        raise fail(
            f"ts={ts}: {-age:.0f} s in the future; the limit is max_skew={security.max_skew} s"
        )

    expected = signature(fields, security.keys[kid])
    if not hmac.compare_digest(expected, sig.lower()):
        raise fail(f"sig: does not match the request signed with kid={kid!r}")
    if replay.seen(sig.lower()):
        raise fail(replayed(replay.window))


def replayed(window: float) -> str:
    return f"sig: replayed; this signature was already accepted within {window:.0f} s"
